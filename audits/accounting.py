"""ε recomputed from typed DP events with dp_accounting's own accountants — never through the project's ``dp/``.

An independent check must not call the code it checks: ``dp/`` computes the ε the run reports, this module
recomputes it from the events in the signed ledger (or a site's receipt) with the reference library directly.

Event types (the ``event`` object of a ``dp_event`` / ``dp_spend`` record; see the JSON schemas):

* ``{"type": "gaussian", "noise_multiplier": σ, "sample_rate": q, "steps": k}`` —
  ``SelfComposedDpEvent(PoissonSampledDpEvent(q, GaussianDpEvent(σ)), k)``: k steps of the Poisson-subsampled
  Gaussian mechanism with noise std σ·C for L2 sensitivity C. Any other type raises :class:`UnknownEventType`.

Accountants (per client, events composed in record order, neighbouring relation add-or-remove-one):

* ``pld``: ``dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-3)`` (pessimistic
  connect-the-dots PLD: an upper bound on ε up to the discretisation, which biases ε *upwards* by at most
  ~1.3e-3 absolute, measured for σ ∈ [1, 5], q = 0.01, k ≤ 100 against a 1e-5 grid);
* ``prv``: the same PLD computation. PRV and PLD are both numerically tight accountants of the same privacy loss
  distribution; dp_accounting ships no PRV accountant, so a run that reports ``prv`` is checked against PLD;
* ``rdp``: ``dp_accounting.rdp.RdpAccountant()`` (default orders), converted to (ε, δ) by dp_accounting.

Tolerance (:func:`within_tolerance`): a reported ε passes when ``|reported − recomputed| ≤ rel · recomputed +
ABS_TOLERANCE`` with ``rel`` the caller's relative tolerance (verify_run: 1 %) and ``ABS_TOLERANCE = 2e-3`` (the
discretisation bias above, so tiny ε are not failed for grid noise). A run may therefore under-report ε by at most
that much; anything larger fails verification.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from audits.errors import UnknownAccountant, UnknownEventType
from audits.log_spec import EVENT_TYPES

PLD_VALUE_DISCRETIZATION = 1e-3
ABS_TOLERANCE = 2e-3
SUPPORTED = ("pld", "prv", "rdp")


@dataclass(frozen=True)
class GaussianEvent:
    """``steps`` compositions of the Poisson-subsampled Gaussian mechanism (σ/C = noise_multiplier, rate q)."""

    noise_multiplier: float
    sample_rate: float
    steps: int

    def to_payload(self) -> dict[str, Any]:
        """The typed ``event`` object as written in ledger and receipt records."""
        return {"type": "gaussian", "noise_multiplier": self.noise_multiplier, "sample_rate": self.sample_rate,
                "steps": self.steps}

    def dp_event(self):
        import dp_accounting as dpa

        return dpa.SelfComposedDpEvent(
            dpa.PoissonSampledDpEvent(self.sample_rate, dpa.GaussianDpEvent(self.noise_multiplier)), self.steps)


def parse_event(event: Mapping[str, Any]) -> GaussianEvent:
    """The typed event of a (schema-valid) record; UnknownEventType for a type this module cannot account."""
    t = event.get("type") if isinstance(event, Mapping) else None
    if t not in EVENT_TYPES:
        raise UnknownEventType(None, f"DP event type {t!r} is not one of {', '.join(EVENT_TYPES)}")
    return GaussianEvent(float(event["noise_multiplier"]), float(event["sample_rate"]), int(event["steps"]))


def backend_description() -> str:
    import importlib.metadata as md

    try:
        ver = md.version("dp-accounting")
    except md.PackageNotFoundError:  # pragma: no cover
        ver = "?"
    return (f"dp_accounting {ver}: PLDAccountant (value_discretization_interval={PLD_VALUE_DISCRETIZATION:g}; "
            "also for 'prv') / RdpAccountant (default orders); independent of privfed's dp package")


def within_tolerance(reported: float, recomputed: float, *, rel: float) -> bool:
    """True when ``|reported − recomputed| ≤ rel·|recomputed| + ABS_TOLERANCE`` (see module docstring)."""
    return abs(reported - recomputed) <= rel * abs(recomputed) + ABS_TOLERANCE


class IndependentAccountant:
    """Composes one client's events in order: ``compose(event)``, then ``epsilon(delta=)`` at any time."""

    def __init__(self, *, accountant: str) -> None:
        if accountant not in SUPPORTED:
            raise UnknownAccountant(f"accountant {accountant!r} is not supported (supported: {', '.join(SUPPORTED)})")
        self.accountant = accountant
        if accountant == "rdp":
            from dp_accounting.rdp import RdpAccountant

            self._acc = RdpAccountant()
        else:
            from dp_accounting.pld import PLDAccountant

            self._acc = PLDAccountant(value_discretization_interval=PLD_VALUE_DISCRETIZATION)
        self.events: list[GaussianEvent] = []

    def compose(self, event: GaussianEvent) -> None:
        self.events.append(event)
        self._acc.compose(event.dp_event())

    def epsilon(self, *, delta: float) -> float:
        if not self.events:
            return 0.0
        return float(self._acc.get_epsilon(delta))


def epsilon_for_events(events: Iterable[GaussianEvent], *, delta: float, accountant: str = "pld") -> float:
    """ε at ``delta`` of the composition of ``events`` (in order)."""
    acc = IndependentAccountant(accountant=accountant)
    for e in events:
        acc.compose(e)
    return acc.epsilon(delta=delta)


def replace_one_epsilon(events: Iterable[GaussianEvent], *, delta: float) -> float:
    """ε at ``delta`` of the composition of ``events`` under the **replace-one** neighbouring relation (one unit
    swapped for another; the dataset size is unchanged), which is *not* the add/remove-one relation the run accounts.

    Computed with dp_accounting's ``PLDAccountant(NeighboringRelation.REPLACE_ONE)``, which accounts the
    Poisson-subsampled Gaussian under replace-one directly (its dominating pair, not a group-privacy bound), whatever
    accountant the run recorded (dp_accounting's RdpAccountant has no replace-one for Poisson sampling)."""
    import dp_accounting as dpa
    from dp_accounting.pld import PLDAccountant

    acc = PLDAccountant(dpa.NeighboringRelation.REPLACE_ONE, value_discretization_interval=PLD_VALUE_DISCRETIZATION)
    n = 0
    for e in events:
        acc.compose(e.dp_event())
        n += 1
    return float(acc.get_epsilon(delta)) if n else 0.0
