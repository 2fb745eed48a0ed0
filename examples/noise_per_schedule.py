"""Which sampling schedule carries the least DP noise per unit of signal at a fixed number of example gradients?

For distributed DP-SGD at (ε, δ) = (10, 1e-5): rounds R and Poisson rate q with q·R = 30 (the same expected
number of example gradients as q = 1, 30 rounds). Prints the noise multiplier z calibrated for each schedule and
the noise relative to the expected batch, averaged over the rounds, (z/q)/√(R/30), as a ratio to q = 1:
under the general Poisson-subsampling RDP bound the discrete noise is accounted with (Zhu & Wang 2019, as
``dp.distributed``) and under the tight subsampled-Gaussian RDP of dp_accounting (continuous Gaussian, for
comparison only). Run: python examples/noise_per_schedule.py  (a few seconds)
"""

from __future__ import annotations

import math

import dp_accounting
from dp_accounting.rdp.rdp_privacy_accountant import RdpAccountant

from dp.distributed import ORDERS, calibrate_share_stddev

EPSILON, DELTA, BUDGET = 10.0, 1e-5, 30


def z_general(q: float, rounds: int) -> float:
    ref = 1e6     # unit-free: one share, one coordinate, τ = 0, so ε depends on σ/Δ2 only
    return calibrate_share_stddev(target_epsilon=EPSILON, target_delta=DELTA, honest_sites=1, l2_sensitivity=ref,
                                  dimension=1, sample_rate=q, steps=rounds) / ref


def z_gaussian(q: float, rounds: int) -> float:
    def eps(z: float) -> float:
        acc = RdpAccountant(list(ORDERS))
        event = dp_accounting.GaussianDpEvent(z)
        acc.compose(event if q >= 1 else dp_accounting.PoissonSampledDpEvent(q, event), rounds)
        return acc.get_epsilon(DELTA)

    lo, hi = 0.1, 100.0
    while hi / lo > 1.0001:
        mid = math.sqrt(lo * hi)
        lo, hi = (lo, mid) if eps(mid) <= EPSILON else (mid, hi)
    return hi


def main() -> None:
    schedules = [(1.0, 30), (0.5, 60), (0.25, 120), (0.1, 300)]
    base = {}
    print(f"ε = {EPSILON:g}, δ = {DELTA:g}, q·rounds = {BUDGET}")
    print(f"{'q':>5} {'rounds':>6} {'z general':>10} {'ratio':>6} {'z Gaussian':>11} {'ratio':>6}")
    for q, rounds in schedules:
        row = []
        for name, fn in (("general", z_general), ("gaussian", z_gaussian)):
            z = fn(q, rounds)
            rel = (z / q) / math.sqrt(rounds / BUDGET)
            base.setdefault(name, rel)
            row += [z, rel / base[name]]
        print(f"{q:>5g} {rounds:>6d} {row[0]:>10.3f} {row[1]:>6.2f} {row[2]:>11.3f} {row[3]:>6.2f}")


if __name__ == "__main__":
    main()
