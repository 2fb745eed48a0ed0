"""ε recomputation from recorded DP events: an adapter over the project's accountant or dp_accounting.

Events are Poisson-subsampled Gaussian mechanisms (``noise_multiplier`` σ/C, ``sample_rate`` q per step, ``steps``),
composed in ledger order per client. Backend:

* if ``dp.accountant.PrivacyAccountant`` exists and offers ``PrivacyAccountant(accountant=name)``,
  ``.add_event(noise_multiplier=..., sample_rate=..., steps=...)`` and ``.get_epsilon(delta=...)``, it is used;
* otherwise dp_accounting directly: PLD (``PrivacyLossDistribution.from_gaussian_mechanism`` with
  connect-the-dots, pessimistic, value discretisation 1e-3) for ``pld`` and ``prv`` (both numerically tight),
  RDP (``RdpAccountant``) for ``rdp``.

:func:`backend_description` says which one ran; the verification report and the audit report print it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Iterable

from audits.errors import UnknownAccountant

PLD_VALUE_DISCRETIZATION = 1e-3
SUPPORTED = ("pld", "prv", "rdp")


@dataclass(frozen=True)
class GaussianEvent:
    """``steps`` compositions of the Poisson-subsampled Gaussian mechanism (σ/C = noise_multiplier, rate q)."""

    noise_multiplier: float
    sample_rate: float
    steps: int

    @classmethod
    def from_payload(cls, event: dict[str, Any]) -> "GaussianEvent":
        return cls(float(event["noise_multiplier"]), float(event["sample_rate"]), int(event["steps"]))


def _project_accountant_class() -> tuple[Any, str]:
    try:
        from dp.accountant import PrivacyAccountant  # type: ignore[import-not-found]
    except ImportError:
        return None, "dp_accounting {ver} (dp.accountant not available)"
    import inspect

    try:
        inspect.signature(PrivacyAccountant).bind(accountant="pld")
        inspect.signature(PrivacyAccountant.add_event).bind(None, noise_multiplier=1.0, sample_rate=0.1, steps=1)
        inspect.signature(PrivacyAccountant.get_epsilon).bind(None, delta=1e-5)
    except (AttributeError, TypeError, ValueError):
        pass
    else:
        return PrivacyAccountant, "dp.accountant.PrivacyAccountant"
    return None, "dp_accounting {ver} (dp.accountant present but its interface is not recognised)"


def backend_description() -> str:
    import importlib.metadata as md

    cls, label = _project_accountant_class()
    try:
        ver = md.version("dp-accounting")
    except md.PackageNotFoundError:  # pragma: no cover
        ver = "?"
    return label.format(ver=ver)


@lru_cache(maxsize=256)
def _pld_round(sigma: float, q: float, steps: int):
    from dp_accounting.pld import privacy_loss_distribution as pld

    base = pld.from_gaussian_mechanism(sigma, sampling_prob=q, use_connect_dots=True, pessimistic_estimate=True,
                                       value_discretization_interval=PLD_VALUE_DISCRETIZATION)
    return base.self_compose(steps) if steps > 1 else base


class ClientAccountant:
    """Incremental composition for one client: ``compose(event)`` per dp_event, ``epsilon(delta=)`` any time."""

    def __init__(self, *, accountant: str) -> None:
        if accountant not in SUPPORTED:
            raise UnknownAccountant(f"accountant {accountant!r} is not supported (supported: {', '.join(SUPPORTED)})")
        self.accountant = accountant
        cls, _ = _project_accountant_class()
        self._project = cls(accountant=accountant) if cls is not None else None
        self._pld = None
        self._rdp = None
        self.events: list[GaussianEvent] = []

    def compose(self, event: GaussianEvent) -> None:
        self.events.append(event)
        if self._project is not None:
            self._project.add_event(noise_multiplier=event.noise_multiplier, sample_rate=event.sample_rate,
                                    steps=event.steps)
        elif self.accountant == "rdp":
            import dp_accounting as dpa
            from dp_accounting.rdp import rdp_privacy_accountant as rdp

            if self._rdp is None:
                self._rdp = rdp.RdpAccountant()
            self._rdp.compose(dpa.PoissonSampledDpEvent(event.sample_rate, dpa.GaussianDpEvent(event.noise_multiplier)),
                              event.steps)
        else:
            r = _pld_round(event.noise_multiplier, event.sample_rate, event.steps)
            self._pld = r if self._pld is None else self._pld.compose(r)

    def epsilon(self, *, delta: float) -> float:
        if not self.events:
            return 0.0
        if self._project is not None:
            return float(self._project.get_epsilon(delta=delta))
        if self._rdp is not None:
            return float(self._rdp.get_epsilon(delta))
        return float(self._pld.get_epsilon_for_delta(delta))


def epsilon_for_events(events: Iterable[GaussianEvent], *, delta: float, accountant: str = "pld") -> float:
    """ε at ``delta`` of the composition of ``events`` (in order)."""
    acc = ClientAccountant(accountant=accountant)
    for e in events:
        acc.compose(e)
    return acc.epsilon(delta=delta)
