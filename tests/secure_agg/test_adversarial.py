"""One test per weakness of Flower 1.42 SecAgg+ (numbered as in the brief), plus message-level attacks.

Every attack is rejected with a named exception from secure_agg.errors.
"""

import dataclasses
import pickle

import numpy as np
import pytest

from secure_agg import (ConsistencyError, DuplicateClientError, IntegrityError, InvalidMessage, ReplayError,
                        SecAggParams, SecretDisclosureError, StageOrderError, ThresholdError, secure_sum_in_process)
from secure_agg.hazmat import prg, x25519
from secure_agg.quantize import make_quantizer


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


# (2) substituted public key: clients verify Ed25519 signatures under the PKI identities.
def test_2_substituted_public_key_rejected(make_round):
    r = make_round(n=5)
    keys = r.to_share_keys()
    victim, target = 10, 11
    forged = dict(keys[victim].keys)
    c_pk, s_pk, sig = forged[target]
    forged[target] = (x25519.public_bytes(x25519.generate()), s_pk, sig)  # server-in-the-middle key
    with pytest.raises(IntegrityError):
        r.clients[victim].share_keys(dataclasses.replace(keys[victim], keys=forged))


def test_2_server_rejects_unsigned_advertisement(make_round):
    r = make_round(n=4)
    adv = r.to_advertise()
    adv[0] = dataclasses.replace(adv[0], s_pk=x25519.public_bytes(x25519.generate()))
    with pytest.raises(IntegrityError):
        r.server.advertise_stage(adv)


def test_2_own_key_altered_rejected(make_round):
    r = make_round(n=4)
    keys = r.to_share_keys()
    forged = dict(keys[10].keys)
    other = forged[11]
    forged[10] = other
    with pytest.raises((IntegrityError, DuplicateClientError)):
        r.clients[10].share_keys(dataclasses.replace(keys[10], keys=forged))


# (3) survivor and dropped lists intersect -> the client would reveal both secrets of one peer.
def test_3_survivor_dropped_intersection_rejected(make_round):
    r = make_round(n=5)
    ureq = r.to_unmask()
    bad = dataclasses.replace(ureq[10], dropped=(11,))
    with pytest.raises(SecretDisclosureError):
        r.clients[10].unmask(bad)


def test_server_asks_for_both_secrets_by_shrinking_survivors(make_round):
    r = make_round(n=5)
    ureq = r.to_unmask()
    # server pretends 11 dropped after the consistency check, to get its mask key as well as its self-mask share
    bad = dataclasses.replace(ureq[10], survivors=(10, 12, 13, 14), dropped=(11,))
    with pytest.raises(ConsistencyError):
        r.clients[10].unmask(bad)


def test_server_asks_for_key_share_of_unknown_dropout(make_round):
    r = make_round(n=5)
    ureq = r.to_unmask(masked_drop=(14,))
    assert ureq[10].dropped == (14,)
    r.clients[10].unmask(ureq[10])  # honest request works
    r2 = make_round(n=5)
    ureq2 = r2.to_unmask()
    with pytest.raises(SecretDisclosureError):
        r2.clients[10].unmask(dataclasses.replace(ureq2[10], dropped=(99,)))


# (4) threshold from the server: t <= n/2, t = 1 or t > n are refused by every client.
@pytest.mark.parametrize("t", [1, 2, 0, -1, 6])
def test_4_unsafe_threshold_rejected(make_round, t):
    r = make_round(n=5)
    setup = dataclasses.replace(r.server.setup(), threshold=t)
    with pytest.raises(ThresholdError):
        r.clients[10].advertise_keys(setup)


def test_4_t_equal_one_rejected_for_two_clients(make_round):
    r = make_round(n=2, t=2)
    with pytest.raises(ThresholdError):
        r.clients[10].advertise_keys(dataclasses.replace(r.server.setup(), threshold=1))
    with pytest.raises(ValueError):
        secure_sum_in_process({0: np.zeros(2)}, params=SecAggParams(), run_id="r", round_index=0,
                              rng=np.random.default_rng(0))
    with pytest.raises(ValueError):
        SecAggParams(threshold_fraction=0.3)


# (5) no raw secrets in repr or serialised state.
def test_5_no_secrets_in_repr_or_state(make_round):
    r = make_round(n=4)
    ureq = r.to_unmask()
    c = r.clients[10]
    secrets_hex = [c._b.hex(), x25519.private_bytes(c._s_sk).hex(), x25519.private_bytes(c._c_sk).hex()]
    out = c.unmask(ureq[10])
    texts = [repr(c), str(c), repr(out), repr(ureq[10]), repr(r.server)]
    for s in secrets_hex:
        for text in texts:
            assert s not in text
    for share in list(out.self_mask_shares.values()) + list(out.key_shares.values()):
        assert share.hex() not in repr(out) and repr(share) not in repr(out)
    with pytest.raises(TypeError):
        pickle.dumps(c)
    res = secure_sum_in_process({i: np.full(3, 0.5) for i in range(3)}, params=SecAggParams(), run_id="r",
                                round_index=0, rng=np.random.default_rng(0))
    assert "0.5" not in repr(res) and "1.5" not in repr(res)


# (6) no silent wrap-around: enough bits for 2000 clients at full range, or a ValueError.
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
    # 5 clients, k = 4 bits: L = 3 levels, the sum of all-maximal inputs is 15 = 2^4 - 1 (no wrap)
    r = secure_sum_in_process({i: np.full(7, 9.0) for i in range(5)}, params=SecAggParams(modulus_bits=4),
                              run_id="r", round_index=0, rng=np.random.default_rng(0))
    np.testing.assert_allclose(r.sum, 5.0)
    r = secure_sum_in_process({i: np.full(7, -9.0) for i in range(5)}, params=SecAggParams(modulus_bits=4),
                              run_id="r", round_index=0, rng=np.random.default_rng(0))
    np.testing.assert_allclose(r.sum, -5.0)


# (7) dropouts during key setup do not abort while >= t remain; odd and even share counts.
@pytest.mark.parametrize("n", [7, 8, 9, 10])
def test_7_dropout_during_key_setup(n):
    rng = np.random.default_rng(n)
    inputs = {c: rng.uniform(-1, 1, 9) for c in range(n)}
    t = int(0.67 * n) + 1
    budget = n - t
    drops = {"advertise_keys": [0], "share_keys": list(range(1, budget))}
    res = secure_sum_in_process(inputs, params=SecAggParams(mode="secagg"), run_id="r", round_index=0,
                                rng=np.random.default_rng(0), dropouts=drops)
    assert len(res.survivors) == t
    exact = sum(inputs[c] for c in res.survivors)
    assert np.max(np.abs(res.sum - exact)) <= make_quantizer(n_clients=n, clip_range=1.0).error_bound(t)


# message-level attacks
def test_tampered_ciphertext(make_round):
    r = make_round(n=4)
    cts = r.to_masked_input()
    blob = bytearray(cts[10].ciphertexts[11])
    blob[-1] ^= 1
    bad = dataclasses.replace(cts[10], ciphertexts={**cts[10].ciphertexts, 11: bytes(blob)})
    with pytest.raises(IntegrityError):
        r.clients[10].masked_input(bad, r.inputs[10], r.rng)


def test_wrong_recipient(make_round):
    r = make_round(n=4)
    cts = r.to_masked_input()
    # the server routes to 10 the share that 12 encrypted for 11 (claims it came from 12)
    misrouted = dataclasses.replace(cts[10], ciphertexts={**cts[10].ciphertexts, 12: cts[11].ciphertexts[12]})
    with pytest.raises(IntegrityError):
        r.clients[10].masked_input(misrouted, r.inputs[10], r.rng)


def test_duplicate_client_id(make_round):
    r = make_round(n=4)
    adv = r.to_advertise()
    with pytest.raises(DuplicateClientError):
        r.server.advertise_stage(adv + [adv[0]])


def test_duplicate_public_key(make_round):
    r = make_round(n=4, identities=False)
    keys = r.to_share_keys()
    forged = dict(keys[10].keys)
    forged[12] = forged[11]
    with pytest.raises(DuplicateClientError):
        r.clients[10].share_keys(dataclasses.replace(keys[10], keys=forged))


def test_out_of_order_stage(make_round):
    r = make_round(n=4)
    keys = r.to_share_keys()
    with pytest.raises(StageOrderError):
        r.clients[10].consistency(dataclasses.replace(keys[10], stage="masked_input"))
    fresh = make_round(n=4)
    fresh.to_advertise()
    with pytest.raises(StageOrderError):
        fresh.server.masked_input_stage([])
    # a message for a later stage arriving early
    r2 = make_round(n=4)
    r2.to_advertise()
    from secure_agg.messages import ConsistencyRequest
    early = ConsistencyRequest(1, "run", 1, "masked_input", -1, survivors=(10, 11, 12, 13))
    with pytest.raises(StageOrderError):
        r2.clients[10].share_keys(early)


def test_replayed_and_cross_round_messages(make_round):
    r = make_round(n=4)
    keys = r.to_share_keys()
    r.clients[10].share_keys(keys[10])
    with pytest.raises(ReplayError):
        r.clients[10].share_keys(keys[10])  # same stage twice
    other = make_round(n=4, round_index=2)
    other_adv = other.to_advertise()
    fresh = make_round(n=4, round_index=1)
    fresh.to_advertise()
    with pytest.raises(ReplayError):
        fresh.server.advertise_stage(other_adv)  # messages from round 2 into round 1
    other_run = make_round(n=4, run_id="other")
    with pytest.raises(ReplayError):
        other_run.clients[10].advertise_keys(fresh.setup)


def test_stale_stage_message_is_replay(make_round):
    r = make_round(n=4)
    r.to_masked_input()
    with pytest.raises(ReplayError):
        r.clients[10].masked_input(r.keys[10], r.inputs[10], r.rng)  # an advertise_keys-stage message


def test_changed_survivor_list_between_stages(make_round):
    r = make_round(n=5)
    ureq = r.to_unmask()
    with pytest.raises((ConsistencyError, InvalidMessage)):
        r.clients[10].unmask(dataclasses.replace(ureq[10], survivors=(10, 11, 12, 13)))


def test_forged_consistency_signature(make_round):
    r = make_round(n=5)
    ureq = r.to_unmask()
    sigs = dict(ureq[10].signatures)
    sigs[11] = bytes(64)
    with pytest.raises(IntegrityError):
        r.clients[10].unmask(dataclasses.replace(ureq[10], signatures=sigs))


def test_server_threshold_abort(make_round):
    r = make_round(n=5)  # t = 3
    cts = r.to_masked_input()
    masked = [r.clients[c].masked_input(m, r.inputs[c], r.rng) for c, m in cts.items()][:2]
    with pytest.raises(ThresholdError):
        r.server.masked_input_stage(masked)


def test_bad_version_and_malformed(make_round):
    r = make_round(n=4)
    setup = r.server.setup()
    with pytest.raises(InvalidMessage):
        r.clients[10].advertise_keys(dataclasses.replace(setup, version=2))
    with pytest.raises(InvalidMessage):
        r.clients[11].advertise_keys(dataclasses.replace(setup, client_ids=(13, 12, 11, 10)))
    with pytest.raises(DuplicateClientError):
        r.clients[12].advertise_keys(dataclasses.replace(setup, client_ids=(10, 10, 12, 13)))
    with pytest.raises(InvalidMessage):
        r.clients[13].advertise_keys(dataclasses.replace(setup, levels=setup.levels * 2))  # would wrap
    with pytest.raises(InvalidMessage):
        r.clients[10].advertise_keys("not a message")
