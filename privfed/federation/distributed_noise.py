"""Calibration of distributed discrete Gaussian noise shares (``placement = "distributed"``).

Both halves compute the same plan from the run configuration: the server to record the typed event of each round,
each site to size its own noise share. A site's masking input is its contribution times 1/n (n = sites whose input
enters the round's secure aggregation; weight 1 each): site level (``--dp client``), its update clipped to L2 ≤ C;
sample level (``--dp sample``), minus the sum of its Poisson-sampled examples' gradients, each clipped to L2 ≤ C
(one private step per round). Secure aggregation clips each coordinate to ±c (``secure_agg.clip_range``) and
stochastically rounds it to L = ⌊(2^32 − 1)/n⌋ levels, step γ = 2c/L. The site first clips its data part per
coordinate to ``data_range`` (1-Lipschitz per coordinate: the L2 sensitivity C is unchanged), then adds γ·Z with
Z ~ N_Z(0, σ²)^d drawn exactly (:mod:`dp.discrete_noise`): rounding ⌊u + Z + r⌋ = Z + ⌊u + r⌋, so the noise enters
the integer sum exactly (float64 rounding of u moves u by < 2^-20 of a step; the sensitivity bound below carries a
1e-6 relative margin for it).

Per round with n sites: Δ2 = (C/(n·γ) + 2√d)·(1 + 1e-6) steps; honest shares h = t(n) − n_C (pinned threshold
minus colluder bound; dropped and colluding sites' shares do not count); share σ = z·Δ2/√h, so the honest noise
alone has σ/C-equivalent z, calibrated once for the run's ε over all rounds (δ as the run's).

Range: a noisy coordinate must stay inside ±c or secure aggregation clips it (the noise would no longer be the
accounted one): the noise keeps k·σ·γ of the range, k from a union bound over the round's n·d coordinates with the
discrete Gaussian's sub-Gaussian tail, so any clipping has probability ≤ 1e-9 per round; the run refuses to start
when what is left for the data part is below C/n for some round size.
"""

from __future__ import annotations

import functools
import math

from dp.distributed import (DistributedGaussianEvent, calibrate_share_stddev, clip_probability, rounding_l1_bound,
                            rounding_l2_bound)
from privfed.config import RunConfig, sites_per_round
from privfed.errors import ConfigError

DIM_BOUND = 1 << 24          # parameters: the checks' model size when the plan is not told the real one
MAX_CLIP_PROBABILITY = 1e-9  # per round, all sites and coordinates together
MIN_SHARE_STEPS = 10.0       # share σ in quantization steps: above this KLS21's τ underflows (the sum is Gaussian)
FLOAT_MARGIN = 1e-6
MAX_ROUNDING_INFLATION = 1.01  # Δ2 after rounding / C in steps: above this the ring is too coarse for useful noise


@functools.lru_cache(maxsize=32)
def _calibrated_z(target_epsilon: float, delta: float, rounds: int) -> float:
    """σ/C of the honest noise for ``rounds`` releases without sampling amplification. τ = 0 in the regime the plan
    enforces, so ε depends on z only: calibrated on a unit-free event. Sample-level rounds are calibrated without
    amplification too (a site does not know the other sites' sizes, hence their sampling rates); their recorded
    events carry each site's own rate, so the accounted ε is at most the target."""
    ref = 1e6
    return calibrate_share_stddev(target_epsilon=target_epsilon, target_delta=delta, honest_sites=1,
                                  l2_sensitivity=ref, dimension=1, sample_rate=1.0, steps=rounds) / ref


class DistributedNoise:
    """The noise plan of a distributed-placement run (ConfigError when the ring cannot hold the noise).

    ``dimension``: the number of model parameters (the length of every update; sites refuse weights of another
    size). The range and rounding checks hold for every model up to this size; without it they assume DIM_BOUND
    (2^24), which refuses settings that fit a small model (e.g. ε = 1 with 10 sites on the default UNet).
    ``check=False`` skips the range checks (to ask :meth:`required_range` what the run would need)."""

    def __init__(self, cfg: RunConfig, *, delta: float, dimension: int | None = None,
                 check: bool = True) -> None:
        dpc, fed, sa = cfg.dp, cfg.fed, cfg.secure_agg
        self.clip_norm = float(dpc.max_grad_norm)
        self.clip_range = float(sa.clip_range)
        self.colluders = int(sa.max_colluders)
        self.threshold_of = sa.threshold
        self.sites = int(fed.clients)
        self.rounds = int(fed.rounds)
        self.sample_level = dpc.mode == "sample"
        if dimension is not None and (isinstance(dimension, bool) or not isinstance(dimension, int)
                                      or dimension < 1):
            raise ConfigError(f"distributed noise: model dimension must be an int >= 1, got {dimension!r}")
        self.dimension = DIM_BOUND if dimension is None else int(dimension)
        if dpc.noise_multiplier is not None:
            self.z = float(dpc.noise_multiplier)
        else:
            self.z = _calibrated_z(float(dpc.target_epsilon), float(delta), int(fed.rounds))
        if not self.z > 0:
            raise ConfigError("distributed placement needs a noise multiplier > 0")
        smallest = max(2, min(fed.min_clients, fed.clients), sa.min_clients)
        self._fewest, self._most = smallest, max(smallest, sites_per_round(fed))
        if check:
            for n in range(smallest, self._most + 1):
                self._check_round_size(n)

    # -- per round size n ------------------------------------------------------------------------------------------
    def step(self, n: int) -> float:
        """γ: the quantization step secure aggregation uses for a round of n sites."""
        from secure_agg.quantize import make_quantizer

        return make_quantizer(n_clients=n, clip_range=self.clip_range).step

    def honest_sites(self, n: int) -> int:
        return self.threshold_of(n) - self.colluders

    def noise_headroom(self, n: int, dimension: int) -> float:
        """k·σ·γ: the part of the ±c range (update units / n) kept for the noise share, k such that a union bound
        over the round's n·d noisy coordinates gives a clipping probability of at most MAX_CLIP_PROBABILITY."""
        k = math.sqrt(2 * math.log(4 * n * dimension / MAX_CLIP_PROBABILITY))   # half the allowed probability
        return k * self.event(n, dimension).share_stddev * self.step(n)

    def data_range(self, n: int, dimension: int) -> float:
        """Per-coordinate clip of a site's data part before its share is added (1-Lipschitz per coordinate, so the
        L2 sensitivity is unchanged); at least C/n, so a site-level update or one example is never clipped."""
        return self.clip_range - self.noise_headroom(n, dimension)

    def event(self, n: int, dimension: int, *, sample_rate: float = 1.0) -> DistributedGaussianEvent:
        """The typed event of one round with n contributing sites and a d-parameter model (sample_rate: the site's
        Poisson rate per example for sample-level rounds, 1 for site level)."""
        scaled = self.clip_norm / (n * self.step(n))
        l2 = rounding_l2_bound(scaled, dimension) * (1 + FLOAT_MARGIN)
        h = self.honest_sites(n)
        if h < 1:
            raise ConfigError(f"a round of {n} sites has threshold {self.threshold_of(n)} <= max_colluders "
                              f"{self.colluders}: no honest noise share")
        return DistributedGaussianEvent(share_stddev=self.z * l2 / math.sqrt(h), honest_sites=h, l2_sensitivity=l2,
                                        l1_sensitivity=rounding_l1_bound(l2, dimension), dimension=int(dimension),
                                        sample_rate=float(sample_rate), steps=1)

    def clip_probability(self, n: int, dimension: int) -> float:
        """Bound on P(secure aggregation clips a noisy coordinate) in a round: the data part is clipped to
        ``data_range`` by the site first, so only a share beyond ``noise_headroom`` can reach the edge."""
        ev = self.event(n, dimension)
        headroom = (self.clip_range - max(self.data_range(n, dimension), self.clip_norm / n)) / self.step(n)
        return clip_probability(share_stddev=ev.share_stddev, headroom=headroom, dimension=dimension, sites=n)

    def required_clip_range(self, n: int) -> float:
        """The secure_agg.clip_range (update units per coordinate) a round of n sites needs so that its noisy
        coordinates are clipped with probability at most MAX_CLIP_PROBABILITY: room for one example or update (C/n)
        plus k noise standard deviations, k from the union bound over the round's n·d coordinates, with a 1 %
        margin for the rounding's inflation of the sensitivity."""
        k = math.sqrt(2 * math.log(2 * n * self.dimension / MAX_CLIP_PROBABILITY))
        return (self.clip_norm / n) * (1 + k * self.z / math.sqrt(self.honest_sites(n))) * 1.01

    def required_range(self) -> float:
        """The largest :meth:`required_clip_range` over the round sizes this run admits."""
        return max(self.required_clip_range(n) for n in range(self._fewest, self._most + 1))

    def _check_round_size(self, n: int) -> None:
        d = self.dimension
        ev = self.event(n, d)
        scaled = self.clip_norm / (n * self.step(n))
        if ev.l2_sensitivity > MAX_ROUNDING_INFLATION * scaled:
            raise ConfigError(f"distributed noise: the 32-bit ring is too coarse for secure_agg.clip_range = "
                              f"{self.clip_range:g}: with {n} sites an update of norm C spans {scaled:.3g} "
                              f"quantization steps and rounding inflates its sensitivity "
                              f"{ev.l2_sensitivity / scaled:.3g}-fold (allowed {MAX_ROUNDING_INFLATION:g}); lower "
                              "clip_range")
        if ev.share_stddev < MIN_SHARE_STEPS:
            raise ConfigError(f"distributed noise: with {n} sites a noise share is {ev.share_stddev:.3g} quantization "
                              f"steps, below {MIN_SHARE_STEPS:g}: the 32-bit ring is too coarse for this noise; lower "
                              f"secure_agg.clip_range ({self.clip_range:g})")
        p = self.clip_probability(n, d)
        if p > MAX_CLIP_PROBABILITY:
            need = self.required_clip_range(n)
            raise ConfigError(f"distributed noise does not fit the secure-aggregation range: in a round of {n} "
                              f"sites (the run admits rounds of {self._fewest} to {self._most}) each coordinate may "
                              f"be clipped with probability up to {p:.2g} per round (> "
                              f"{MAX_CLIP_PROBABILITY:g}); set [secure_agg] clip_range >= {need:.3g} (now "
                              f"{self.clip_range:g}) in the config file")
