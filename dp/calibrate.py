"""Noise calibration: the smallest noise multiplier σ whose ε stays within a target, and the default δ."""

from __future__ import annotations

import math
from typing import Iterable

from dp.accountant import KINDS, PrivacyAccountant, UnknownAccountant
from dp.events import GaussianEvent

_REL_TOL = 1e-3  # bisection stops when (hi - lo) <= _REL_TOL * hi
_SIGMA_MAX = 1e4
_COARSE_GRID = 1e-3


class CalibrationError(ValueError):
    """No σ ≤ 1e4 reaches the target ε (target too small for the requested steps/sample rate/prior events)."""


def default_delta(n_local: int) -> float:
    """δ = min(1e-5, 1 / (10·n)) for a unit-level dataset of ``n_local`` units: strictly below 1/n.

    δ ≥ 1/n would allow a mechanism that publishes one random record in the clear; 1/(10n) keeps a margin, and
    1e-5 caps it for small datasets so statements stay comparable with the literature.
    """
    if isinstance(n_local, bool) or not isinstance(n_local, int):
        raise TypeError(f"n_local must be an int, got {type(n_local).__name__}")
    if n_local <= 0:
        raise ValueError(f"n_local (number of protected units) must be >= 1, got {n_local}")
    return min(1e-5, 1.0 / (10.0 * n_local))


def _epsilon_with(sigma: float, *, prior: list[GaussianEvent], kind: str, sample_rate: float, steps: int,
                  delta: float, vdi: float | None = None) -> float:
    acc = PrivacyAccountant(kind=kind, value_discretization_interval=vdi)
    for e in prior:
        acc.add_event(e)
    acc.add_event(GaussianEvent(noise_multiplier=sigma, sample_rate=sample_rate, steps=steps))
    return acc.epsilon(delta=delta)


def calibrate_noise_multiplier(*, target_epsilon: float, target_delta: float, sample_rate: float, steps: int,
                               accountant: str = "pld", prior_events: Iterable[GaussianEvent] = ()) -> float:
    """Smallest σ (to relative 1e-3, always rounded *up*) with ε(prior_events + event(σ, q, steps)) ≤ target.

    ε is evaluated exactly as ``PrivacyAccountant(kind=accountant)`` with the prior events and then the new event
    added reports it, so the returned σ never overshoots the target under that accountant. Bisection on σ over
    a bracket found by doubling. Raises :class:`CalibrationError` if σ = 1e4 is not enough (e.g. the prior events
    already spend the budget). ``steps == 0`` or ``sample_rate == 0`` spends nothing: returns 0.0 if the priors fit.
    """
    if accountant not in KINDS:
        raise UnknownAccountant(f"accountant {accountant!r} is not supported (supported: {', '.join(KINDS)})")
    if not (isinstance(target_epsilon, (int, float)) and math.isfinite(target_epsilon) and target_epsilon > 0):
        raise ValueError(f"target_epsilon must be a finite number > 0, got {target_epsilon!r}")
    if not (isinstance(target_delta, (int, float)) and 0 < target_delta < 1):
        raise ValueError(f"target_delta must be in (0, 1), got {target_delta!r}")
    GaussianEvent(noise_multiplier=1.0, sample_rate=sample_rate, steps=steps)  # validates q and steps
    prior = list(prior_events)

    def eps(s: float, vdi: float | None = None) -> float:
        return _epsilon_with(s, prior=prior, kind=accountant, sample_rate=sample_rate, steps=steps,
                             delta=target_delta, vdi=vdi)

    if steps == 0 or sample_rate == 0.0:
        if eps(1.0) <= target_epsilon:
            return 0.0
        raise CalibrationError(f"prior events already exceed target_epsilon={target_epsilon}")
    # phase 1: fast bisection on a coarse PLD grid (1e-3) to locate σ within 1 %
    coarse = _COARSE_GRID if accountant != "rdp" else None
    lo, hi = 0.0, 1.0
    while eps(hi, coarse) > target_epsilon:
        lo, hi = hi, hi * 2.0
        if hi > _SIGMA_MAX:
            raise CalibrationError(f"no noise_multiplier <= {_SIGMA_MAX:g} reaches target_epsilon={target_epsilon} "
                                   f"at delta={target_delta} (q={sample_rate}, steps={steps}, "
                                   f"{len(prior)} prior events)")
    lo, hi = _bisect(eps, lo, hi, target_epsilon, _REL_TOL if coarse is None else 10 * _REL_TOL, coarse)
    if coarse is None:
        return hi
    # phase 2: the exact accountant (adaptive grid, what PrivacyAccountant reports) decides; invariant:
    # eps(hi) <= target, eps(lo) > target
    while eps(hi) > target_epsilon:
        lo, hi = hi, hi * 1.01
        if hi > _SIGMA_MAX:
            raise CalibrationError(f"no noise_multiplier <= {_SIGMA_MAX:g} reaches target_epsilon={target_epsilon}")
    lo = max(lo, hi * 0.98)
    if eps(lo) <= target_epsilon:
        lo = 0.0                        # rare: coarse grid was far too pessimistic; full bisection
    return _bisect(eps, lo, hi, target_epsilon, _REL_TOL)[1]


def _bisect(eps, lo: float, hi: float, target_epsilon: float, tol: float,
            grid: float | None = None) -> tuple[float, float]:
    """Narrow (lo, hi] to relative width `tol` keeping eps(hi) <= target < eps(lo); hi is the σ to use."""
    while hi - lo > tol * hi:
        mid = 0.5 * (lo + hi)
        if eps(mid, grid) <= target_epsilon:
            hi = mid
        else:
            lo = mid
    return lo, hi
