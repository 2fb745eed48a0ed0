"""DP events: what the ledger stores (never ε).

A :class:`GaussianEvent` is ``steps`` self-compositions of the Poisson-subsampled Gaussian mechanism:

* ``noise_multiplier`` σ — noise standard deviation divided by the L2 clip norm (σ = std / C), dimensionless;
* ``sample_rate`` q — probability that each unit (one example for DP-SGD, one site for DP-FedAvg) is included in a
  step, drawn independently (Poisson sampling), ``0 <= q <= 1``;
* ``steps`` — number of noisy steps (optimizer steps, or federated rounds for client-level DP), ``>= 0``;
* ``round`` — metadata: the federated round the event belongs to (None if not tied to a round); not used by
  accounting. The mechanism name ``"poisson_gaussian"`` is written as ``type`` in the JSON form.

ε is always recomputed from events by an accountant (:mod:`dp.accountant`).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import Any, Optional

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class GaussianEvent:
    """``steps`` compositions of the Poisson-subsampled Gaussian mechanism (σ = std/C, rate q per step)."""

    noise_multiplier: float
    sample_rate: float
    steps: int
    round: Optional[int] = None

    def __post_init__(self) -> None:
        for name in ("noise_multiplier", "sample_rate"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise TypeError(f"{name} must be a real number, got {type(v).__name__}")
            object.__setattr__(self, name, float(v))
        if isinstance(self.steps, bool) or not isinstance(self.steps, int):
            raise TypeError(f"steps must be an int, got {type(self.steps).__name__}")
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier >= 0):
            raise ValueError(f"noise_multiplier (σ = noise std / clip norm) must be finite and >= 0, "
                             f"got {self.noise_multiplier}")
        if not (0.0 <= self.sample_rate <= 1.0):
            raise ValueError(f"sample_rate (Poisson inclusion probability) must be in [0, 1], got {self.sample_rate}")
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")
        if self.round is not None and (isinstance(self.round, bool) or not isinstance(self.round, int)):
            raise TypeError(f"round must be an int or None, got {type(self.round).__name__}")

    @property
    def is_trivial(self) -> bool:
        """True when the event spends no privacy (no steps, or nobody can be sampled)."""
        return self.steps == 0 or self.sample_rate == 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"type": "poisson_gaussian", "version": SCHEMA_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "GaussianEvent":
        if d.get("type", "poisson_gaussian") != "poisson_gaussian":
            raise ValueError(f"not a Poisson-subsampled Gaussian event: type={d.get('type')!r}")
        if int(d.get("version", SCHEMA_VERSION)) != SCHEMA_VERSION:
            raise ValueError(f"unsupported GaussianEvent schema version {d.get('version')!r}")
        rnd = d.get("round")
        return cls(noise_multiplier=float(d["noise_multiplier"]), sample_rate=float(d["sample_rate"]),
                   steps=int(d["steps"]), round=None if rnd is None else int(rnd))

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, no spaces)."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, s: str) -> "GaussianEvent":
        return cls.from_dict(json.loads(s))

    @property
    def mechanism(self) -> str:
        return "poisson_gaussian"

    def to_dp_accounting(self):
        """``SelfComposedDpEvent(PoissonSampledDpEvent(q, GaussianDpEvent(σ)), steps)`` for dp_accounting."""
        import dp_accounting as dpa

        return dpa.SelfComposedDpEvent(
            dpa.PoissonSampledDpEvent(self.sample_rate, dpa.GaussianDpEvent(self.noise_multiplier)), self.steps)

    to_dp_event = to_dp_accounting  # alias
