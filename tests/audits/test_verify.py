"""verify_run: a clean run verifies; any tampering is named; ε is recomputed independently; bad inputs raise."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from audits.canonical import canonical_bytes
from audits.chain import signed_message, verify_chain
from audits.errors import (ArtifactMismatchError, EpsilonMismatchError, IncompleteRunDirectory,
                           LedgerIntegrityError, LedgerKeyError, MissingRunDirectory, UnknownSchemaVersion,
                           UnknownEventType, UnsignedRecordError, VerificationError)
from audits.keys import generate_private_key, key_fingerprint, load_private_key, load_public_key, write_public_key
from audits.verify import cli_verify, verify_run

from .conftest import CLIENTS, DELTA, ROUNDS, run_epsilon, write_run


def _lines(run):
    return (run / "ledger.jsonl").read_bytes().splitlines(keepends=True)


def test_clean_run_verifies(pristine_run):
    rep = verify_run(pristine_run, require_complete=True)
    assert rep.complete and rep.n_records == len(_lines(pristine_run)) and rep.schema_versions == (1,)
    assert rep.kinds["dp_event"] == len(CLIENTS) * ROUNDS
    assert [a.status for a in rep.artifacts] == ["verified"] * (1 + ROUNDS)
    assert rep.key_fingerprint == key_fingerprint(load_public_key(pristine_run / "keys" / "ledger.pub"))
    assert verify_run(pristine_run, expected_key_fingerprint=rep.key_fingerprint,
                      expected_head_hash=rep.head_hash).head_hash == rep.head_hash


def test_recomputed_epsilon_matches_reported(pristine_run):
    rep = verify_run(pristine_run)
    assert len(rep.epsilon_checks) == len(CLIENTS) * ROUNDS
    for c in rep.epsilon_checks:
        assert c.recomputed == pytest.approx(c.reported, rel=1e-3) and c.delta == DELTA and c.cap == 8.0
    for client in CLIENTS:
        assert rep.final_epsilon[client] == pytest.approx(run_epsilon(client, ROUNDS), rel=1e-3)
    # ε grows with every round's composition
    by_client = {c: [x.recomputed for x in rep.epsilon_checks if x.client == c] for c in CLIENTS}
    assert all(v == sorted(v) and len(set(v)) == ROUNDS for v in by_client.values())


def test_misreported_epsilon_fails_and_names_record(tmp_path):
    run = write_run(tmp_path / "run", misreport=1.05)  # the run claims 5 % more ε than the events give
    with pytest.raises(EpsilonMismatchError) as ei:
        verify_run(run)
    rec = json.loads(_lines(run)[ei.value.record_index])
    assert rec["kind"] == "dp_event" and rec["payload"]["client"] == "site-b"
    assert rec["payload"]["round"] == ROUNDS


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_changed_byte_breaks_verification_at_that_record(pristine_run, data):
    lines = _lines(pristine_run)
    pub = load_public_key(pristine_run / "keys" / "ledger.pub")
    i = data.draw(st.integers(0, len(lines) - 1), label="record")
    pos = data.draw(st.integers(0, len(lines[i]) - 1), label="byte")
    xor = data.draw(st.integers(1, 255), label="xor")
    line = bytearray(lines[i])
    line[pos] ^= xor
    blob = b"".join(lines[:i]) + bytes(line) + b"".join(lines[i + 1:])
    with pytest.raises(LedgerIntegrityError) as ei:
        verify_chain(blob, pub)
    assert ei.value.record_index == i


def test_changed_byte_on_disk_is_reported_by_verify_run_and_cli(run_copy, capsys):
    lines = _lines(run_copy)
    lines[4] = lines[4].replace(b'"steps":20', b'"steps":2')
    (run_copy / "ledger.jsonl").write_bytes(b"".join(lines))
    with pytest.raises(LedgerIntegrityError) as ei:
        verify_run(run_copy)
    assert ei.value.record_index == 4 and "signature" in ei.value.reason
    assert cli_verify(run_copy) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "record 4 (dp_event)" in err


@pytest.mark.parametrize("i", [0, 1, 7, -2])
def test_deleting_a_record_names_it(run_copy, i):
    lines = _lines(run_copy)
    idx = i % len(lines)
    del lines[idx]
    (run_copy / "ledger.jsonl").write_bytes(b"".join(lines))
    with pytest.raises(LedgerIntegrityError) as ei:
        verify_run(run_copy)
    assert ei.value.record_index == idx


def test_deleting_the_last_record_is_caught_by_completeness_or_pinned_head(run_copy, pristine_run):
    head = verify_run(pristine_run).head_hash
    (run_copy / "ledger.jsonl").write_bytes(b"".join(_lines(run_copy)[:-1]))
    rep = verify_run(run_copy)  # a prefix is a valid ledger ...
    assert not rep.complete and any("run_end" in w for w in rep.warnings)
    with pytest.raises(LedgerIntegrityError):  # ... unless completeness is required
        verify_run(run_copy, require_complete=True)
    with pytest.raises(LedgerIntegrityError, match="pinned head"):  # ... or the head hash was pinned
        verify_run(run_copy, expected_head_hash=head)


@pytest.mark.parametrize("a,b", [(0, 1), (3, 4), (2, 9)])
def test_reordering_records_names_the_first(run_copy, a, b):
    lines = _lines(run_copy)
    lines[a], lines[b] = lines[b], lines[a]
    (run_copy / "ledger.jsonl").write_bytes(b"".join(lines))
    with pytest.raises(LedgerIntegrityError) as ei:
        verify_run(run_copy)
    assert ei.value.record_index == a


def test_swapped_public_key_fails_at_first_record_and_pin_catches_it(run_copy, tmp_path):
    old_fp = verify_run(run_copy, check_epsilon=False).key_fingerprint
    other = generate_private_key(tmp_path / "other.key")
    write_public_key(run_copy / "keys" / "ledger.pub", other.public_key())
    with pytest.raises(LedgerIntegrityError) as ei:
        verify_run(run_copy)
    assert ei.value.record_index == 0 and "signature" in ei.value.reason
    with pytest.raises(LedgerKeyError, match="pinned"):
        verify_run(run_copy, expected_key_fingerprint=old_fp)


def test_resigned_forgery_is_only_caught_by_pinning(run_copy, tmp_path, pristine_run):
    """Anyone with a private key can rewrite and re-sign: the fingerprint must be pinned out of band."""
    fp = verify_run(pristine_run, check_epsilon=False).key_fingerprint
    mallory = generate_private_key(tmp_path / "m.key")
    write_public_key(run_copy / "keys" / "ledger.pub", mallory.public_key())
    prev, out = "0" * 64, []
    import hashlib
    for line in _lines(run_copy):
        rec = json.loads(line)
        rec["prev_hash"] = prev
        rec["signature"] = mallory.sign(signed_message(rec)).hex()
        b = canonical_bytes(rec)
        prev = hashlib.sha256(b).hexdigest()
        out.append(b + b"\n")
    (run_copy / "ledger.jsonl").write_bytes(b"".join(out))
    verify_run(run_copy, check_epsilon=False)
    with pytest.raises(LedgerKeyError):
        verify_run(run_copy, expected_key_fingerprint=fp, check_epsilon=False)


def _append_signed(run, rec_update):
    key = load_private_key(run / "keys" / "ledger.key")
    lines = _lines(run)
    last = json.loads(lines[-1])
    import hashlib
    rec = dict(last, seq=last["seq"] + 1, prev_hash=hashlib.sha256(lines[-1].rstrip(b"\n")).hexdigest(), **rec_update)
    rec.pop("signature")
    rec["signature"] = key.sign(signed_message(rec)).hex()
    (run / "ledger.jsonl").write_bytes(b"".join(lines) + canonical_bytes(rec) + b"\n")
    return len(lines)


def test_unknown_schema_version_is_named(run_copy):
    idx = _append_signed(run_copy, {"schema_version": 2})
    with pytest.raises(UnknownSchemaVersion) as ei:
        verify_run(run_copy)
    assert ei.value.record_index == idx and "schema_version 2" in str(ei.value)


def test_signed_dp_event_of_unknown_type_is_named(run_copy):
    last = json.loads(_lines(run_copy)[-1])
    idx = _append_signed(run_copy, {"kind": "dp_event", "payload": {
        "round": 4, "client": "site-a", "unit": "example", "event": {"type": "laplace", "scale": 2.0},
        "delta": DELTA, "max_grad_norm": 1.0, "accountant": "pld", "epsilon": 1.0}, "utc": last["utc"]})
    with pytest.raises(UnknownEventType) as ei:
        verify_run(run_copy)
    assert ei.value.record_index == idx and "laplace" in str(ei.value) and ei.value.kind == "dp_event"


def test_unsigned_record_is_named(run_copy):
    lines = _lines(run_copy)
    rec = json.loads(lines[3])
    del rec["signature"]
    lines[3] = canonical_bytes(rec) + b"\n"
    (run_copy / "ledger.jsonl").write_bytes(b"".join(lines))
    with pytest.raises(UnsignedRecordError) as ei:
        verify_run(run_copy)
    assert ei.value.record_index == 3 and str(ei.value).count("\n") == 0


def test_artifact_tampering_is_named(run_copy):
    (run_copy / "checkpoints" / "round_0002" / "unet" / "model.safetensors").write_bytes(b"\0" * 64)
    with pytest.raises(ArtifactMismatchError) as ei:
        verify_run(run_copy)
    assert json.loads(_lines(run_copy)[ei.value.record_index])["payload"]["round"] == 2
    (run_copy / "config.toml").write_text("seed = 4\n")
    with pytest.raises(ArtifactMismatchError, match="config.toml"):
        verify_run(run_copy)


def test_bad_inputs_raise_named_errors(tmp_path, run_copy, capsys):
    with pytest.raises(MissingRunDirectory):
        verify_run(tmp_path / "absent")
    assert cli_verify(tmp_path / "absent") == 2
    assert "MissingRunDirectory" in capsys.readouterr().err
    (run_copy / "config.toml").unlink()
    with pytest.raises(IncompleteRunDirectory, match="config.toml"):
        verify_run(run_copy)
    (run_copy / "keys" / "ledger.pub").unlink()
    with pytest.raises(IncompleteRunDirectory, match="ledger.pub"):
        verify_run(run_copy)
    (run_copy / "ledger.jsonl").write_bytes(b"")
    with pytest.raises(IncompleteRunDirectory, match="empty"):
        verify_run(run_copy)
    (run_copy / "ledger.jsonl").unlink()
    with pytest.raises(IncompleteRunDirectory, match="ledger.jsonl"):
        verify_run(run_copy)


def test_truncated_mid_record_is_named(run_copy):
    data = (run_copy / "ledger.jsonl").read_bytes()
    (run_copy / "ledger.jsonl").write_bytes(data[:-40])
    with pytest.raises(LedgerIntegrityError) as ei:
        verify_run(run_copy)
    assert ei.value.record_index == len(_lines(run_copy)) - 1 and "torn" in ei.value.reason


def test_cli_ok(pristine_run, capsys):
    assert cli_verify(pristine_run) == 0
    out = capsys.readouterr().out
    assert out.startswith("OK:") and "sha256:" in out and all(c in out for c in CLIENTS)


def test_every_error_is_a_verification_error_with_index():
    for cls in (LedgerIntegrityError, UnknownSchemaVersion, UnsignedRecordError, EpsilonMismatchError,
                ArtifactMismatchError):
        e = cls(4, "why", kind="dp_event")
        assert isinstance(e, VerificationError) and e.record_index == 4 and str(e) == "record 4 (dp_event): why"


def test_pinned_key_accepts_any_spelling_and_a_wrong_one_is_an_integrity_failure(run_copy, capsys):
    """Issue 16 item 6: `sha256:` prefix optional, hex of any case; a wrong pin is exit 1 (integrity), a malformed
    one exit 2 (bad input)."""
    from audits.errors import LedgerKeyError, PinFormatError, PinnedKeyMismatch, VerificationError

    fp = verify_run(run_copy).key_fingerprint
    hexpart = fp.removeprefix("sha256:")
    for spelling in (fp, hexpart, hexpart.upper(), "SHA256:" + hexpart.upper(), f"  {fp} "):
        assert verify_run(run_copy, expected_key_fingerprint=spelling).key_pinned
    wrong = "sha256:" + ("0" if hexpart[0] != "0" else "1") + hexpart[1:]
    with pytest.raises(PinnedKeyMismatch) as ei:
        verify_run(run_copy, expected_key_fingerprint=wrong)
    assert isinstance(ei.value, VerificationError) and isinstance(ei.value, LedgerKeyError)
    assert cli_verify(run_copy, expected_key_fingerprint=wrong) == 1
    assert "PinnedKeyMismatch" in capsys.readouterr().err
    assert cli_verify(run_copy, expected_key_fingerprint=hexpart.upper()) == 0
    for bad in ("sha256:xyz", hexpart[:-1], "md5:" + hexpart):
        with pytest.raises(PinFormatError):
            verify_run(run_copy, expected_key_fingerprint=bad)
        assert cli_verify(run_copy, expected_key_fingerprint=bad) == 2
    head = verify_run(run_copy).head_hash
    assert verify_run(run_copy, expected_head_hash=head.upper()).head_pinned
    assert cli_verify(run_copy, expected_head_hash="not-a-hash") == 2


def test_deleted_final_checkpoint_is_an_integrity_failure(run_copy):
    """An earlier checkpoint may be pruned (a warning); the final one is what is released: missing, it fails."""
    import shutil

    shutil.rmtree(run_copy / "checkpoints" / "round_0001")
    rep = verify_run(run_copy)
    assert any("round_0001" in w and "not present" in w for w in rep.warnings)
    shutil.rmtree(run_copy / "checkpoints" / f"round_{ROUNDS:04d}")
    with pytest.raises(ArtifactMismatchError, match="final checkpoint") as ei:
        verify_run(run_copy)
    assert ei.value.kind == "round_end"
    assert cli_verify(run_copy) == 1
