"""The site half of each DP mode (see :mod:`privfed.federation.privacy` for the server half) and the local
trainers it hands out: plain, DP-SGD through Opacus (unit = one image), clipped updates for DP-FedAvg (unit = one
site). A site owns this object: its σ (calibrated from its own size), its accountant (rebuilt from its own signed
receipt) and its ε cap.
"""

from __future__ import annotations

from typing import Any

import torch

from dp import GaussianEvent, PrivacyAccountant, calibrate_noise_multiplier, check_budget, make_private, \
    validate_dp_args
from dp.client_level import clip_update
from privfed.config import FedConfig, RunConfig
from privfed.errors import ConfigError
from privfed.federation.client import ClientUpdate, LocalTrainer
from privfed.federation.privacy import _expected_steps, event_payload, run_cap


# ==== site halves ==============================================================================================
class SitePrivacy:
    """A site's own privacy state: its trainer, its accountant and cap, the event it is charged per release."""

    unit = "none"

    def __init__(self, cfg: RunConfig, n_local: int, *, delta: float | None) -> None:
        self.cfg, self.n_local, self.delta = cfg, n_local, delta
        self.accountant = PrivacyAccountant(kind=cfg.dp.accountant if cfg.dp.mode != "off" else "pld")

    def trainer(self, fed: FedConfig, scheduler) -> LocalTrainer:
        return LocalTrainer(fed, scheduler)

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

    def add_noise_share(self, update):
        """Seam for distributed DP: a site adds its share of the noise before masking. None here."""
        return update


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
        return DPSGDTrainer(fed, scheduler, sigma=self.sigma, dp=self.cfg.dp)


class SiteClientDP(SitePrivacy):
    """DP-FedAvg at the site: clip the update to C and weight it 1; the server adds the noise (trusted)."""

    unit = "client"

    def trainer(self, fed: FedConfig, scheduler) -> LocalTrainer:
        return ClippedUpdateTrainer(fed, scheduler, self.cfg.dp.max_grad_norm)

    def weight(self) -> float:
        return 1.0


def site_privacy(cfg: RunConfig, n_local: int, *, delta: float | None) -> SitePrivacy:
    """The site half for the run's DP mode (ConfigError on bad DP arguments, before anything is written)."""
    try:
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

    def __init__(self, fed: FedConfig, scheduler, *, sigma: float, dp) -> None:
        super().__init__(fed, scheduler)
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

    def __init__(self, fed: FedConfig, scheduler, clip_norm: float) -> None:
        super().__init__(fed, scheduler)
        self.clip_norm = clip_norm

    def train(self, global_model, data, *, client_id, round_index, generator) -> ClientUpdate:
        upd = super().train(global_model, data, client_id=client_id, round_index=round_index, generator=generator)
        upd.delta, clipped = clip_update(upd.delta, clip_norm=self.clip_norm)
        upd.weight = 1.0
        upd.info["clipped"] = bool(clipped)
        return upd
