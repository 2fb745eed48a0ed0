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
    assert not {"b", "c_sk", "s_sk"} & set(c._s) and not c._s["held"]   # dropped once the round is over
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
    r.step(tamper=lambda reps: reps + [reps[0]])          # an identical copy (transport retry) is ignored
    r.run_until("masked_input")
    reps = r.replies()
    zero = np.zeros(r.dim, np.uint32)
    other = resign(r, dataclasses.replace(reps[0], masked=zero), "masked_input", r.server.full,
                   {"masked": masked_digest(zero), "dim": r.dim})
    r.inbox = r.server.advance(reps + [other])            # two different signed replies: the sender equivocates
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


# ================================================ Part B: issue 12 ===============================================
# F1: the server-chosen setup was unauthenticated; a victim accepted {victim, colluder} with t = 2 and a SecAgg+
# degree of 2 for n = 10. Now: site-pinned minimums, and a signed setup hash in every stage signature.
def test_f1_victim_refuses_two_party_round(make_round):
    r = make_round(n=5, policy=ProtocolPolicy())          # default: min_clients = 3
    setup = r.start()[10]
    two = dataclasses.replace(setup, client_ids=(10, 11), threshold=2, degree=1,
                              levels=make_quantizer(n_clients=2, clip_range=1.0).levels)
    with pytest.raises(PolicyViolation):
        r.sites[10].handle(two)


def test_f1_victim_refuses_weak_secagg_plus_degree(make_round):
    r = make_round(n=10, policy=ProtocolPolicy(max_colluders=2))
    setup = r.start()[10]
    assert setup.degree == 9
    with pytest.raises(PolicyViolation):
        r.sites[10].handle(dataclasses.replace(setup, degree=2))


def test_f1_foreign_roster_refused(make_round):
    r = make_round(n=4)
    setup = r.start()[10]
    with pytest.raises(PolicyViolation):
        r.sites[10].handle(dataclasses.replace(setup, roster_fingerprint="00" * 32))


def test_f1_split_setups_detected_before_any_secret(make_round):
    """A server shows site 10 a different (policy-compliant) setup than the others; the signed setup hash makes
    every other site reject 10's contribution before any key or share exists."""
    r = make_round(n=5)
    setups = r.start()
    other = dataclasses.replace(setups[10], threshold=5)
    commits = [r.sites[c].handle(other if c == 10 else setups[c]) for c in r.ids]
    from secure_agg.messages import CommitList, RevealList
    cl = CommitList(*_srv(r, "reveal"), ids=tuple(r.ids), commitments=tuple(m.commitment for m in commits),
                    signatures=tuple(m.signature for m in commits))
    reveals = [r.sites[c].handle(cl) for c in r.ids]
    rl = RevealList(*_srv(r, "advertise_keys"), ids=tuple(r.ids), nonces=tuple(m.nonce for m in reveals),
                    signatures=tuple(m.signature for m in reveals))
    for c in r.ids:   # commitments (and signatures) bind the setup hash: the other view's do not open
        with pytest.raises((IntegrityError, IncompleteRevealError)):
            r.sites[c].handle(rl)
        assert "s_sk" not in r.sites[c]._s
    # the honest server itself excludes the site whose commitment was signed over another setup
    r2 = make_round(n=5)
    r2.start()
    r2.inbox = {**r2.inbox, 10: dataclasses.replace(r2.inbox[10], threshold=5)}
    res = r2.finish()
    assert res.excluded == {10: "IntegrityError"}


def _srv(r, stage):
    from secure_agg.messages import SERVER, VERSION
    return (VERSION, r.run_id, r.round_index, stage, SERVER)


# F2: split survivor views with colluders. n = 10, t = 7, 4 colluding sites: the server shows view A (victim
# survived) to some honest sites and view B (victim dropped) to the others; colluders sign both.
def _split_view_attack(r, view_a, view_b, colluders, victim=10):
    from secure_agg.messages import UnmaskRequest
    r.run_until("masked_input")
    reps = r.replies()
    y_victim = next(m.masked for m in reps if m.sender == victim).copy()
    r.inbox = r.server.advance(reps)
    full = r.server.full
    everyone = tuple(r.ids)
    sur_a, sur_b = everyone, tuple(c for c in everyone if c != victim)
    sigs = {}
    for group, sur in ((view_a, sur_a), (view_b, sur_b)):
        for c in group:
            sigs[(c, sur)] = r.sites[c].handle(ConsistencyRequest(*_srv(r, "consistency"), survivors=sur)).signature
        for c in colluders:   # colluders sign both views
            sigs[(c, sur)] = signing.sign(r.idents[c], signed_payload(
                run_id=r.run_id, round_index=r.round_index, stage="consistency", sender=c, setup=full,
                body={"survivors": list(sur)}))
    b_sh, k_sh = {}, {}
    for group, sur, dropped in ((view_a, sur_a, ()), (view_b, sur_b, (victim,))):
        signers = tuple(sorted(set(group) | set(colluders)))
        req = UnmaskRequest(*_srv(r, "unmasking"), survivors=sur, dropped=dropped, signers=signers,
                            signer_ids=signers, signatures=tuple(sigs[(c, sur)] for c in signers))
        for c in group:
            out = r.sites[c].handle(req)          # raises when the view is not signed by >= t
            b_sh.update({share_x(c): s for v, s in zip(out.self_mask_ids, out.self_mask_shares) if v == victim})
            k_sh.update({share_x(c): s for v, s in zip(out.key_ids, out.key_shares) if v == victim})
    for c in colluders:
        b_sh[share_x(c)], k_sh[share_x(c)] = r.sites[c]._s["held"][victim]
    t = r.server.t
    b = shamir.reconstruct(b_sh, threshold=t)
    s_sk = x25519.private_from_bytes(shamir.reconstruct(k_sh, threshold=t))
    y = y_victim
    prg.apply_masks(y, [], [b])
    for v in r.ids:
        if v != victim:
            seed = hkdf.derive_key(x25519.agree(s_sk, r.server.s_pk[v]), label=hkdf.LABEL_PAIRWISE_MASK,
                                   run_id=r.run_id, round_index=r.round_index, a=victim, b=v)
            (prg.apply_masks(y, [], [seed]) if victim < v else prg.apply_masks(y, [seed], []))
    q = r.server.quantizer
    return y.astype(np.float64) * q.step - q.clip_range


def test_f2_split_views_recover_victim_below_the_colluder_bound(make_round):
    """The attack works at t = 7 (no site pins max_colluders) ..."""
    r = make_round(n=10, params=SecAggParams(mode="secagg", threshold_fraction=0.67))
    assert r.server.t == 7
    got = _split_view_attack(r, view_a=(10, 11, 12), view_b=(13, 14, 15), colluders=(16, 17, 18, 19))
    assert np.max(np.abs(got - r.inputs[10])) <= r.server.quantizer.step   # victim's input recovered


def test_f2_sites_pinning_max_colluders_refuse_t_below_bound(make_round):
    """... so sites pinning max_colluders = 4 refuse t = 7 = floor((10 + 4)/2) (one below the bound) ..."""
    r = make_round(n=10, params=SecAggParams(mode="secagg", threshold_fraction=0.67),
                   policy=ProtocolPolicy(max_colluders=4))
    setup = r.start()
    for c in r.ids:
        with pytest.raises(PolicyViolation):
            r.sites[c].handle(setup[c])


def test_f2_at_the_bound_the_split_view_fails(make_round):
    """... and accept t = 8 = floor((10 + 4)/2) + 1, where no split of the 6 honest sites gives both views t
    signatures: the view with fewer honest signers is refused by its honest sites."""
    params = SecAggParams(mode="secagg", threshold_fraction=0.75)
    r = make_round(n=10, params=params, policy=ProtocolPolicy(max_colluders=4))
    assert r.server.t == 8
    with pytest.raises(ThresholdError):
        _split_view_attack(r, view_a=(10, 11, 12, 13), view_b=(14, 15), colluders=(16, 17, 18, 19))
    ok = make_round(n=10, params=params, policy=ProtocolPolicy(max_colluders=4)).finish()
    assert ok.threshold == 8 and len(ok.survivors) == 10
    with pytest.raises(ValueError):
        validate_params(SecAggParams(threshold_fraction=0.67), 10, ProtocolPolicy(max_colluders=4))
    validate_params(SecAggParams(mode="secagg", threshold_fraction=0.75), 10, ProtocolPolicy(max_colluders=4))


# F3: the graph seed was SHA-256(run_id, round) (2,108 run ids ground a victim 15 colluding neighbours) and the
# default degree was weak. Now: commit-reveal randomness from all sites, degree from the Bell et al. bound.
def test_f3_graph_seed_is_not_a_function_of_run_id(make_round):
    lax = ProtocolPolicy(min_clients=2, max_dropout_fraction=0.0)
    params = SecAggParams(neighbours=4)
    seeds = set()
    for _ in range(3):
        r = make_round(n=12, params=params, policy=lax, run_id="same-run", round_index=7)
        res = r.finish()
        seeds.add(res.transcript["graph_randomness"])
        assert res.transcript["neighbours"] == 4 and len(res.transcript["graph_participants"]) == 12
    assert len(seeds) == 3        # nothing the operator writes (run id, round) fixes the graph


def test_f3_server_cannot_choose_reveals(make_round):
    lax = ProtocolPolicy(min_clients=2, max_dropout_fraction=0.0)
    params = SecAggParams(neighbours=4)
    r = make_round(n=12, params=params, policy=lax)
    rl = r.run_until("advertise_keys")[10]
    with pytest.raises(IncompleteRevealError):     # a reveal left out (to pick among graphs)
        r.sites[10].handle(dataclasses.replace(rl, ids=rl.ids[:-1], nonces=rl.nonces[:-1],
                                               signatures=rl.signatures[:-1]))
    r = make_round(n=12, params=params, policy=lax)
    rl = r.run_until("advertise_keys")[10]
    nonces = list(rl.nonces)
    nonces[3] = bytes(32)                          # a nonce replaced after the commitments were fixed
    with pytest.raises(IncompleteRevealError):
        r.sites[10].handle(dataclasses.replace(rl, nonces=tuple(nonces)))
    r = make_round(n=12, params=params, policy=lax)
    r.run_until("reveal")
    with pytest.raises(IncompleteRevealError):     # the server's own view: a missing reveal aborts a sparse round
        r.step(drop=(15,))


def test_f3_full_graph_drops_non_revealers(make_round):
    r = make_round(n=5)
    res = r.finish(drops={"reveal": (12,)})
    assert res.dropped["reveal"] == [12] and 12 not in res.survivors


def test_f3_required_degree_is_the_bound():
    for n, g, d in [(100, 0.0, 0.1), (1000, 0.0, 0.1), (1000, 0.05, 0.1), (300, 0.1, 0.05)]:
        t = max(int(0.67 * n) + 1, (n + int(np.ceil(g * n))) // 2 + 1)
        k = required_degree(n, colluder_fraction=g, dropout_fraction=d, failure_log2=40, threshold=t)
        assert k % 2 == 0 or k == n - 1
        if k < n - 1:
            assert degree_bound.failure_log2(n, k, colluder_fraction=g, dropout_fraction=d, threshold=t) <= -40
        if k > 2:
            assert degree_bound.failure_log2(n, k - 2, colluder_fraction=g, dropout_fraction=d, threshold=t) > -40
    assert required_degree(1000, colluder_fraction=0.0, dropout_fraction=0.1, failure_log2=40) == 30
    assert required_degree(1000, colluder_fraction=0.1, dropout_fraction=0.1, failure_log2=40, threshold=671) > \
        required_degree(1000, colluder_fraction=0.0, dropout_fraction=0.1, failure_log2=40, threshold=671)
    assert required_degree(50, colluder_fraction=0.3, dropout_fraction=0.1, failure_log2=40) >= 44  # ~ full graph
    k, rule = SecAggParams().degree_and_rule(100)
    assert "Bell et al. 2020" in rule and k >= required_degree(100, colluder_fraction=0.0, dropout_fraction=0.1,
                                                               threshold=68)


def test_f3_old_grinding_attack_needs_the_degree_the_bound_gives():
    """The issue's attack: 30 colluders among 100 sites; the old degree left a neighbourhood's local threshold
    within reach. A site pinning max_colluders = 30 now demands the bound's degree, and the bound makes a
    neighbourhood with >= 2·t_loc − (k+1) colluders a 2^-40 event."""
    policy = ProtocolPolicy(max_colluders=30)
    t = 68
    k = policy.required_degree(100, t)
    assert k > graph.effective_degree(100, 2 * int(np.ceil(1.5 * np.log2(100))))   # the old auto degree (22)
    with pytest.raises(PolicyViolation):
        policy.check(n=100, threshold=t, degree=22)


# F4: low-order X25519 public keys crashed the run with a raw ValueError.
LOW_ORDER = [bytes(32), b"\x01" + bytes(31),
             bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
             bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
             bytes.fromhex("ec" + "ff" * 30 + "7f"), bytes.fromhex("ed" + "ff" * 30 + "7f"),
             bytes.fromhex("ee" + "ff" * 30 + "7f")]


@pytest.mark.parametrize("point", LOW_ORDER)
def test_f4_low_order_points_are_named_errors(point):
    with pytest.raises(LowOrderKeyError):
        x25519.check_public(point)
    with pytest.raises(LowOrderKeyError):
        x25519.agree(x25519.generate(), point)


def test_f4_low_order_key_excludes_its_site_and_round_continues(make_round):
    r = make_round(n=6)
    r.run_until("advertise_keys")

    def evil(m):   # site 12 itself advertises (and signs) a low-order mask key
        return resign(r, dataclasses.replace(m, s_pk=LOW_ORDER[2]), "advertise_keys", r.server.full,
                      {"c_pk": m.c_pk.hex(), "s_pk": LOW_ORDER[2].hex()})
    r.step(tamper=lambda reps: replace_one(reps, 12, evil))
    res = r.finish()
    assert res.excluded == {12: "LowOrderKeyError"}
    assert res.survivors == (10, 11, 13, 14, 15)
    assert np.max(np.abs(res.sum - r.exact_sum(res.survivors))) <= res.transcript["sum_error_bound"]


def test_f4_site_rejects_relayed_low_order_key(make_round):
    r = make_round(n=4)
    r.run_until("share_keys")
    m = r.inbox[10]
    i = m.ids.index(11)
    s_pks = list(m.s_pks)
    s_pks[i] = LOW_ORDER[3]
    sig = signing.sign(r.idents[11], signed_payload(run_id="run", round_index=1, stage="advertise_keys", sender=11,
                                                    setup=r.server.full, body={"c_pk": m.c_pks[i].hex(),
                                                                               "s_pk": LOW_ORDER[3].hex()}))
    sigs = list(m.signatures)
    sigs[i] = sig
    with pytest.raises(LowOrderKeyError):
        r.sites[10].handle(dataclasses.replace(m, s_pks=tuple(s_pks), signatures=tuple(sigs)))


# F5: masked inputs and unmask responses were unauthenticated (a round-1 masked input was accepted in round 2).
def test_f5_masked_input_relabelled_into_another_round_is_excluded(make_round):
    r1 = make_round(n=5, round_index=1)
    r1.run_until("masked_input")
    old = {m.sender: m for m in r1.replies()}
    r2 = make_round(n=5, round_index=2, idents=r1.idents)
    r2.run_until("masked_input")

    def relabel(reps):
        return [dataclasses.replace(old[10], round_index=2) if m.sender == 10 else m for m in reps]
    r2.step(tamper=relabel)
    res = r2.finish()
    assert res.excluded == {10: "IntegrityError"} and 10 not in res.survivors
    assert res.reconstructed["mask_key"] == [10]
    assert np.max(np.abs(res.sum - r2.exact_sum(res.survivors))) <= res.transcript["sum_error_bound"]


def test_f5_altered_masked_input_and_unmask_shares_are_excluded(make_round):
    r = make_round(n=7)   # t = 5: two exclusions leave 5
    r.run_until("masked_input")
    r.step(tamper=lambda reps: replace_one(reps, 11, lambda m: dataclasses.replace(m, masked=m.masked + 1)))
    r.run_until("unmasking")
    bump = lambda s: bytes(s[:-1]) + bytes([s[-1] ^ 1])  # noqa: E731
    r.step(tamper=lambda reps: replace_one(reps, 13, lambda m: dataclasses.replace(
        m, self_mask_shares=(bump(m.self_mask_shares[0]),) + m.self_mask_shares[1:])))
    res = r.server.result()
    assert res.excluded == {11: "IntegrityError", 13: "IntegrityError"}
    assert 11 not in res.survivors and 13 in res.survivors
    assert np.max(np.abs(res.sum - r.exact_sum(res.survivors))) <= res.transcript["sum_error_bound"]


def test_f5_every_site_message_is_signed_and_bound(make_round):
    r = make_round(n=4)
    seen = set()
    r.start()
    while not r.server.done:
        reps = r.replies()
        for m in reps:
            assert len(m.signature) == 64
            seen.add(type(m).__name__)
        r.inbox = r.server.advance(reps)
    assert seen == {"Commit", "Reveal", "AdvertiseKeys", "EncryptedShares", "MaskedInput", "ConsistencyAck",
                    "UnmaskShares"}


# F6: Shamir reconstruction used only the first t shares: one bad share aborted the round or corrupted the sum.
def test_f6_crafted_share_is_identified_and_excluded(make_round):
    r = make_round(n=7)     # t = 5, all 7 hold shares of everyone
    r.run_until("unmasking")
    full = r.server.full

    def craft(m):            # site 10 (malicious) sends a wrong self-mask share of site 14, signed by itself
        i = m.self_mask_ids.index(14)
        y = (int.from_bytes(m.self_mask_shares[i], "big") + 12345) % shamir.PRIME
        sh = list(m.self_mask_shares)
        sh[i] = y.to_bytes(shamir.SHARE_BYTES, "big")
        body = {"self_mask_ids": list(m.self_mask_ids), "key_ids": list(m.key_ids),
                "shares": digest(shares_digest(m.self_mask_ids, sh).encode(),
                                 shares_digest(m.key_ids, m.key_shares).encode())}
        return resign(r, dataclasses.replace(m, self_mask_shares=tuple(sh)), "unmasking", full, body)
    r.step(tamper=lambda reps: replace_one(reps, 10, craft))
    res = r.server.result()
    assert res.excluded == {10: "BadShareError"}
    assert res.survivors == tuple(r.ids)    # its masked input still counts; only its shares were discarded
    assert np.max(np.abs(res.sum - r.exact_sum(res.survivors))) <= res.transcript["sum_error_bound"]
    assert issubclass(BadShareError, IntegrityError)


def test_f6_robust_reconstruction_uses_every_share():
    secret = bytes(range(32))
    shares = shamir.split(secret, threshold=3, xs=[1, 2, 3, 4, 5, 6])
    ok = lambda s: s == secret  # noqa: E731
    assert shamir_robust.reconstruct_robust(shares, threshold=3, verify=ok) == (secret, ())
    for bad_x in (1, 4, 6):   # first-t or later: each bad share is found
        bad = dict(shares)
        bad[bad_x] = (int.from_bytes(bad[bad_x], "big") ^ 1).to_bytes(shamir.SHARE_BYTES, "big")
        assert shamir_robust.reconstruct_robust(bad, threshold=3, verify=ok) == (secret, (bad_x,))
    two_bad = dict(shares)
    two_bad[1] = two_bad[2] = bytes(shamir.SHARE_BYTES)
    assert shamir_robust.reconstruct_robust(two_bad, threshold=3, verify=ok) == (secret, (1, 2))
    exact = {x: shares[x] for x in (1, 2, 3)}
    exact[2] = bytes(shamir.SHARE_BYTES)
    with pytest.raises(ValueError):            # t shares, one wrong: nothing verifies -> abort, never a wrong sum
        shamir_robust.reconstruct_robust(exact, threshold=3, verify=ok)


# F7: threshold_fraction = 1.0 passed config validation and failed only after the run directory existed.
def test_f7_params_and_validate_params_refuse_what_sites_refuse():
    for f in (1.0, 1.5, 0.49, float("nan"), True):
        with pytest.raises(ValueError):
            SecAggParams(threshold_fraction=f)
    policy = ProtocolPolicy()
    validate_params(SecAggParams(), 10, policy)
    with pytest.raises(ValueError):
        validate_params(SecAggParams(), 2, policy)                                   # n < min_clients
    with pytest.raises(ValueError):
        validate_params(SecAggParams(neighbours=2), 100, policy)                      # degree below the bound
    with pytest.raises(ValueError):
        validate_params(SecAggParams(threshold_fraction=0.5), 10, ProtocolPolicy(max_colluders=3))
    with pytest.raises(ValueError):
        validate_params(SecAggParams(modulus_bits=4), 10, policy)                    # 10 sites cannot fit in Z_16
    with pytest.raises(TypeError):
        validate_params({"threshold_fraction": 0.67}, 10, policy)


# F8: stochastic rounding used one stream seeded from the public run seed for all sites.
def test_f8_rounding_stream_is_per_site_from_the_os_csprng(make_round, monkeypatch):
    r = make_round(n=3)
    seeds = {c: r.sites[c]._s["rounding_seed"] for c in r.ids}
    assert len(set(seeds.values())) == 3
    again = make_round(n=3, idents=r.idents)
    assert not set(seeds.values()) & {again.sites[c]._s["rounding_seed"] for c in again.ids}
    calls = []
    import os
    real = os.urandom
    monkeypatch.setattr(os, "urandom", lambda k: calls.append(k) or real(k))
    r.site(10)
    assert 32 in calls                                  # the site's seed came from os.urandom
    monkeypatch.undo()
    inputs = {c: np.full(2000, 0.3333) for c in range(4)}
    p = SecAggParams(mode="secagg")
    a = secure_sum_in_process(inputs, params=p, run_id="r", round_index=0)
    b = secure_sum_in_process(inputs, params=p, run_id="r", round_index=0)
    assert not np.array_equal(a.sum, b.sum)             # same run seed, same inputs: different rounding
    a = secure_sum_in_process(inputs, params=p, run_id="r", round_index=0, rng=np.random.default_rng(1))
    b = secure_sum_in_process(inputs, params=p, run_id="r", round_index=0, rng=np.random.default_rng(1))
    np.testing.assert_array_equal(a.sum, b.sum)         # explicit reproducible-experiment mode only
    with pytest.raises(ValueError):
        r.site(10, rounding_seed=b"short")


def test_malformed_reply_fields_exclude_the_sender_not_crash_the_server(make_round):
    r = make_round(n=7)
    r.run_until("unmasking")
    r.step(tamper=lambda reps: replace_one(reps, 11, lambda m: dataclasses.replace(
        m, self_mask_shares=(10 ** 12,) + m.self_mask_shares[1:])))       # bytes(10**12) would exhaust memory
    res = r.server.result()
    assert res.excluded == {11: "InvalidMessage"}
    r = make_round(n=5)
    r.run_until("share_keys")
    r.step(tamper=lambda reps: replace_one(reps, 12, lambda m: dataclasses.replace(m, receivers=None)))
    assert r.finish().excluded == {12: "InvalidMessage"}
