"""White-box gradient canaries for the empirical privacy audit (`privfed audit --empirical` only).

A gradient canary is a training example whose clipped gradient is ``s · C · e_j``: one random parameter coordinate
j, a random sign s, and L2 norm exactly C (the per-example clip norm), so clipping leaves it unchanged and the DP
analysis covers it like any image (Nasr et al. 2023, "Tight auditing of differentially private machine learning";
Steinke, Nasr & Jagielski 2023 use the same "Dirac" canaries). It matches the threat model of this project: the
server sees the aggregate update of each round, and the final model minus the initial one is the sum of those.

Each canary belongs to one client and, when included, is sampled like any of that client's images: at every local
optimizer step independently with probability q = batch / n (Poisson). Its gradient enters

* under DP-SGD between per-example clipping and the Gaussian noise (``summed_grad`` of Opacus' DP optimizer), then
  noised and divided by the expected batch size with the rest;
* in plain training as one more example of the mean-reduced minibatch loss (``C · s · e_j / batch``).

The audit score of canary i is ``−s_i · (θ_final[j_i] − θ_reference[j_i])``: gradient descent moves an included
canary's coordinate against its sign; the reference is the attacker's best guess of the model without the
canaries (privfed.empirical uses a replay of the same configuration and seed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from privfed.federation.seeding import numpy_generator

#: inject(params, attribute, scale): add the sampled canaries' gradients to ``getattr(p, attribute)``, times scale
Injector = Callable[[Sequence[torch.Tensor], str, float], int]


@dataclass(frozen=True)
class GradientCanaries:
    """m Dirac gradient canaries: coordinate, sign, owning client and inclusion (±1) of each; norm C (L2)."""

    coords: np.ndarray      # int64 flat index into the concatenated model parameters (distinct)
    signs: np.ndarray       # int8 ±1
    owners: np.ndarray      # int64 client id
    included: np.ndarray    # int8 ±1: +1 = inserted into its owner's data
    norm: float             # L2 norm of each canary gradient = the per-example clip norm C
    seed: int

    @classmethod
    def draw(cls, included: np.ndarray, *, n_params: int, n_clients: int, norm: float,
             seed: int) -> "GradientCanaries":
        """Draw distinct coordinates, signs and owners for ``len(included)`` canaries (numpy PCG64 from seed)."""
        included = np.asarray(included, dtype=np.int8)
        m = len(included)
        if m > n_params:
            raise ValueError(f"{m} gradient canaries need {m} distinct coordinates; the model has {n_params}")
        if not norm > 0:
            raise ValueError(f"canary norm must be > 0, got {norm}")
        rng = numpy_generator(seed, "gradient-canaries")
        return cls(coords=rng.choice(n_params, size=m, replace=False).astype(np.int64),
                   signs=np.where(rng.random(m) < 0.5, 1, -1).astype(np.int8),
                   owners=rng.integers(0, n_clients, size=m).astype(np.int64),
                   included=included, norm=float(norm), seed=int(seed))

    def injector(self, client_id: int, round_index: int, *, sample_rate: float) -> Injector | None:
        """The injection function for one client-round, or None when the client holds no included canary."""
        mine = np.flatnonzero((self.owners == client_id) & (self.included > 0))
        if len(mine) == 0:
            return None
        rng = numpy_generator(self.seed, "gradient-canary-steps", client_id, round_index)
        coords, values = self.coords[mine], (self.signs[mine] * self.norm).astype(np.float64)
        cache: dict[int, tuple] = {}

        def inject(params: Sequence[torch.Tensor], attribute: str, scale: float) -> int:
            key = id(params[0])
            if key not in cache:
                sizes = np.cumsum([0] + [p.numel() for p in params])
                which = np.searchsorted(sizes, coords, side="right") - 1
                cache[key] = (which, coords - sizes[which])
            which, offset = cache[key]
            hit = rng.random(len(mine)) < sample_rate       # Poisson: each canary independently per step
            for i in np.flatnonzero(hit):
                p = params[which[i]]
                g = getattr(p, attribute)
                g.view(-1)[int(offset[i])] += float(values[i] * scale)
            return int(hit.sum())
        return inject

    def scores(self, reference: torch.Tensor, final: torch.Tensor) -> np.ndarray:
        """Audit score per canary from flat parameter vectors: higher = more likely included."""
        d = (final.double() - reference.double()).cpu().numpy()[self.coords]
        return -self.signs.astype(np.float64) * d
