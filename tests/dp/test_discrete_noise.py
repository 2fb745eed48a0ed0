"""The exact discrete Gaussian sampler against its exact distribution (dp/discrete_noise.py)."""

import hashlib
import math
from fractions import Fraction

import numpy as np
import pytest
from scipy import stats

from dp.discrete_noise import (UniformInts, bernoulli_exp_neg, discrete_gaussian_pmf, discrete_gaussian_variance,
                               sample_discrete_gaussian, sample_discrete_gaussian_fast, tm_for)


def seeded(label: str):
    """A deterministic byte source (SHAKE-256 stream) so that these statistical tests cannot flake."""
    state = {"i": 0}

    def source(n: int) -> bytes:
        state["i"] += 1
        return hashlib.shake_256(f"{label}/{state['i']}".encode()).digest(n)
    return source


@pytest.mark.parametrize("sigma_sq", [Fraction(1, 2), 2, Fraction(81, 4), 50.0])
def test_chi_square_against_exact_pmf(sigma_sq):
    n = 40_000
    x = sample_discrete_gaussian(sigma_sq, n, source=seeded(f"chi/{sigma_sq}"))
    s = math.sqrt(float(sigma_sq))
    edge = max(1, int(3 * s))                     # bins -edge..edge, tails lumped into the outer bins
    support = np.arange(-edge, edge + 1)
    p = discrete_gaussian_pmf(sigma_sq, support)
    p[0] += 0.5 * (1 - p.sum())
    p[-1] = 1 - p[:-1].sum()
    counts = np.bincount(np.clip(x, -edge, edge) + edge, minlength=len(support))
    chi2, pval = stats.chisquare(counts, n * p)
    assert pval > 1e-4, (chi2, pval)


def test_sampler_rejects_a_wrong_pmf():
    """The same chi-square test fails for a sampler with the wrong σ² (the test can fail)."""
    n = 40_000
    x = sample_discrete_gaussian(2.4, n, source=seeded("wrong"))
    support = np.arange(-4, 5)
    p = discrete_gaussian_pmf(2, support)
    p[0] += 0.5 * (1 - p.sum())
    p[-1] = 1 - p[:-1].sum()
    counts = np.bincount(np.clip(x, -4, 4) + 4, minlength=len(support))
    assert stats.chisquare(counts, n * p)[1] < 1e-6


@pytest.mark.parametrize("sigma_sq", [2, 1e6, 1e14])
def test_moments(sigma_sq):
    n = 30_000
    x = sample_discrete_gaussian(sigma_sq, n, source=seeded(f"mom/{sigma_sq}")).astype(np.float64)
    var = discrete_gaussian_variance(sigma_sq)
    assert abs(x.mean()) < 5 * math.sqrt(var / n)
    # the sample variance of n draws has relative std sqrt(2/n) ~ 0.8 %
    assert abs(x.var() / var - 1) < 5 * math.sqrt(2 / n)


def test_sum_of_shares_has_the_accounted_variance():
    """n_min shares of variance v: the sum's variance is n_min·v (what the accounting assumes)."""
    shares, per_share, n = 7, 1e6, 4_000
    src = seeded("shares")
    total = sum(sample_discrete_gaussian(per_share, n, source=src).astype(np.float64) for _ in range(shares))
    assert abs(total.var() / (shares * per_share) - 1) < 5 * math.sqrt(2 / n)


def test_bernoulli_exp_exact_rates():
    rng = UniformInts(seeded("bern"))
    for num, den in [(0, 1), (1, 3), (1, 1), (7, 2)]:
        k = sum(bernoulli_exp_neg(num, den, rng) for _ in range(20_000))
        p = math.exp(-num / den)
        assert abs(k / 20_000 - p) < 5 * math.sqrt(p * (1 - p) / 20_000) + 1e-12


def test_default_source_is_the_os_csprng(monkeypatch):
    calls = []
    import os

    real = os.urandom
    monkeypatch.setattr(os, "urandom", lambda n: calls.append(n) or real(n))
    sample_discrete_gaussian(4, 10)
    assert calls


def test_bad_arguments():
    with pytest.raises(ValueError):
        sample_discrete_gaussian(0, 3)
    with pytest.raises(TypeError):
        sample_discrete_gaussian("1", 3)
    with pytest.raises(ValueError):
        sample_discrete_gaussian(1, -1)


def _chi_square_pvalue(x, sigma_sq):
    s = math.sqrt(float(sigma_sq))
    edge = max(1, int(3 * s))
    support = np.arange(-edge, edge + 1)
    p = discrete_gaussian_pmf(sigma_sq, support)
    p[0] += 0.5 * (1 - p.sum())
    p[-1] = 1 - p[:-1].sum()
    counts = np.bincount(np.clip(x, -edge, edge) + edge, minlength=len(support))
    return stats.chisquare(counts, len(x) * p)[1]


@pytest.mark.parametrize("t,m", [(1, 1), (1, 3), (4, 5), (7, 8), (3, 20)])
def test_fast_sampler_chi_square(t, m):
    """The vectorized sampler draws N_Z(0, t·m) exactly, for any Laplace scale t (including t far from σ)."""
    x = sample_discrete_gaussian_fast(t, m, 60_000, source=seeded(f"fast/{t}/{m}"))
    assert _chi_square_pvalue(x, t * m) > 1e-4
    assert _chi_square_pvalue(x, t * m * 1.2) < 1e-6       # and the test can fail


@pytest.mark.parametrize("sigma_sq", [1e6, 2.5e13, 1e15])
def test_fast_sampler_moments_at_share_scale(sigma_sq):
    t, m = tm_for(sigma_sq)
    assert t * m >= sigma_sq and t * m < sigma_sq * (1 + 1e-6)
    n = 100_000
    x = sample_discrete_gaussian_fast(t, m, n, source=seeded(f"fastmom/{sigma_sq}")).astype(np.float64)
    var = discrete_gaussian_variance(t * m)
    assert abs(x.mean()) < 5 * math.sqrt(var / n)
    assert abs(x.var() / var - 1) < 5 * math.sqrt(2 / n)
    k = np.abs(x) / math.sqrt(var)                          # tails as a Gaussian's: P(|X| > 3σ) ≈ 0.0027
    assert abs(np.mean(k > 3) - 0.0027) < 5 * math.sqrt(0.0027 / n)


def test_fast_sampler_rejects_out_of_range():
    with pytest.raises(ValueError):
        sample_discrete_gaussian_fast(1 << 28, 1 << 28, 3)
    with pytest.raises(ValueError):
        sample_discrete_gaussian_fast(0, 1, 3)
