"""The public session API privfed builds on: Roster, ProtocolPolicy, ServerSession/SiteSession, codec, sealing."""

import dataclasses

import numpy as np
import pytest

from secure_agg import (IntegrityError, InvalidMessage, ProtocolPolicy, ReplayError, Roster, SecAggParams,
                        ServerSession, SiteSession, UnknownIdentityError, codec)
from secure_agg.hazmat import signing
from secure_agg.messages import MaskedInput
from secure_agg.roster import KEY_BYTES

SCALARS = (int, float, str, bytes, bool)


def test_roster_fingerprint_and_lookup():
    keys = {i: signing.generate() for i in (3, 1, 2)}
    raw = {i: k.public_key().public_bytes_raw() for i, k in keys.items()}
    r = Roster.from_public_bytes(raw)
    assert r.ids == (1, 2, 3) and len(r.fingerprint) == 64
    import hashlib
    import json
    want = json.dumps({str(i): raw[i].hex() for i in raw}, sort_keys=True, separators=(",", ":")).encode()
    assert r.fingerprint == hashlib.sha256(want).hexdigest()     # recomputable by anyone from the key list
    assert Roster.from_public_bytes(dict(sorted(raw.items()))).fingerprint == r.fingerprint
    assert Roster.from_public_bytes({**raw, 3: raw[3][:-1] + bytes([raw[3][-1] ^ 1])}).fingerprint != r.fingerprint
    assert r.public_key(2).public_bytes_raw() == raw[2]
    with pytest.raises(UnknownIdentityError):
        r.public_key(9)
    assert issubclass(UnknownIdentityError, IntegrityError)
    for bad in ({-1: raw[1]}, {"a": raw[1]}):
        with pytest.raises(TypeError):
            Roster.from_public_bytes(bad)
    with pytest.raises(ValueError):
        Roster.from_public_bytes({1: b"\x00" * (KEY_BYTES - 1)})
    with pytest.raises(ValueError):
        Roster.from_public_bytes({1: raw[1], 2: raw[1]})


def test_policy_validation():
    with pytest.raises(TypeError):
        ProtocolPolicy(3)                          # keyword-only
    for bad in (dict(min_clients=1), dict(min_threshold=1), dict(max_colluders=-1), dict(min_degree=0),
                dict(failure_log2=0), dict(max_dropout_fraction=1.0), dict(max_dropout_fraction=-0.1)):
        with pytest.raises(ValueError):
            ProtocolPolicy(**bad)
    with pytest.raises(TypeError):
        ProtocolPolicy(min_clients=3.0)
    p = ProtocolPolicy(max_colluders=4)
    assert p.min_threshold_for(10) == 8
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.max_colluders = 0


def _round(n=5, dim=33, params=None, seal_key=None):
    """Drive a round through the public API only; with ``seal_key``, every site is sealed after each reply and
    unsealed before the next message (Flower's ClientApp runs a fresh process per message), and every message is
    passed through the codec."""
    idents = {c: signing.generate() for c in range(n)}
    roster = Roster.from_public_bytes({c: k.public_key().public_bytes_raw() for c, k in idents.items()})
    policy = ProtocolPolicy()
    inputs = {c: np.linspace(-0.5, 0.5, dim) * (c + 1) for c in range(n)}
    server = ServerSession(run_id="api", round_index=4, client_ids=range(n), params=params or SecAggParams(),
                           dim=dim, roster=roster)
    sites = {c: SiteSession(c, run_id="api", round_index=4, identity=idents[c], roster=roster, policy=policy)
             for c in range(n)}
    blobs = {}
    inbox = server.start()
    while not server.done:
        replies = []
        for c, msg in sorted(inbox.items()):
            if seal_key is not None:
                msg = codec.decode(*codec.encode(msg))
                if c in blobs:
                    sites[c] = SiteSession.unseal(blobs[c], key=seal_key, identity=idents[c], roster=roster,
                                                  policy=policy, run_id="api", round_index=4, stage=msg.stage)
            if msg.stage == "masked_input":
                sites[c].set_input(inputs[c])
            rep = sites[c].handle(msg)
            if seal_key is not None:
                blobs[c] = sites[c].seal(seal_key)
                rep = codec.decode(*codec.encode(rep))
            replies.append(rep)
        inbox = server.advance(replies)
    return server.result(), inputs, idents, roster, policy, blobs


def test_public_api_round_with_codec_and_sealing():
    key = bytes(range(32))
    res, inputs, idents, roster, policy, blobs = _round(seal_key=key)
    exact = sum(np.clip(v, -1, 1) for v in inputs.values())
    assert np.max(np.abs(res.sum - exact)) <= res.transcript["sum_error_bound"]
    assert res.sum.dtype == np.float64 and res.excluded == {}
    for k in ("setup_hash", "threshold", "neighbours", "degree_rule", "graph_randomness"):
        assert k in res.transcript
    # a stale blob (older stage) and a blob of another site are refused
    with pytest.raises(ReplayError):
        SiteSession.unseal(blobs[0], key=key, identity=idents[1], roster=roster, policy=policy)
    with pytest.raises(ReplayError):
        SiteSession.unseal(blobs[0], key=key, identity=idents[0], roster=roster, policy=policy, run_id="other")
    with pytest.raises(ReplayError):
        SiteSession.unseal(blobs[0], key=key, identity=idents[0], roster=roster, policy=policy, round_index=5)


def test_seal_tamper_and_stage_replay():
    idents = {c: signing.generate() for c in range(3)}
    roster = Roster({c: k.public_key() for c, k in idents.items()})
    policy = ProtocolPolicy()
    server = ServerSession(run_id="s", round_index=0, client_ids=range(3), params=SecAggParams(), dim=4,
                           roster=roster)
    site = SiteSession(0, run_id="s", round_index=0, identity=idents[0], roster=roster, policy=policy)
    key = b"k" * 32
    early = site.seal(key)
    site.handle(server.start()[0])
    later = site.seal(key)
    assert b"nonce" not in later and site._s["nonce"] not in later and site._s["rounding_seed"] not in later
    with pytest.raises(ReplayError):     # the caller is about to handle a "reveal" message: a commit-stage blob
        SiteSession.unseal(early, key=key, identity=idents[0], roster=roster, policy=policy, stage="reveal")
    restored = SiteSession.unseal(later, key=key, identity=idents[0], roster=roster, policy=policy, stage="reveal")
    assert restored.stage == "reveal"
    stale = SiteSession.unseal(early, key=key, identity=idents[0], roster=roster, policy=policy)
    commits = [site._s["commitment"]]
    from secure_agg.messages import CommitList
    cl = CommitList(2, "s", 0, "reveal", -1, ids=(0,), commitments=tuple(commits), signatures=(bytes(64),))
    with pytest.raises(ReplayError):     # without arguments: the stale blob is caught when the next message comes
        stale.handle(cl)
    for i in (len(later) // 2, len(later) - 1, 20):
        bad = bytearray(later)
        bad[i] ^= 1
        with pytest.raises(IntegrityError):
            SiteSession.unseal(bytes(bad), key=key, identity=idents[0], roster=roster, policy=policy)
    with pytest.raises(IntegrityError):
        SiteSession.unseal(later, key=b"x" * 32, identity=idents[0], roster=roster, policy=policy)


def test_codec_fits_flower_records_and_is_strict():
    res, *_ = _round(n=4, dim=5, seal_key=b"z" * 32)
    idents = {c: signing.generate() for c in range(3)}
    roster = Roster({c: k.public_key() for c, k in idents.items()})
    setup = ServerSession(run_id="c", round_index=0, client_ids=range(3), params=SecAggParams(), dim=4,
                          roster=roster).start()[0]
    cfg, arrs = codec.encode(setup)
    assert arrs == {}
    for v in cfg.values():
        assert isinstance(v, SCALARS) or (isinstance(v, list) and len({type(x) for x in v}) <= 1
                                          and all(isinstance(x, SCALARS) for x in v))
    assert codec.decode(cfg, arrs) == setup
    mi = MaskedInput(2, "c", 0, "masked_input", 1, masked=np.arange(4, dtype=np.uint32), signature=b"s" * 64)
    c2, a2 = codec.encode(mi)
    back = codec.decode(c2, a2)
    assert np.array_equal(back.masked, mi.masked) and back.signature == mi.signature
    bad_cases = [({**cfg, "secagg_type": "Nope"}, {}), ({**cfg, "version": 1}, {}), ({**cfg, "extra": 1}, {}),
                 ({k: v for k, v in cfg.items() if k != "threshold"}, {}), ({**cfg, "threshold": "2"}, {}),
                 ({**cfg, "threshold": True}, {}), ({**cfg, "client_ids": (0, 1, 2)}, {}),
                 ({**cfg, "client_ids": [0, "1"]}, {}), (cfg, {"masked": np.zeros(2, np.uint32)}),
                 (c2, {"masked": np.zeros(4, np.float32)}), (c2, {})]
    for c, a in bad_cases:
        with pytest.raises(InvalidMessage):
            codec.decode(c, a)


def test_site_refuses_after_abort_and_checks_arguments():
    idents = {c: signing.generate() for c in range(3)}
    roster = Roster({c: k.public_key() for c, k in idents.items()})
    with pytest.raises(ValueError):   # identity that is not the roster's key for this id
        SiteSession(0, run_id="a", round_index=0, identity=idents[1], roster=roster, policy=ProtocolPolicy())
    with pytest.raises(UnknownIdentityError):
        SiteSession(7, run_id="a", round_index=0, identity=idents[1], roster=roster, policy=ProtocolPolicy())
    server = ServerSession(run_id="a", round_index=0, client_ids=range(3), params=SecAggParams(), dim=4,
                           roster=roster)
    site = SiteSession(0, run_id="a", round_index=0, identity=idents[0], roster=roster,
                       policy=ProtocolPolicy(min_clients=4))
    setup = server.start()[0]
    from secure_agg import PolicyViolation, ProtocolAbort
    with pytest.raises(PolicyViolation):
        site.handle(setup)
    with pytest.raises(ProtocolAbort):
        site.handle(setup)
    assert site.stage == "aborted"


def test_sparse_round_through_codec_and_sealing():
    res, inputs, *_ = _round(n=12, dim=9, params=SecAggParams(neighbours=6), seal_key=b"q" * 32)
    assert res.transcript["degree"] == 6 and res.transcript["mode"] == "secagg+"
    exact = sum(np.clip(v, -1, 1) for v in inputs.values())
    assert np.max(np.abs(res.sum - exact)) <= res.transcript["sum_error_bound"]


def test_server_session_argument_validation():
    idents = {c: signing.generate() for c in range(3)}
    roster = Roster({c: k.public_key() for c, k in idents.items()})
    kw = dict(run_id="v", round_index=0, params=SecAggParams(), dim=4, roster=roster)
    with pytest.raises(ValueError):
        ServerSession(client_ids=[0, 1, 7], **kw)            # not in the roster
    with pytest.raises(ValueError):
        ServerSession(client_ids=[0, 0, 1], **kw)
    with pytest.raises(TypeError):
        ServerSession(client_ids=[0, 1, 2], **{**kw, "params": {}})
    with pytest.raises(ValueError):
        ServerSession(client_ids=[0, 1, 2], **{**kw, "dim": 0})
    s = ServerSession(client_ids=[0, 1, 2], **kw)
    s.start()
    from secure_agg import StageOrderError
    with pytest.raises(StageOrderError):
        s.start()
