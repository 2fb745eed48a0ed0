"""Server-side aggregation seam: turn the selected clients' updates into one global step.

`PlainFedAvg` sees every update (no secure aggregation); `SecureFedAvg` (privfed.federation.secure) sees only
the sum over survivors. Both return the weighted mean delta and a JSON-able transcript for the ledger.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from privfed.federation.client import ClientUpdate


@dataclass
class AggregateResult:
    """The averaged update and what the server learned while computing it."""

    mean_delta: torch.Tensor
    contributors: list[int]
    transcript: dict[str, Any] = field(default_factory=dict)


def client_weights(updates: Sequence[ClientUpdate]) -> dict[int, float]:
    """FedAvg weights n_i / Σ n_j over the selected clients (the server knows the counts, not the data).

    Updates that carry an explicit `weight` (DP-FedAvg weights every site equally) use it instead of n_i.
    """
    raw = {u.client_id: (u.weight if u.weight is not None else float(u.num_examples)) for u in updates}
    total = sum(raw.values())
    return {c: w / total for c, w in raw.items()}


def fedavg(updates: Sequence[ClientUpdate]) -> torch.Tensor:
    """Weighted mean Σ n_i Δ_i / Σ n_i (float64 accumulation)."""
    if not updates:
        raise ValueError("fedavg needs at least one update")
    w = client_weights(updates)
    acc = torch.zeros_like(updates[0].delta, dtype=torch.float64)
    for u in updates:
        acc += w[u.client_id] * u.delta.double()
    return acc.float()


class PlainFedAvg:
    """Weighted FedAvg in the clear (the server sees each update)."""

    name = "off"

    def aggregate(self, updates: Sequence[ClientUpdate], *, round_index: int) -> AggregateResult:
        return AggregateResult(fedavg(updates), sorted(u.client_id for u in updates),
                               {"mode": "off", "n": len(updates)})
