"""The site half of each DP mode (see :mod:`privfed.federation.privacy` for the server half) and the local
trainers it hands out: plain, DP-SGD through Opacus (unit = one image), clipped updates for DP-FedAvg (unit = one
site). A site owns this object: its σ (calibrated from its own size), its accountant (rebuilt from its own signed
receipt) and its ε cap.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import torch

from dp import GaussianEvent, PrivacyAccountant, calibrate_noise_multiplier, check_budget, make_private, \
    validate_dp_args
from dp.client_level import clip_update
from dp.discrete_noise import sample_discrete_gaussian, sample_discrete_gaussian_fast, tm_for
from dp.distributed import DistributedAccountant
from privfed.config import FedConfig, RunConfig
from privfed.errors import ConfigError, PolicyViolation
from privfed.federation.distributed_noise import DistributedNoise
from privfed.federation.client import ClientUpdate, LocalTrainer, trained_parameters
from privfed.federation.privacy import _expected_steps, event_payload, run_cap


# ==== site halves ==============================================================================================
class SitePrivacy:
    """A site's own privacy state: its trainer, its accountant and cap, the event it is charged per release."""

    unit = "none"

    def __init__(self, cfg: RunConfig, n_local: int, *, delta: float | None) -> None:
        self.cfg, self.n_local, self.delta = cfg, n_local, delta
        self.accountant = PrivacyAccountant(kind=cfg.dp.accountant if cfg.dp.mode != "off" else "pld")

    def trainer(self, fed: FedConfig, scheduler) -> LocalTrainer:
        return LocalTrainer(fed, scheduler, trainable=self.cfg.model.trainable)

    def weight(self) -> float:
        """FedAvg weight of this site's update (its number of examples)."""
        return float(self.n_local)

    def release_event(self) -> GaussianEvent | None:
        """The event charged when this site's update leaves it (None: not charged per release)."""
        return None

    def check_budget(self, cap: float) -> dict[str, Any] | None:
        """Projected ε if this round's event is added; None when the site is not charged per release."""
        return None

    def charge(self, event: GaussianEvent) -> float:
        self.accountant.add_event(event)
        return self.accountant.epsilon(delta=self.delta) if self.delta else 0.0

    def add_noise_share(self, update, *, weight_total: float, max_colluders: int = 0, setup=None):
        """Seam for distributed DP: a site adds its share of the noise before masking. None here."""
        return update

    def noise_share_event(self):
        """The typed event of the noise share added this round (None: no share)."""
        return None


class SiteSampleDP(SitePrivacy):
    """DP-SGD at the site: σ calibrated from its own size for the run's ε target over all rounds."""

    unit = "example"

    def __init__(self, cfg: RunConfig, n_local: int, *, delta: float) -> None:
        super().__init__(cfg, n_local, delta=delta)
        dpc, fed = cfg.dp, cfg.fed
        self.q, self.steps = _expected_steps(n_local, fed)
        if dpc.noise_multiplier is not None:
            self.sigma = float(dpc.noise_multiplier)
        else:
            self.sigma = float(calibrate_noise_multiplier(target_epsilon=dpc.target_epsilon, target_delta=delta,
                                                          sample_rate=self.q, steps=self.steps * fed.rounds,
                                                          accountant=dpc.accountant))
        validate_dp_args(target_epsilon=dpc.target_epsilon, target_delta=delta, n_local=n_local,
                         noise_multiplier=self.sigma, max_grad_norm=dpc.max_grad_norm, max_epsilon=run_cap(cfg),
                         one_round_event=self.release_event(), allow_large_delta=dpc.allow_large_delta)

    def release_event(self) -> GaussianEvent:
        return GaussianEvent(noise_multiplier=self.sigma, sample_rate=self.q, steps=self.steps)

    def check_budget(self, cap: float) -> dict[str, Any]:
        out = check_budget(self.accountant, self.release_event(), delta=self.delta, max_epsilon=cap)
        return {"projected_epsilon": float(out["projected_epsilon"]), "max_epsilon": float(cap),
                "allowed": bool(out["allowed"])}

    def trainer(self, fed: FedConfig, scheduler) -> LocalTrainer:
        return DPSGDTrainer(fed, scheduler, sigma=self.sigma, dp=self.cfg.dp, trainable=self.cfg.model.trainable)


class SiteClientDP(SitePrivacy):
    """DP-FedAvg at the site: clip the update to C and weight it 1; the server adds the noise (trusted)."""

    unit = "client"

    def trainer(self, fed: FedConfig, scheduler) -> LocalTrainer:
        return ClippedUpdateTrainer(fed, scheduler, self.cfg.dp.max_grad_norm, trainable=self.cfg.model.trainable)

    def weight(self) -> float:
        return 1.0


class SiteDistributedDP(SiteClientDP):
    """DP-FedAvg with distributed noise: clip the update to C (weight 1) and, before masking, add an exact discrete
    Gaussian share in the integer ring of secure aggregation (:mod:`privfed.federation.distributed_noise`)."""

    def __init__(self, cfg: RunConfig, n_local: int, *, delta: float, dimension: int | None = None) -> None:
        super().__init__(cfg, n_local, delta=delta)
        if cfg.dp.mode == "sample":
            self.unit = "example"
            self.sample_rate = min(cfg.fed.batch_size, n_local) / n_local
        else:
            self.sample_rate = 1.0
        self.accountant = DistributedAccountant()
        self.plan = DistributedNoise(cfg, delta=delta, dimension=dimension)
        if cfg.dp.mode == "sample":
            # the same refusals as local DP-SGD: δ below 1/n_local for this site's images, a cap one round fits in
            dpc, cap = cfg.dp, run_cap(cfg)
            validate_dp_args(target_epsilon=dpc.target_epsilon, target_delta=delta, n_local=n_local,
                             noise_multiplier=dpc.noise_multiplier, max_grad_norm=dpc.max_grad_norm, max_epsilon=cap,
                             allow_large_delta=dpc.allow_large_delta)
            one = DistributedAccountant().projected_epsilon(
                self.plan.event(cfg.fed.clients, self.plan.dimension, sample_rate=self.sample_rate), delta=delta)
            if cap is not None and one > cap:
                raise ValueError(f"max_epsilon={cap:g} is below what a single round costs (epsilon={one:.4g} at "
                                 f"delta={delta:g}): no round could ever run; raise the cap or the noise")
        self.noise_source = None       # byte source of the noise (None: os.urandom); tests inject a seeded one
        self._event = None
        self._dim: int | None = None

    def add_noise_share(self, update, *, weight_total: float, max_colluders: int = 0, setup=None):
        """``update``: this site's masking input (its contribution / n, float64). Returns it, clipped per coordinate to
        the plan's data range, plus γ·Z, Z ~ N_Z(0, σ²)^d drawn exactly.

        σ is sized for the round as the secure-aggregation ``setup`` (the protocol's first message: its sites,
        threshold, clip range and ring) defines it, with the smaller of the run's and the setup's threshold and the
        larger of the run's and the site's pinned colluder bound: a server that misstates the round only gets more
        noise, or a refusal."""
        n = int(round(weight_total))
        if n < 1 or abs(weight_total - n) > 1e-9:
            raise PolicyViolation(f"distributed noise needs a whole number of sites per round, got {weight_total}")
        t = self.plan.threshold_of(n)
        if setup is not None:
            if setup["n"] != n or setup["clip_range"] != self.plan.clip_range or setup["modulus_bits"] != 32:
                raise PolicyViolation(f"the secure-aggregation setup ({setup}) is not the round the noise share is "
                                      f"sized for ({n} sites, clip_range {self.plan.clip_range:g}, 32-bit ring)")
            t = min(t, int(setup["threshold"]))
        honest = t - max(self.plan.colluders, int(max_colluders))
        if honest < 1:
            raise PolicyViolation(f"round of {n} sites: threshold {t} minus the colluder bound leaves no honest noise "
                                  "share")
        d = int(np.asarray(update).shape[0])
        if d > self.plan.dimension:
            raise PolicyViolation(f"an update of {d} coordinates is larger than the model the noise plan was checked "
                                  f"for ({self.plan.dimension}): its range and rounding bounds would not hold")
        planned = self.plan.event(n, d, sample_rate=self.sample_rate)
        share = self.plan.z * planned.l2_sensitivity / math.sqrt(honest)
        t_, m_ = tm_for(math.ceil(share * share))      # σ² = t·m ≥ the planned σ²: only more noise
        if 2 * t_ * m_ < 1 << 55:
            z = sample_discrete_gaussian_fast(t_, m_, d, source=self.noise_source)
        else:
            z = sample_discrete_gaussian(t_ * m_, d, source=self.noise_source)
        # the receipt records the run's planned event (the ledger's): the honest noise actually added,
        # honest·σ² ≥ z²·Δ2², is at least what it accounts, whatever stricter assumption the site sized it for
        self._event = planned
        self._dim = d
        lim = self.plan.data_range(n, d)
        data = np.clip(np.asarray(update, dtype=np.float64), -lim, lim)   # per coordinate: sensitivity unchanged
        return data + self.plan.step(n) * z.astype(np.float64)

    def noise_share_event(self):
        return self._event

    def trainer(self, fed: FedConfig, scheduler) -> LocalTrainer:
        if self.cfg.dp.mode == "sample":
            return ClippedGradientSumTrainer(fed, scheduler, dp=self.cfg.dp, trainable=self.cfg.model.trainable)
        return super().trainer(fed, scheduler)

    def check_budget(self, cap: float) -> dict[str, Any] | None:
        """Projected ε after one more round (model size of the last round; before the first, the plan's bound)."""
        ev = self.plan.event(self.cfg.fed.clients, self._dim or self.plan.dimension, sample_rate=self.sample_rate)
        proj = self.accountant.projected_epsilon(ev, delta=self.delta)
        return {"projected_epsilon": float(proj), "max_epsilon": float(cap), "allowed": bool(proj <= cap)}


def site_privacy(cfg: RunConfig, n_local: int, *, delta: float | None, dimension: int | None = None) -> SitePrivacy:
    """The site half for the run's DP mode (ConfigError on bad DP arguments, before anything is written).
    ``dimension``: the model's parameter count (sizes the distributed-noise checks; None: their 2^24 bound)."""
    try:
        if cfg.dp.effective_placement == "distributed":
            return SiteDistributedDP(cfg, n_local, delta=delta, dimension=dimension)
        if cfg.dp.mode == "sample":
            return SiteSampleDP(cfg, n_local, delta=delta)
        if cfg.dp.mode == "client":
            return SiteClientDP(cfg, n_local, delta=delta)
        return SitePrivacy(cfg, n_local, delta=None)
    except ValueError as e:
        raise ConfigError(str(e)) from None


# ==== trainers the site halves hand out ========================================================================
class DPSGDTrainer(LocalTrainer):
    """Local training through Opacus: per-example clipping, Gaussian noise, Poisson-sampled batches."""

    def __init__(self, fed: FedConfig, scheduler, *, sigma: float, dp, trainable: str = "all") -> None:
        super().__init__(fed, scheduler, trainable=trainable)
        self.sigma, self.dp = sigma, dp

    def privatize(self, model, optimizer, data, generator, *, client_id: int, round_index: int):
        priv = make_private(module=model, optimizer=optimizer, dataset_size=len(data),
                            batch_size=min(self.fed.batch_size, len(data)),
                            noise_multiplier=self.sigma, max_grad_norm=self.dp.max_grad_norm,
                            grad_sample_mode=self.dp.grad_sample_mode,
                            # the noise must not be reproducible from the (public) run seed
                            generator=None if self.dp.secure_rng else generator, secure_mode=self.dp.secure_rng)
        self._current = priv
        if self._inject is not None:
            inject = self._inject
            # the canary enters like one more clipped example: after clipping, before the Gaussian noise
            priv.optimizer.privfed_before_noise = lambda params: inject(params, "summed_grad", 1.0)
        return priv.module, priv.optimizer, priv.batches(data.images, self.fed.local_epochs)

    def per_example_loss(self, model, x0, generator) -> torch.Tensor:
        """K = `noise_multiplicity` (noise, timestep) draws per example, rows ordered k·B + i."""
        k = self.dp.noise_multiplicity
        return super().per_example_loss(model, x0.repeat(k, *([1] * (x0.dim() - 1))) if k > 1 else x0, generator)

    def add_canaries(self, model, optimizer, batch_len: int) -> None:
        """Canaries are added inside the DP optimizer (between clipping and noise), also on empty draws."""

    def backward(self, per_example_loss: torch.Tensor) -> None:
        self._current.backward(per_example_loss, multiplicity=self.dp.noise_multiplicity)

    def dp_record(self, *, client_id: int, round_index: int, steps: int, data) -> dict | None:
        ev = self._current.event()     # the optimizer's own count of noisy steps (empty draws included)
        if ev.steps != steps:
            raise RuntimeError(f"DP step count mismatch: optimizer took {ev.steps} noisy steps, loop ran {steps}")
        return event_payload(ev)


class ClippedUpdateTrainer(LocalTrainer):
    """Plain local training whose update is clipped to L2 norm C and weighted equally (DP-FedAvg)."""

    def __init__(self, fed: FedConfig, scheduler, clip_norm: float, *, trainable: str = "all") -> None:
        super().__init__(fed, scheduler, trainable=trainable)
        self.clip_norm = clip_norm

    def train(self, global_model, data, *, client_id, round_index, generator) -> ClientUpdate:
        upd = super().train(global_model, data, client_id=client_id, round_index=round_index, generator=generator)
        upd.delta, clipped = clip_update(upd.delta, clip_norm=self.clip_norm)
        upd.weight = 1.0
        upd.info["clipped"] = bool(clipped)
        return upd


class ClippedGradientSumTrainer(DPSGDTrainer):
    """Sample-level distributed DP-SGD, the site's half of one private step per round: one Poisson batch (rate
    q = batch_size / n_local), exact per-example gradients clipped to C (the same Opacus path as local DP-SGD), summed,
    with NO local noise (the site's discrete share is added before masking). The update it returns is minus that
    sum (weight 1), so the server's unmasked total is −Σ clipped gradients + the honest shares' noise; the server
    divides by the expected union batch and takes the optimizer step."""

    def __init__(self, fed: FedConfig, scheduler, *, dp, trainable: str = "all") -> None:
        super().__init__(fed, scheduler, sigma=0.0, dp=dp, trainable=trainable)

    def make_optimizer(self, model):
        # lr 1, no momentum: the local "step" is exactly minus Opacus' clipped gradient (sum / expected batch)
        return torch.optim.SGD(trained_parameters(model), lr=1.0)

    def privatize(self, model, optimizer, data, generator, *, client_id: int, round_index: int):
        model, optimizer, batches = super().privatize(model, optimizer, data, generator, client_id=client_id,
                                                      round_index=round_index)
        return model, optimizer, itertools.islice(batches, 1)      # one private step per round

    def dp_record(self, *, client_id: int, round_index: int, steps: int, data) -> dict | None:
        if self._current.steps_taken != 1 or steps != 1:
            raise RuntimeError(f"distributed DP-SGD takes one step per round, took {self._current.steps_taken}")
        return None          # no local noise: the event is the noise share's, charged when the input is masked

    def train(self, global_model, data, *, client_id, round_index, generator) -> ClientUpdate:
        upd = super().train(global_model, data, client_id=client_id, round_index=round_index, generator=generator)
        # Opacus divides the clipped sum by the expected batch size q·n: undo that public scale
        upd.delta = upd.delta.double() * float(min(self.fed.batch_size, len(data)))
        upd.weight = 1.0
        return upd
