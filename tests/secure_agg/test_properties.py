"""Hypothesis properties: masks cancel for every dropout set with >= t survivors; fewer -> abort."""

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings, strategies as st

from secure_agg import ProtocolAbort, ProtocolPolicy, SecAggParams, ThresholdError, secure_sum_in_process
from secure_agg.session import DROPOUT_STAGES

from tests.secure_agg.test_session import expected_sum


@st.composite
def scenario(draw, max_n=11):
    n = draw(st.integers(2, max_n))
    frac = draw(st.sampled_from([0.5, 0.6, 0.67, 0.75, 0.9]))
    t = int(np.floor(frac * n)) + 1
    ids = sorted(draw(st.sets(st.integers(0, 10_000), min_size=n, max_size=n)))
    dim = draw(st.integers(1, 12))
    budget = n - t + draw(st.sampled_from([0, 0, 0, 1, 2]))  # mostly feasible, sometimes below t
    drops = {s: [] for s in DROPOUT_STAGES}
    pool = list(ids)
    for s in DROPOUT_STAGES:
        k = min(budget, len(pool), draw(st.integers(0, 2)))
        chosen = draw(st.permutations(pool))[:k] if k else []
        drops[s] = sorted(chosen)
        budget -= k
        pool = [c for c in pool if c not in chosen]
    return n, frac, ids, dim, drops


def _run(n, frac, ids, dim, drops, mode, seed, neighbours=None):
    rng = np.random.default_rng(seed)
    inputs = {c: rng.uniform(-2, 2, dim) for c in ids}
    params = SecAggParams(mode=mode, threshold_fraction=frac, clip_range=1.5, neighbours=neighbours)
    t = params.threshold(n)
    alive, ok = n, True
    for s in DROPOUT_STAGES:
        alive -= len(drops[s])
        ok &= alive >= t
    return inputs, params, t, ok


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sc=scenario(), seed=st.integers(0, 2**32 - 1))
def test_full_graph_exact_iff_enough_survivors(sc, seed):
    n, frac, ids, dim, drops = sc
    inputs, params, t, ok = _run(n, frac, ids, dim, drops, "secagg", seed)
    if 2 * t <= n or t < 2:
        with pytest.raises(ValueError):
            secure_sum_in_process(inputs, params=params, run_id="p", round_index=1, rng=np.random.default_rng(seed))
        return
    event("abort" if not ok else "exact")
    if not ok:
        with pytest.raises(ThresholdError):
            secure_sum_in_process(inputs, params=params, run_id="p", round_index=1,
                                  rng=np.random.default_rng(seed), dropouts=drops)
        return
    res = secure_sum_in_process(inputs, params=params, run_id="p", round_index=1, rng=np.random.default_rng(seed),
                                dropouts=drops)
    want, survivors, _ = expected_sum(inputs, params, drops, seed)
    assert list(res.survivors) == survivors and res.threshold == t
    np.testing.assert_array_equal(res.sum, want)
    gone_before_mask = set(drops["advertise_keys"]) | set(drops["share_keys"])
    assert res.reconstructed["mask_key"] == sorted(set(drops["masked_input"]))
    assert not gone_before_mask & set(res.survivors)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(14, 30), k=st.sampled_from([4, 6, 8]), seed=st.integers(0, 2**32 - 1), data=st.data())
def test_sparse_graph_exact_or_abort_never_wrong(n, k, seed, data):
    ids = list(range(n))
    drops = {s: [] for s in DROPOUT_STAGES}
    pool = list(ids)
    for s in DROPOUT_STAGES:
        drops[s] = data.draw(st.lists(st.sampled_from(pool), max_size=1, unique=True))
        pool = [c for c in pool if c not in drops[s]]
    inputs, params, t, ok = _run(n, 0.67, ids, 5, drops, "secagg+", seed, neighbours=k)
    lax = ProtocolPolicy(min_clients=2, max_dropout_fraction=0.0)   # no colluders, no dropouts: any degree passes
    try:
        res = secure_sum_in_process(inputs, params=params, run_id="p", round_index=1,
                                    rng=np.random.default_rng(seed), dropouts=drops, policy=lax)
    except ProtocolAbort:
        event("abort")
        return  # a neighbourhood (or the whole round) fell below its threshold: nothing revealed
    assert ok
    event("exact")
    want, survivors, _ = expected_sum(inputs, params, drops, seed)
    assert list(res.survivors) == survivors
    np.testing.assert_array_equal(res.sum, want)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(5, 9), data=st.data())
def test_bad_replies_exclude_exactly_their_senders_and_the_sum_stays_exact(n, data):
    """Any set of corrupted replies (signature broken) at any stages: the round aborts (ProtocolAbort) or returns
    the exact sum of the survivors, and the excluded sites are exactly the senders of corrupted replies."""
    import dataclasses

    from secure_agg.messages import STAGES
    from tests.secure_agg.conftest import Round
    r = Round(n=n, dim=6)
    bad = {}
    for c in r.ids:
        stage = data.draw(st.sampled_from((None, None) + STAGES))
        if stage is not None:
            bad[c] = stage
    r.start()
    try:
        while not r.server.done:
            stage = r.server.stage
            reps = [dataclasses.replace(m, signature=bytes(64)) if bad.get(m.sender) == stage else m
                    for m in r.replies()]
            r.inbox = r.server.advance(reps)
    except ProtocolAbort:
        event("abort")
        return
    event("exact")
    res = r.server.result()
    assert set(res.excluded) == set(bad) and all(v == "IntegrityError" for v in res.excluded.values())
    before_mask = {"commit", "reveal", "advertise_keys", "share_keys", "masked_input"}
    assert set(res.survivors) == {c for c in r.ids if bad.get(c) not in before_mask}
    q = r.server.quantizer
    assert np.max(np.abs(res.sum - r.exact_sum(res.survivors))) <= q.error_bound(len(res.survivors))
