"""Budget enforcement (fail closed, before the round runs) and validation of DP arguments at the boundary."""

from __future__ import annotations

import math
from typing import Any

from dp.accountant import PrivacyAccountant
from dp.events import GaussianEvent


class BudgetExceeded(RuntimeError):
    """Running the next round would push ε above the configured cap; the round must not run."""

    def __init__(self, message: str, *, projected_epsilon: float | None = None,
                 max_epsilon: float | None = None) -> None:
        super().__init__(message)
        self.projected_epsilon = projected_epsilon
        self.max_epsilon = max_epsilon


def check_budget(accountant: PrivacyAccountant, event: GaussianEvent, *, delta: float,
                 max_epsilon: float) -> dict[str, Any]:
    """Project ε(δ) with ``event`` added (accountant unchanged) and compare with ``max_epsilon``.

    Returns ``{"projected_epsilon", "max_epsilon", "allowed", "delta", "accountant"}`` (JSON-able; ledger record).
    Callers that must fail closed use :func:`enforce_budget`, which raises :class:`BudgetExceeded`.
    """
    if not (isinstance(max_epsilon, (int, float)) and max_epsilon > 0):
        raise ValueError(f"max_epsilon must be > 0, got {max_epsilon!r}")
    proj = accountant.project_epsilon(event, delta=delta)
    return {"projected_epsilon": proj, "max_epsilon": float(max_epsilon), "allowed": bool(proj <= max_epsilon),
            "delta": float(delta), "accountant": accountant.kind}


def enforce_budget(accountant: PrivacyAccountant, event: GaussianEvent, *, delta: float,
                   max_epsilon: float) -> dict[str, Any]:
    """:func:`check_budget`, raising :class:`BudgetExceeded` when the round is not allowed."""
    res = check_budget(accountant, event, delta=delta, max_epsilon=max_epsilon)
    if not res["allowed"]:
        raise BudgetExceeded(
            f"privacy budget exceeded: the next round would bring epsilon to {res['projected_epsilon']:.4g} "
            f"> max_epsilon={max_epsilon:g} at delta={delta:g} ({accountant.kind} accountant); round refused",
            projected_epsilon=res["projected_epsilon"], max_epsilon=float(max_epsilon))
    return res


def _num(name: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f"{name} must be a real number, got {type(v).__name__}")
    if math.isnan(v):
        raise ValueError(f"{name} must not be NaN")
    return float(v)


def validate_dp_args(*, target_epsilon: float | None, target_delta: float, n_local: int,
                     noise_multiplier: float | None, max_grad_norm: float, max_epsilon: float | None,
                     one_round_event: GaussianEvent | None = None, allow_large_delta: bool = False,
                     accountant: str = "pld") -> None:
    """Raise ``ValueError`` (one clear message) for unsafe or meaningless DP arguments; ``None`` = not used.

    Checks: ε target > 0; δ in (0, 1); δ < 1/n_local unless ``allow_large_delta``; σ ≥ 0; clip norm C > 0;
    cap > 0 and not below what ``one_round_event`` alone costs (the first round would already be refused).
    """
    if isinstance(n_local, bool) or not isinstance(n_local, int):
        raise TypeError(f"n_local must be an int, got {type(n_local).__name__}")
    if n_local < 1:
        raise ValueError(f"n_local (number of protected units) must be >= 1, got {n_local}")
    if target_epsilon is not None:
        te = _num("target_epsilon", target_epsilon)
        if not te > 0:
            raise ValueError(f"target_epsilon must be > 0, got {te}")
    td = _num("target_delta", target_delta)
    if not 0 < td < 1:
        raise ValueError(f"target_delta must be in (0, 1), got {td}")
    if td >= 1.0 / n_local and not allow_large_delta:
        raise ValueError(f"target_delta={td:g} >= 1/n_local = 1/{n_local}: such a delta permits leaking a whole "
                         f"record; use delta < 1/n (default min(1e-5, 1/(10n))) or pass allow_large_delta=True")
    if noise_multiplier is not None:
        nm = _num("noise_multiplier", noise_multiplier)
        if nm < 0 or not math.isfinite(nm):
            raise ValueError(f"noise_multiplier (σ = noise std / clip norm) must be finite and >= 0, got {nm}")
    c = _num("max_grad_norm", max_grad_norm)
    if not (c > 0 and math.isfinite(c)):
        raise ValueError(f"max_grad_norm (L2 clip norm) must be finite and > 0, got {c}")
    if max_epsilon is not None:
        me = _num("max_epsilon", max_epsilon)
        if not me > 0:
            raise ValueError(f"max_epsilon must be > 0, got {me}")
        if one_round_event is not None:
            one = PrivacyAccountant(kind=accountant).project_epsilon(one_round_event, delta=td)
            if one > me:
                raise ValueError(f"max_epsilon={me:g} is below what a single round costs (epsilon={one:.4g} at "
                                 f"delta={td:g}): no round could ever run; raise the cap or the noise")
