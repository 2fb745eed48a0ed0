"""Empirical audit statistics: MIA metrics, the Steinke–Nasr–Jagielski bound, consistency check."""

import math

import numpy as np
import pytest
from scipy import stats

from audits.empirical import (EmpiricalBoundViolation, assert_consistent, best_lower_bound, canary_inclusion,
                              epsilon_lower_bound, membership_inference, p_value)


def test_mia_perfect_random_and_hand_computed():
    rng = np.random.default_rng(0)
    perfect = membership_inference([5.0, 6, 7, 8], [1.0, 2, 3, 4], rng=rng, n_bootstrap=50)
    assert perfect["auc"] == 1.0 and perfect["tpr_at_1pct_fpr"] == 1.0
    # hand-computed: pairs (m > n) = 3 of 4 for members {2, 4} vs non-members {1, 3}
    small = membership_inference([2.0, 4.0], [1.0, 3.0], rng=rng, n_bootstrap=20)
    assert small["auc"] == pytest.approx(0.75)
    assert small["tpr_at_1pct_fpr"] == 0.5     # threshold above the largest non-member (3): only 4 passes
    flipped = membership_inference([2.0, 4.0], [1.0, 3.0], higher_is_member=False, rng=rng, n_bootstrap=20)
    assert flipped["auc"] == pytest.approx(0.25)
    same = rng.normal(size=4000)
    chance = membership_inference(same[:2000], same[2000:], rng=rng, n_bootstrap=200)
    assert chance["auc_ci"][0] < 0.5 < chance["auc_ci"][1]
    assert chance["tpr_at_1pct_fpr"] < 0.03 and chance["min_resolvable_fpr"] == 1 / 2000


def test_mia_rejects_bad_input():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError):
        membership_inference([1.0], [2.0, 3.0], rng=rng)
    with pytest.raises(ValueError):
        membership_inference([1.0, float("nan")], [2.0, 3.0], rng=rng)


def test_p_value_delta_zero_is_binomial_tail():
    q = 1 / (1 + math.exp(-1.0))
    assert p_value(m=100, r=20, v=15, epsilon=1.0, delta=0.0) == pytest.approx(stats.binom.sf(14, 20, q))
    # δ only adds probability mass
    assert p_value(m=100, r=20, v=15, epsilon=1.0, delta=1e-3) > p_value(m=100, r=20, v=15, epsilon=1.0, delta=0)


def test_lower_bound_is_valid_for_a_truly_eps_dp_guesser():
    """Randomised response with ε=1 per canary: at 95 % the bound exceeds 1 in at most ~5 % of trials."""
    rng = np.random.default_rng(1)
    eps, m, k = 1.0, 200, 50
    exceed = 0
    for _ in range(200):
        inc = canary_inclusion(m, rng=rng)
        keep = rng.random(m) < math.exp(eps) / (1 + math.exp(eps))     # ε-DP randomised response per canary
        scores = np.where(keep, inc, -inc) + 1e-3 * rng.normal(size=m)
        b = best_lower_bound(scores, inc, delta=0.0, confidence=0.95, k_grid=(k,))
        exceed += b["epsilon_lower_bound"] > eps
    assert exceed <= 20


def test_lower_bound_detects_a_non_private_guesser_and_ceiling():
    rng = np.random.default_rng(2)
    inc = canary_inclusion(256, rng=rng)
    b = best_lower_bound(inc.astype(float) + 1e-3 * rng.normal(size=256), inc, delta=1e-5, k_grid=(8, 16, 32, 64))
    assert b["epsilon_lower_bound"] > 2.0
    assert b["epsilon_lower_bound"] == pytest.approx(b["max_certifiable_epsilon"])
    assert b["bonferroni_tests"] == 4 and len(b["per_k"]) == 4
    noise = best_lower_bound(rng.normal(size=256), inc, delta=1e-5)
    assert noise["epsilon_lower_bound"] < 1.0


def test_epsilon_lower_bound_monotone_in_correct_guesses():
    bounds = [epsilon_lower_bound(m=256, r=64, v=v, delta=1e-5, significance=0.05) for v in range(32, 65, 4)]
    assert bounds == sorted(bounds) and bounds[0] == 0.0 and bounds[-1] > 2


def test_assert_consistent():
    assert_consistent(1.0, 2.0)
    with pytest.raises(EmpiricalBoundViolation, match="exceeds"):
        assert_consistent(2.5, 2.0)


def test_canary_inclusion_validates():
    with pytest.raises(ValueError):
        canary_inclusion(1, rng=np.random.default_rng(0))
    s = canary_inclusion(10000, rng=np.random.default_rng(0))
    assert set(np.unique(s)) == {-1, 1} and abs(s.mean()) < 0.05


def test_reported_counts_are_real_when_no_bound_is_positive():
    rng = np.random.default_rng(3)
    inc = canary_inclusion(64, rng=rng)
    b = best_lower_bound(rng.normal(size=64), inc, delta=1e-5, k_grid=(8, 16))
    row = next(r for r in b["per_k"] if r["k"] == b["k"])
    assert b["correct"] == row["correct"] and b["guesses"] == 2 * b["k"]
