"""One test per attack. Part A: the weaknesses of Flower 1.42 SecAgg+ (numbered as in the original brief) and
message-level attacks. Part B: the eight findings of issue 12 (``test_f<k>_...``), each reproducing the attack
and asserting that it now fails with a named error from secure_agg.errors (or that the offender is excluded).
"""

import dataclasses
import pickle

import numpy as np
import pytest

from secure_agg import (BadShareError, ConsistencyError, DuplicateClientError, IncompleteRevealError, IntegrityError,
                        InvalidMessage, LowOrderKeyError, PolicyViolation, ProtocolPolicy, ReplayError,
                        SecAggParams, SecretDisclosureError, StageOrderError, ThresholdError, required_degree,
                        secure_sum_in_process, validate_params)
from secure_agg import degree_bound, graph
from secure_agg.hazmat import hkdf, prg, shamir, shamir_robust, signing, x25519
from secure_agg.messages import ConsistencyRequest, signed_payload, digest
from secure_agg.quantize import make_quantizer
from secure_agg.site import masked_digest, share_x, shares_digest


def resign(r, msg, stage, setup, body):
    """What a *malicious site* can do: sign an arbitrary payload with its own identity key."""
    sig = signing.sign(r.idents[msg.sender], signed_payload(run_id=msg.run_id, round_index=msg.round_index,
                                                            stage=stage, sender=msg.sender, setup=setup, body=body))
    return dataclasses.replace(msg, signature=sig)


def replace_one(reps, sender, fn):
    return [fn(m) if m.sender == sender else m for m in reps]


# ================================================ Part A ========================================================
# (1) weak PRG: Flower seeds its mask PRG with 32 bits; ours is AES-256-CTR keyed with the full 256-bit seed.
def test_1_prg_uses_full_256_bit_seed():
    base = bytes(32)
    high = b"\x80" + bytes(31)            # differs only in the top bit
    low_same = bytes(28) + b"\x00" * 4    # identical low 32 bits as base
    streams = [prg.expand(s, 64) for s in (base, high, b"\x01" + bytes(31), low_same[:-1] + b"\x01")]
    for i in range(len(streams)):
        for j in range(i + 1, len(streams)):
            assert not np.array_equal(streams[i], streams[j])
    for bad in (bytes(4), bytes(16), bytes(31), 12345):
        with pytest.raises(ValueError):
            prg.expand(bad, 4)


def test_1_prg_uniform_mod_2k_chi_square():
    words = prg.expand(bytes(range(32)), 1 << 18)
    for k in (4, 8):
        counts = np.bincount(words & ((1 << k) - 1), minlength=1 << k)
        expected = words.size / (1 << k)
        chi2 = float(((counts - expected) ** 2 / expected).sum())
        df = (1 << k) - 1
        assert chi2 < df + 6 * np.sqrt(2 * df)  # ~6 sigma: fails with probability < 1e-8
    top = np.bincount(words >> 28, minlength=16)  # the high bits are uniform too
    assert float(((top - words.size / 16) ** 2 / (words.size / 16)).sum()) < 15 + 6 * np.sqrt(30)


# (2) substituted public key: sites verify Ed25519 signatures under the pinned roster.
def test_2_substituted_public_key_rejected(make_round):
    r = make_round(n=5)
    keys = r.run_until("share_keys")
    m = keys[10]
    i = m.ids.index(11)
    forged = m.c_pks[:i] + (x25519.public_bytes(x25519.generate()),) + m.c_pks[i + 1:]  # server-in-the-middle key
    with pytest.raises(IntegrityError):
        r.sites[10].handle(dataclasses.replace(m, c_pks=forged))


def test_2_server_excludes_unsigned_advertisement(make_round):
    r = make_round(n=5)
    r.run_until("advertise_keys")
    fake = x25519.public_bytes(x25519.generate())
    r.step(tamper=lambda reps: replace_one(reps, 10, lambda m: dataclasses.replace(m, s_pk=fake)))
    res = r.finish()
    assert res.excluded == {10: "IntegrityError"} and 10 not in res.survivors
    assert np.max(np.abs(res.sum - r.exact_sum(res.survivors))) <= res.transcript["sum_error_bound"]


def test_2_own_key_altered_rejected(make_round):
    r = make_round(n=4)
    m = r.run_until("share_keys")[10]
    i, j = m.ids.index(10), m.ids.index(11)
    c = list(m.c_pks)
    c[i] = c[j]
    with pytest.raises((IntegrityError, DuplicateClientError)):
        r.sites[10].handle(dataclasses.replace(m, c_pks=tuple(c)))


# (3) survivor and dropped lists intersect -> the site would reveal both secrets of one peer.
def test_3_survivor_dropped_intersection_rejected(make_round):
    r = make_round(n=5)
    ureq = r.run_until("unmasking")
    with pytest.raises(SecretDisclosureError):
        r.sites[10].handle(dataclasses.replace(ureq[10], dropped=(11,)))


def test_server_asks_for_both_secrets_by_shrinking_survivors(make_round):
    r = make_round(n=5)
    ureq = r.run_until("unmasking")
    bad = dataclasses.replace(ureq[10], survivors=(10, 12, 13, 14), dropped=(11,))
    with pytest.raises(ConsistencyError):
        r.sites[10].handle(bad)


def test_server_asks_for_key_share_of_unknown_dropout(make_round):
    r = make_round(n=5)
    ureq = r.run_until("unmasking", drops={"masked_input": (14,)})
    assert ureq[10].dropped == (14,)
    r.sites[10].handle(ureq[10])  # honest request works
    r2 = make_round(n=5)
    ureq2 = r2.run_until("unmasking")
    with pytest.raises(SecretDisclosureError):
        r2.sites[10].handle(dataclasses.replace(ureq2[10], dropped=(99,)))


# (4) threshold from the server: t <= n/2, t = 1 or t > n are refused by every site.
@pytest.mark.parametrize("t", [1, 2, 0, -1, 6])
def test_4_unsafe_threshold_rejected(make_round, t):
    r = make_round(n=5)
    setup = r.start()[10]
    with pytest.raises(ThresholdError):
        r.sites[10].handle(dataclasses.replace(setup, threshold=t))


def test_4_t_equal_one_rejected_for_two_clients():
    with pytest.raises(ValueError):
        secure_sum_in_process({0: np.zeros(2)}, params=SecAggParams(), run_id="r", round_index=0)
    with pytest.raises(ValueError):
        SecAggParams(threshold_fraction=0.3)


# (5) no raw secrets in repr or serialised state.
def test_5_no_secrets_in_repr_or_state(make_round):
    r = make_round(n=4)
    ureq = r.run_until("unmasking")
    c = r.sites[10]
    secrets_hex = [c._s[k].hex() for k in ("b", "s_sk", "c_sk", "rounding_seed")]
    out = c.handle(ureq[10])
    texts = [repr(c), str(c), repr(out), repr(ureq[10]), repr(r.server), repr(r.roster)]
    for s in secrets_hex:
        for text in texts:
            assert s not in text
    for share in out.self_mask_shares + out.key_shares:
        assert share.hex() not in repr(out) and repr(share) not in repr(out)
    with pytest.raises(TypeError):
        pickle.dumps(c)
    res = secure_sum_in_process({i: np.full(3, 0.5) for i in range(3)}, params=SecAggParams(), run_id="r",
                                round_index=0)
    assert "0.5" not in repr(res) and "1.5" not in repr(res)


# (6) no silent wrap-around: enough bits for 2000 sites at full range, or a ValueError.
def test_6_no_silent_wrap_2000_clients():
    q = make_quantizer(n_clients=2000, clip_range=1.0)
    assert q.modulus_bits <= 32
    full = q.quantize(np.full(1000, 5.0), np.random.default_rng(0))  # clipped to +c: the largest value
    assert int(full.max()) == q.levels
    assert 2000 * int(full.max()) <= (1 << q.modulus_bits) - 1
    with pytest.raises(ValueError):
        make_quantizer(n_clients=2000, clip_range=1.0, modulus_bits=11)
    with pytest.raises(ValueError):
        make_quantizer(n_clients=2, clip_range=1.0, modulus_bits=33)


def test_6_full_range_sum_exact_at_the_edge():
    # 5 sites, k = 4 bits: L = 3 levels, the sum of all-maximal inputs is 15 = 2^4 - 1 (no wrap)
    for v in (9.0, -9.0):
        r = secure_sum_in_process({i: np.full(7, v) for i in range(5)}, params=SecAggParams(modulus_bits=4),
                                  run_id="r", round_index=0)
        np.testing.assert_allclose(r.sum, 5.0 * np.sign(v))


# (7) dropouts during key setup do not abort while >= t remain; odd and even share counts.
@pytest.mark.parametrize("n", [7, 8, 9, 10])
def test_7_dropout_during_key_setup(n):
    rng = np.random.default_rng(n)
    inputs = {c: rng.uniform(-1, 1, 9) for c in range(n)}
    t = int(0.67 * n) + 1
    budget = n - t
    drops = {"advertise_keys": [0], "share_keys": list(range(1, budget))}
    res = secure_sum_in_process(inputs, params=SecAggParams(mode="secagg"), run_id="r", round_index=0,
                                dropouts=drops)
    assert len(res.survivors) == t
    exact = sum(inputs[c] for c in res.survivors)
    assert np.max(np.abs(res.sum - exact)) <= make_quantizer(n_clients=n, clip_range=1.0).error_bound(t)


# message-level attacks
def test_tampered_ciphertext(make_round):
    r = make_round(n=4)
    m = r.run_until("masked_input")[10]
    blob = bytearray(m.ciphertexts[0])
    blob[-1] ^= 1
    with pytest.raises(IntegrityError):
        r.sites[10].handle(dataclasses.replace(m, ciphertexts=(bytes(blob),) + m.ciphertexts[1:]))


def test_wrong_recipient(make_round):
    r = make_round(n=4)
    cts = r.run_until("masked_input")
    # the server routes to 10 the share that 12 encrypted for 11 (claims it came from 12 for 10)
    m10, m11 = cts[10], cts[11]
    i10, i11 = m10.senders.index(12), m11.senders.index(12)
    forged = list(m10.ciphertexts)
    forged[i10] = m11.ciphertexts[i11]
    with pytest.raises(IntegrityError):
        r.sites[10].handle(dataclasses.replace(m10, ciphertexts=tuple(forged)))


def test_duplicate_reply_excludes_sender(make_round):
    r = make_round(n=5)
    r.run_until("advertise_keys")
    r.step(tamper=lambda reps: reps + [reps[0]])
    res = r.finish()
    assert res.excluded == {10: "DuplicateClientError"} and 10 not in res.survivors


def test_duplicate_public_key(make_round):
    r = make_round(n=4)
    m = r.run_until("share_keys")[10]
    c = list(m.c_pks)
    c[m.ids.index(12)] = c[m.ids.index(11)]
    with pytest.raises((DuplicateClientError, IntegrityError)):
        r.sites[10].handle(dataclasses.replace(m, c_pks=tuple(c)))


def test_out_of_order_stage(make_round):
    r = make_round(n=4)
    keys = r.run_until("share_keys")
    with pytest.raises(StageOrderError):
        r.sites[10].handle(ConsistencyRequest(keys[10].version, "run", 1, "consistency", -1,
                                              survivors=(10, 11, 12, 13)))
    with pytest.raises(StageOrderError):
        r.server.result()
    r2 = make_round(n=4)
    with pytest.raises(StageOrderError):
        r2.server.advance([])  # before start()


def test_replayed_and_cross_round_messages(make_round):
    r = make_round(n=4)
    keys = r.run_until("share_keys")
    r.sites[10].handle(keys[10])
    with pytest.raises(ReplayError):
        r.sites[10].handle(keys[10])  # same stage twice
    other = make_round(n=4, round_index=2)
    setup2 = other.start()
    fresh = make_round(n=4, round_index=1, idents=other.idents)
    fresh.start()
    with pytest.raises(ReplayError):
        fresh.sites[10].handle(setup2[10])  # a round-2 setup into round 1


def test_stale_stage_message_is_replay(make_round):
    r = make_round(n=4)
    keys = r.run_until("share_keys")
    r.step()
    with pytest.raises(ReplayError):
        r.sites[10].handle(keys[10])  # a share_keys-stage message during masked_input


def test_changed_survivor_list_between_stages(make_round):
    r = make_round(n=5)
    ureq = r.run_until("unmasking")
    with pytest.raises((ConsistencyError, InvalidMessage)):
        r.sites[10].handle(dataclasses.replace(ureq[10], survivors=(10, 11, 12, 13)))


def test_forged_consistency_signature(make_round):
    r = make_round(n=5)
    m = r.run_until("unmasking")[10]
    sigs = list(m.signatures)
    sigs[m.signer_ids.index(11)] = bytes(64)
    with pytest.raises(IntegrityError):
        r.sites[10].handle(dataclasses.replace(m, signatures=tuple(sigs)))


def test_server_threshold_abort(make_round):
    r = make_round(n=5)  # t = 4
    r.run_until("masked_input")
    with pytest.raises(ThresholdError):
        r.step(drop=(10, 11))
    assert r.server.stage == "aborted"


def test_bad_version_and_malformed(make_round):
    r = make_round(n=4)
    setup = r.start()[10]
    with pytest.raises(InvalidMessage):
        r.sites[10].handle(dataclasses.replace(setup, version=1))
    with pytest.raises(InvalidMessage):
        r.sites[11].handle(dataclasses.replace(setup, client_ids=(13, 12, 11, 10)))
    with pytest.raises(DuplicateClientError):
        r.sites[12].handle(dataclasses.replace(setup, client_ids=(10, 10, 12, 13)))
    with pytest.raises(InvalidMessage):
        r.sites[13].handle(dataclasses.replace(setup, levels=setup.levels * 2))  # would wrap
    with pytest.raises(InvalidMessage):
        r.make_round = None
        r.site(10).handle("not a message")
