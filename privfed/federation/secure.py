"""Secure FedAvg: clients mask their weighted updates with secure_agg; the server unmasks only the sum.

Each client pre-scales its update by its public FedAvg weight w_i = n_i / Σ n_j (the server already knows the
counts), so the sum over survivors divided by Σ_{survivors} w_i is the weighted mean of the survivors' updates.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from privfed.config import SecAggConfig
from privfed.federation.aggregation import AggregateResult, client_weights
from privfed.federation.client import ClientUpdate
from privfed.federation.seeding import numpy_generator
from secure_agg import SecAggParams, secure_sum_in_process
from secure_agg.errors import ThresholdError


class SecureFedAvg:
    """Weighted FedAvg through pairwise-mask secure aggregation (SecAgg or SecAgg+)."""

    def __init__(self, cfg: SecAggConfig, *, run_id: str, seed: int) -> None:
        self.cfg = cfg
        self.name = cfg.mode
        self.run_id = run_id
        self.seed = seed
        self.params = SecAggParams(mode=cfg.mode, clip_range=cfg.clip_range,
                                   threshold_fraction=cfg.threshold_fraction)

    def simulated_dropouts(self, selected: Sequence[int], round_index: int) -> list[int]:
        """Clients that drop before sending their masked input (simulation of unreliable sites)."""
        k = int(np.floor(self.cfg.dropout_rate * len(selected)))
        if k == 0:
            return []
        rng = numpy_generator(self.seed, "dropout", round_index)
        return sorted(rng.choice(np.asarray(selected), size=k, replace=False).tolist())

    def aggregate(self, updates: Sequence[ClientUpdate], *, round_index: int) -> AggregateResult:
        weights = client_weights(updates)
        inputs = {u.client_id: (u.delta.double() * weights[u.client_id]).numpy() for u in updates}
        clipped = sum(int(np.count_nonzero(np.abs(v) > self.cfg.clip_range)) for v in inputs.values())
        dropped = self.simulated_dropouts([u.client_id for u in updates], round_index)
        try:
            result = secure_sum_in_process(inputs, params=self.params, run_id=self.run_id, round_index=round_index,
                                           rng=numpy_generator(self.seed, "quantize", round_index),
                                           dropouts={"masked_input": dropped} if dropped else None)
        except ThresholdError as e:
            # fewer than t survivors: the protocol aborts with nothing revealed; the global model stays as it was
            zero = torch.zeros_like(updates[0].delta)
            return AggregateResult(zero, [], {"mode": self.cfg.mode, "aborted": str(e), "survivors": [],
                                              "dropped": {"masked_input": dropped}})
        survivors = list(result.survivors)
        total_w = sum(weights[c] for c in survivors)
        mean = torch.from_numpy(np.asarray(result.sum, dtype=np.float64) / total_w).float()
        transcript = dict(result.transcript)
        transcript["clipped_coordinates"] = clipped
        return AggregateResult(mean, sorted(survivors), transcript)
