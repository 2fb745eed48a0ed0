"""The distributed discrete Gaussian RDP bound (dp/distributed.py) against dp_accounting and exact divergences."""

import math

import numpy as np
import pytest

from dp.distributed import (ORDERS, DistributedAccountant, DistributedGaussianEvent, calibrate_share_stddev,
                            clip_probability, ddg_rdp, epsilon_from_rdp, rounding_l2_bound, tau)


def event(**kw):
    base = dict(share_stddev=1e6, honest_sites=1, l2_sensitivity=1e6, l1_sensitivity=1e6, dimension=1,
                sample_rate=1.0, steps=1)
    base.update(kw)
    return DistributedGaussianEvent(**base)


def test_continuous_gaussian_limit():
    """σ ≫ 1 step: τ underflows and the bound is the Gaussian RDP with z = √n·σ/Δ2 (dp_accounting, same orders)."""
    import dp_accounting as dpa
    from dp_accounting.rdp import RdpAccountant

    for z, steps, n in [(1.0, 1, 1), (2.5, 15, 7), (0.8, 40, 3)]:
        ev = event(share_stddev=z * 1e6 / math.sqrt(n), honest_sites=n, l2_sensitivity=1e6,
                   l1_sensitivity=1e6 * 300, dimension=90_000, steps=steps)
        assert tau(ev.share_stddev, n) == 0.0
        acc = RdpAccountant(orders=list(ORDERS))
        acc.compose(dpa.GaussianDpEvent(z), steps)
        ref = acc.get_epsilon(1e-5)
        ours = DistributedAccountant()
        ours.add_event(ev)
        assert ours.epsilon(delta=1e-5) == pytest.approx(ref, rel=1e-9)


def test_subsampled_is_conservative_against_the_tight_gaussian_rdp():
    """Zhu–Wang's general subsampling bound is never below Mironov's exact subsampled-Gaussian RDP, and not far."""
    from dp_accounting.rdp.rdp_privacy_accountant import _compute_rdp_poisson_subsampled_gaussian as mironov

    for z, q in [(1.0, 0.01), (1.5, 0.1), (0.9, 0.5)]:
        ours = event(share_stddev=z * 1e6, sample_rate=q).rdp()
        ref = np.asarray(mironov(q, z, list(ORDERS)))
        assert np.all(ours >= ref * (1 - 1e-9))
        e_ours, e_ref = epsilon_from_rdp(ours * 100, delta=1e-5), epsilon_from_rdp(ref * 100, delta=1e-5)
        assert e_ref <= e_ours <= 1.5 * e_ref


@pytest.mark.parametrize("sigma", [0.8, 2.0, 5.0])
def test_scalar_discrete_gaussian_against_dp_accounting_pld(sigma):
    """n = 1, d = 1, Δ = 1: our RDP-based ε upper-bounds dp_accounting's (tight) discrete-Gaussian PLD ε."""
    from dp_accounting.pld import privacy_loss_distribution as pld

    steps = 10
    ref = pld.from_discrete_gaussian_mechanism(sigma, sensitivity=1, value_discretization_interval=1e-4)
    ref = ref.self_compose(steps).get_epsilon_for_delta(1e-5)
    acc = DistributedAccountant()
    acc.add_event(event(share_stddev=sigma, l2_sensitivity=1, l1_sensitivity=1, steps=steps))
    ours = acc.epsilon(delta=1e-5)
    assert ref <= ours <= 1.6 * ref + 0.05, (ours, ref)


def _log_conv(a, b):
    """log of the convolution of two pmfs given as logs (exact in the log domain: no underflow in the tails)."""
    out = np.full(len(a) + len(b) - 1, -np.inf)
    for i, la in enumerate(a):
        out[i:i + len(b)] = np.logaddexp(out[i:i + len(b)], la + b)
    return out


def _renyi(lp, lq, alpha):
    return float(np.logaddexp.reduce(alpha * lp + (1 - alpha) * lq)) / (alpha - 1)


@pytest.mark.parametrize("sigma,n", [(0.5, 2), (0.6, 4), (1.0, 3)])
def test_bound_covers_the_exact_sum_of_shares(sigma, n):
    """d = 1: the exact Rényi divergence of (sum of n discrete Gaussians) vs the same shifted by Δ is below the
    bound at every order tested — with τ > 0 (small σ), where the sum is not itself a discrete Gaussian."""
    x = np.arange(-80, 81, dtype=np.float64)
    one = -x * x / (2 * sigma ** 2)
    one -= np.logaddexp.reduce(one)
    s = one
    for _ in range(n - 1):
        s = _log_conv(s, one)
    t = tau(sigma, n)
    assert t > 0
    for shift in (1, 2):
        a_, b_ = s[shift:], s[:-shift]          # P(x) and P(x − shift) on the common support
        for a in (2, 4, 8):
            exact = max(_renyi(a_, b_, a), _renyi(b_, a_, a))
            root = math.sqrt(n) * sigma
            bound = ddg_rdp(a, l2_scale=shift / root, l1_scale=shift / root, tau_=t, dimension=1)
            assert exact <= bound + 1e-12, (a, shift, exact, bound)
            gauss = a * shift ** 2 / (2 * n * sigma ** 2)
            assert exact <= gauss * 1.5   # and the test is not vacuous: the exact value is near the Gaussian's


def test_tau_only_adds_privacy_loss():
    small = event(share_stddev=0.6, honest_sites=5, l2_sensitivity=2, l1_sensitivity=2)
    no_tau = event(share_stddev=0.6, honest_sites=1, l2_sensitivity=2 / math.sqrt(5), l1_sensitivity=2)
    assert np.all(small.rdp() >= no_tau.rdp())


def test_calibration_never_overshoots():
    kw = dict(target_delta=1e-5, honest_sites=7, l2_sensitivity=rounding_l2_bound(8.6e7, 164_000),
              dimension=164_000, sample_rate=1.0, steps=15)
    s = calibrate_share_stddev(target_epsilon=10.0, **kw)
    acc = DistributedAccountant()
    for _ in range(15):
        acc.add_event(DistributedGaussianEvent(share_stddev=s, honest_sites=7, l2_sensitivity=kw["l2_sensitivity"],
                                               l1_sensitivity=kw["l2_sensitivity"] * math.sqrt(164_000),
                                               dimension=164_000, sample_rate=1.0, steps=1))
    eps = acc.epsilon(delta=1e-5)
    assert 9.98 <= eps <= 10.0


def test_event_round_trip_and_validation():
    ev = event(honest_sites=3, sample_rate=0.5, steps=2)
    assert DistributedGaussianEvent.from_payload(ev.to_payload()) == ev
    with pytest.raises(ValueError):
        event(honest_sites=0)
    with pytest.raises(ValueError):
        event(share_stddev=0.1)


def test_clip_probability():
    assert clip_probability(share_stddev=1.0, headroom=0, dimension=1, sites=1) == 1.0
    assert clip_probability(share_stddev=1.0, headroom=10, dimension=10**5, sites=10) == pytest.approx(
        2e6 * math.exp(-50))
    # a direct count: the tail of the exact pmf beyond ±h is below the bound used
    from dp.discrete_noise import discrete_gaussian_pmf
    h = 3
    tail = 2 * discrete_gaussian_pmf(1.0, np.arange(h, 60)).sum()
    assert tail <= clip_probability(share_stddev=1.0, headroom=h, dimension=1, sites=1)


def test_full_batches_carry_the_least_noise_per_signal_at_a_fixed_example_budget():
    """The README's reason for q = 1 in distributed DP-SGD (examples/noise_per_schedule.py): at ε = 10 and the same
    expected number of example gradients, q = 0.5 over twice the rounds needs about 2× the relative noise under the
    general subsampling bound, and still more (≈ 1.07×) under the tight continuous-Gaussian bound."""
    import runpy
    from pathlib import Path

    mod = runpy.run_path(str(Path(__file__).resolve().parents[2] / "examples" / "noise_per_schedule.py"))

    def rel(fn, q, rounds):
        return (fn(q, rounds) / q) / math.sqrt(rounds / 30)

    general = rel(mod["z_general"], 0.5, 60) / rel(mod["z_general"], 1.0, 30)
    gaussian = rel(mod["z_gaussian"], 0.5, 60) / rel(mod["z_gaussian"], 1.0, 30)
    assert general == pytest.approx(2.0, rel=0.02)
    assert 1.03 < gaussian < 1.12
