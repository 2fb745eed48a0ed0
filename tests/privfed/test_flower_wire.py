"""The Flower engine's pieces that need no network: the relay's light import path, the local wire, the mapping of
privfed messages onto Flower records and message types, and the site process answering over its socket."""

import os
import socket
import stat
import subprocess
import sys
import threading

import numpy as np
import pytest

from privfed.flower import MESSAGE_TYPES, SOCKET_NAME, message_type, wire
from privfed.flower.records import from_record, to_record
from privfed.parties import messages as M


def test_client_app_imports_neither_torch_nor_diffusers():
    code = ("import sys, privfed.flower.client_app; "
            "print(sorted(m for m in ('torch', 'diffusers', 'opacus') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_message_types_are_flower_categories_one_per_stage():
    assert message_type("secagg", "masked_input") == "query.sa_masked_input"
    assert message_type("train") == "train.train" and message_type("offer") == "query.offer"
    assert all(t.split(".")[0] in ("train", "query", "evaluate") for t in MESSAGE_TYPES)
    assert len({t for t in MESSAGE_TYPES if t.startswith("query.sa_")}) == 7


def test_wire_round_trip_and_strictness():
    config = {"kind": "x", "sig": b"\x00\xff", "l": [b"a", b"b"], "n": 3, "f": 0.5, "ok": True, "ints": [1, 2]}
    arrays = {"w": np.arange(5, dtype=np.float32), "m": np.array([1, 2**32 - 1], dtype=np.uint32)}
    c2, a2 = wire.unpack(wire.pack(config, arrays))
    assert c2 == config and set(a2) == set(arrays)
    assert all(np.array_equal(a2[k], arrays[k]) and a2[k].dtype == arrays[k].dtype for k in arrays)
    with pytest.raises(wire.WireError):
        wire.unpack(b"\x00" * 3)
    body = wire.pack({"a": {"evil": 1}}, {})
    with pytest.raises(wire.WireError):
        wire.unpack(body)
    # an object array would need pickle: refused when read back
    import io
    buf = io.BytesIO()
    np.savez(buf, o=np.array([{"x": 1}], dtype=object))
    head = b'{"a": 1}'
    with pytest.raises(wire.WireError):
        wire.unpack(wire._LEN.pack(len(head)) + head + buf.getvalue())


def test_flower_records_carry_a_signed_message_unchanged():
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    m = M.sign(M.make("train", run_id="r", round_index=2, sender=M.SERVER, receiver=1,
                      arrays={"weights": np.linspace(0, 1, 7, dtype=np.float32)}), key)
    back = M.decode(*from_record(to_record(*M.encode(m))))
    M.verify(back, key.public_key())
    assert np.array_equal(back.arrays["weights"], m.arrays["weights"])


def test_site_process_answers_hello_over_a_private_socket(tmp_path, tiny_config):
    """The site's own process: socket mode 0600, a hello signed by the roster key over the server's nonce."""
    from privfed.federation.runner import FederatedRun
    from privfed.flower.site_daemon import build_site, serve
    from privfed.parties.identity import Roster

    fr = FederatedRun.create(tiny_config, tmp_path / "run")
    fr.server_key()
    roster = fr.enroll_sites()
    site = build_site(tmp_path / "run", 1)
    sdir = tmp_path / "run" / "sites" / "1"
    ready = threading.Event()
    t = threading.Thread(target=serve, args=(site, sdir), kwargs={"ready": ready.set}, daemon=True)
    # serve() installs signal handlers, which only the main thread may do: run it with them stubbed
    import signal as _signal
    orig = _signal.signal
    _signal.signal = lambda *a, **k: None
    try:
        t.start()
        assert ready.wait(30)
    finally:
        _signal.signal = orig
    assert stat.S_IMODE(os.stat(sdir / SOCKET_NAME).st_mode) == 0o600
    nonce = os.urandom(16)
    hello = M.make("hello", run_id=site.run_id, round_index=1, sender=M.SERVER, receiver=M.ANY_SITE,
                   fields={"nonce": nonce})
    reply = M.decode(*wire.call(sdir / SOCKET_NAME, *M.encode(hello), timeout_s=30))
    assert reply.kind == "hello_reply" and reply.sender == 1 and reply.fields["nonce"] == nonce
    M.verify(reply, Roster.load(tmp_path / "run" / "roster.json").public_key(1))
    assert roster.fingerprint == Roster.load(tmp_path / "run" / "roster.json").fingerprint
    # a message not signed by the server is refused with a named error, not answered
    offer = M.make("close", run_id=site.run_id, round_index=1, sender=M.SERVER, receiver=1,
                   fields={"charged": False, "contributed": False, "event_type": "none", "noise_multiplier": 0.0,
                           "sample_rate": 0.0, "event_steps": 0, "epsilon": 0.0})
    err = M.decode(*wire.call(sdir / SOCKET_NAME, *M.encode(offer), timeout_s=30))
    assert err.kind == "error" and err.fields["error"] == "IntegrityError"
    with socket.socket(socket.AF_UNIX) as s:          # garbage on the socket: dropped, the site keeps serving
        s.connect(str(sdir / SOCKET_NAME))
        s.sendall(b"\x00\x00\x00\x00\x00\x00\x00\x05hello")
    again = M.decode(*wire.call(sdir / SOCKET_NAME, *M.encode(hello), timeout_s=30))
    assert again.kind == "hello_reply"


def test_flower_engine_refuses_ckks_before_writing_anything(tmp_path, capsys):
    from privfed.cli import main

    out = tmp_path / "run"
    assert main(["run", "--engine", "flower", "--secure-agg", "ckks", "--out", str(out)]) == 2
    assert "CKKS" in capsys.readouterr().err and not out.exists()
