"""ε recomputed from typed DP events with dp_accounting's own accountants — never through the project's ``dp/``.

An independent check must not call the code it checks: ``dp/`` computes the ε the run reports, this module
recomputes it from the events in the signed ledger (or a site's receipt) with the reference library directly.

Event types (the ``event`` object of a ``dp_event`` / ``dp_spend`` record; see the JSON schemas):

* ``{"type": "gaussian", "noise_multiplier": σ, "sample_rate": q, "steps": k}`` —
  ``SelfComposedDpEvent(PoissonSampledDpEvent(q, GaussianDpEvent(σ)), k)``: k steps of the Poisson-subsampled
  Gaussian mechanism with noise std σ·C for L2 sensitivity C.
* ``{"type": "distributed_discrete_gaussian", "share_stddev": σ, "honest_sites": n, "l2_sensitivity": Δ2,
  "l1_sensitivity": Δ1, "dimension": d, "sample_rate": q, "steps": k}`` — k steps of the Poisson-subsampled
  distributed discrete Gaussian (Kairouz, Liu & Steinke 2021), units quantization steps. dp_accounting has no such
  event: its RDP curve is computed here, separately from ``dp.distributed`` (KLS21 Proposition 14 per order; Zhu &
  Wang 2019 Theorem 6 for q < 1, in closed form with scipy), over the integer orders 2..256, and converted to
  (ε, δ) by dp_accounting's ``compute_epsilon``. Always RDP, whatever accountant the record names (no PLD of this
  mechanism exists). A client's events must all be of one type (mixing raises :class:`UnknownEventType`).

Any other type raises :class:`UnknownEventType`.

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

import numpy as np

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


DDG_ORDERS = np.arange(2, 257)


@dataclass(frozen=True)
class DistributedDiscreteGaussianEvent:
    """``steps`` compositions of the Poisson-subsampled distributed discrete Gaussian (units: quantization steps)."""

    share_stddev: float
    honest_sites: int
    l2_sensitivity: float
    l1_sensitivity: float
    dimension: int
    sample_rate: float
    steps: int

    def rdp(self) -> np.ndarray:
        """RDP of the whole event at each of DDG_ORDERS."""
        from scipy.special import gammaln, logsumexp

        a = DDG_ORDERS.astype(np.float64)
        n, s, d = self.honest_sites, self.share_stddev, float(self.dimension)
        ks = np.arange(1, n)
        tau = 10.0 * float(np.sum(np.exp(-2.0 * np.pi ** 2 * s * s * ks / (ks + 1.0)))) if n > 1 else 0.0
        l2 = self.l2_sensitivity / (np.sqrt(n) * s)
        l1 = self.l1_sensitivity / (np.sqrt(n) * s)
        base = np.minimum.reduce([a * l2 ** 2 / 2 + tau * d,
                                  a / 2 * (l2 ** 2 + 2 * l1 * tau + tau ** 2 * d),
                                  a / 2 * (l2 + np.sqrt(d) * tau) ** 2])      # base[i]: order a[i]
        q = self.sample_rate
        if q < 1.0:
            out = np.empty_like(base)
            for i, alpha in enumerate(DDG_ORDERS):
                j = np.arange(2, alpha + 1)
                logs = (gammaln(alpha + 1) - gammaln(j + 1) - gammaln(alpha - j + 1) + (alpha - j) * np.log1p(-q)
                        + j * np.log(q) + (j - 1) * base[j - 2])
                weights = np.where(j == 2, 1.0, 3.0)
                head = (alpha - 1) * np.log1p(-q) + np.log(alpha * q - q + 1)
                total = logsumexp(np.concatenate([[head], logs]), b=np.concatenate([[1.0], weights]))
                out[i] = min(total / (alpha - 1), base[i])
            base = out
        return base * self.steps

    def to_payload(self) -> dict[str, Any]:
        return {"type": "distributed_discrete_gaussian", "share_stddev": self.share_stddev,
                "honest_sites": self.honest_sites, "l2_sensitivity": self.l2_sensitivity,
                "l1_sensitivity": self.l1_sensitivity, "dimension": self.dimension, "sample_rate": self.sample_rate,
                "steps": self.steps}


def parse_event(event: Mapping[str, Any]) -> GaussianEvent | DistributedDiscreteGaussianEvent:
    """The typed event of a (schema-valid) record; UnknownEventType for a type this module cannot account."""
    t = event.get("type") if isinstance(event, Mapping) else None
    if t not in EVENT_TYPES:
        raise UnknownEventType(None, f"DP event type {t!r} is not one of {', '.join(EVENT_TYPES)}")
    if t == "distributed_discrete_gaussian":
        return DistributedDiscreteGaussianEvent(
            float(event["share_stddev"]), int(event["honest_sites"]), float(event["l2_sensitivity"]),
            float(event["l1_sensitivity"]), int(event["dimension"]), float(event["sample_rate"]), int(event["steps"]))
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
        self.events: list[GaussianEvent | DistributedDiscreteGaussianEvent] = []
        self._ddg_rdp: np.ndarray | None = None     # summed RDP of distributed discrete Gaussian events

    def compose(self, event: GaussianEvent | DistributedDiscreteGaussianEvent) -> None:
        ddg = isinstance(event, DistributedDiscreteGaussianEvent)
        if self.events and ddg != isinstance(self.events[0], DistributedDiscreteGaussianEvent):
            raise UnknownEventType(None, "a client's events mix gaussian and distributed_discrete_gaussian types; "
                                         "this verifier does not compose the two")
        self.events.append(event)
        if ddg:
            self._ddg_rdp = event.rdp() + (0.0 if self._ddg_rdp is None else self._ddg_rdp)
        else:
            self._acc.compose(event.dp_event())

    def epsilon(self, *, delta: float) -> float:
        if not self.events:
            return 0.0
        if self._ddg_rdp is not None:
            from dp_accounting.rdp.rdp_privacy_accountant import compute_epsilon

            return float(compute_epsilon(list(DDG_ORDERS.astype(float)), list(self._ddg_rdp), delta)[0])
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

    events = list(events)
    if any(isinstance(e, DistributedDiscreteGaussianEvent) for e in events):
        return _replace_one_ddg(events, delta=delta)
    acc = PLDAccountant(dpa.NeighboringRelation.REPLACE_ONE, value_discretization_interval=PLD_VALUE_DISCRETIZATION)
    n = 0
    for e in events:
        acc.compose(e.dp_event())
        n += 1
    return float(acc.get_epsilon(delta)) if n else 0.0


def _replace_one_ddg(events, *, delta: float) -> float:
    """Replace-one for distributed discrete Gaussian events: swapping one unit's contribution for another's moves the
    sum by at most twice the add/remove bounds, so Δ2 and Δ1 double. With sample_rate q < 1 the two neighbouring
    releases are mixtures with the same weights (the unit is sampled or not in both), and Rényi divergence is jointly
    quasi-convex, so the un-subsampled mechanism's divergence bounds theirs: computed at q = 1 (an upper bound that
    gives up the amplification)."""
    import dataclasses

    acc = IndependentAccountant(accountant="rdp")
    for e in events:
        if not isinstance(e, DistributedDiscreteGaussianEvent):
            raise UnknownEventType(None, "replace-one is not computed for gaussian and distributed_discrete_gaussian "
                                         "events mixed")
        acc.compose(dataclasses.replace(e, l2_sensitivity=2 * e.l2_sensitivity, l1_sensitivity=2 * e.l1_sensitivity,
                                        sample_rate=1.0))
    return acc.epsilon(delta=delta)
