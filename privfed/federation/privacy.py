"""The privacy layer of a run: DP-SGD clients (unit = one image) or DP-FedAvg (unit = one site).

It owns one accountant per client built from recorded DP events (never from ε alone), calibrates the noise before
any training, refuses a round that would push a client over its cap, and rebuilds its state from the signed
ledger on resume, so the ε a resumed run reports is the ε of an uninterrupted one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import torch

from dp import (GaussianEvent, PrivacyAccountant, calibrate_noise_multiplier, check_budget, default_delta,
                make_private, privacy_statement, validate_dp_args)
from dp.client_level import aggregate_noise, clip_update
from privfed.config import FedConfig, RunConfig
from privfed.errors import ConfigError
from privfed.federation.client import ClientUpdate, LocalTrainer


def _expected_steps(n: int, fed: FedConfig) -> tuple[float, int]:
    """(Poisson sample rate q, optimizer steps per round) for a client with n examples."""
    batch = min(fed.batch_size, n)
    return batch / n, fed.local_epochs * max(1, n // batch)


class SamplePrivacy:
    """Sample-level DP-SGD: every client protects each of its images with its own (ε, δ)."""

    unit = "example"
    unit_words = "one training image"

    def __init__(self, cfg: RunConfig, client_sizes: Sequence[int]) -> None:
        dpc, fed = cfg.dp, cfg.fed
        self.cfg = cfg
        self.kind = dpc.accountant
        n_min = min(client_sizes)
        self.delta = dpc.delta if dpc.delta is not None else default_delta(max(client_sizes))
        self.delta_note = ("δ given by the user" if dpc.delta is not None else
                           f"δ = {self.delta:.3g} chosen below 1/n_local for every client")
        self.rates = [_expected_steps(n, fed) for n in client_sizes]
        self.sigmas: list[float] = []
        for n, (q, steps) in zip(client_sizes, self.rates):
            if dpc.noise_multiplier is not None:
                sigma = dpc.noise_multiplier
            else:
                sigma = calibrate_noise_multiplier(target_epsilon=dpc.target_epsilon, target_delta=self.delta,
                                                   sample_rate=q, steps=steps * fed.rounds, accountant=self.kind)
            self.sigmas.append(float(sigma))
        self.cap = dpc.max_epsilon if dpc.max_epsilon is not None else dpc.target_epsilon
        for cid, n in enumerate(client_sizes):
            validate_dp_args(target_epsilon=dpc.target_epsilon, target_delta=self.delta, n_local=n,
                             noise_multiplier=self.sigmas[cid], max_grad_norm=dpc.max_grad_norm,
                             max_epsilon=self.cap, one_round_event=self._event(cid),
                             allow_large_delta=dpc.allow_large_delta)
        self.accountants = [PrivacyAccountant(kind=self.kind) for _ in client_sizes]
        self.noise_rng = ("per client-round torch generator seeded with 64 bits from the OS CSPRNG; Opacus secure_mode "
                          "noise (sum of 4 Gaussians against floating-point attacks); the stream itself is not a "
                          "CSPRNG (torchcsprng unavailable)" if cfg.dp.secure_rng else
                          "torch generator seeded from the run seed (reproducible experiments only: NOT private "
                          "against anyone who knows the seed)")

    def _event(self, cid: int) -> GaussianEvent:
        q, steps = self.rates[cid]
        return GaussianEvent(noise_multiplier=self.sigmas[cid], sample_rate=q, steps=steps)

    # ---- round protocol ----------------------------------------------------------------------
    def check_budget(self, cid: int, round_index: int) -> dict[str, Any]:
        if self.cap is None:
            eps = self.accountants[cid].project_epsilon(self._event(cid), delta=self.delta)
            return {"projected_epsilon": eps, "max_epsilon": float("inf"), "allowed": True}
        out = check_budget(self.accountants[cid], self._event(cid), delta=self.delta, max_epsilon=self.cap)
        return {"projected_epsilon": float(out["projected_epsilon"]), "max_epsilon": float(self.cap),
                "allowed": bool(out["allowed"])}

    def trainer(self, fed: FedConfig, scheduler) -> LocalTrainer:
        return DPSGDTrainer(fed, scheduler, self)

    def post_aggregate(self, mean_delta: torch.Tensor, updates, agg, *, round_index: int) -> torch.Tensor:
        return mean_delta

    def commit_round(self, updates: Sequence[ClientUpdate], agg, *, round_index: int) -> list[dict[str, Any]]:
        """Charge every client that trained this round (also ones that dropped later: conservative)."""
        out = []
        for u in updates:
            event = GaussianEvent(**u.dp)
            acc = self.accountants[u.client_id]
            acc.add_event(event)
            out.append(self._payload(round_index, u.client_id, event, acc.epsilon(delta=self.delta)))
        return out

    def _payload(self, r: int, cid: int, event: GaussianEvent, eps: float) -> dict[str, Any]:
        return {"round": r, "client": str(cid), "unit": self.unit,
                "event": {"noise_multiplier": event.noise_multiplier, "sample_rate": event.sample_rate,
                          "steps": int(event.steps)},
                "delta": self.delta, "max_grad_norm": self.cfg.dp.max_grad_norm, "accountant": self.kind,
                "epsilon": eps}

    def restore(self, ledger_path: Path) -> None:
        """Rebuild every accountant from the ledger's dp_event records (the single source of truth)."""
        self.accountants = [PrivacyAccountant(kind=self.kind) for _ in self.accountants]
        for line in ledger_path.read_bytes().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec.get("kind") == "dp_event":
                p = rec["payload"]
                self.accountants[int(p["client"])].add_event(GaussianEvent(**p["event"]))

    def epsilons(self) -> dict[str, float]:
        return {str(c): a.epsilon(delta=self.delta) for c, a in enumerate(self.accountants) if a.events}

    def round_summary(self, selected: Sequence[int]) -> dict[str, Any]:
        eps = self.epsilons()
        return {"epsilon": eps, "epsilon_max": max(eps.values()) if eps else 0.0, "delta": self.delta,
                "report_lines": [self._table_line(eps)]}

    def _table_line(self, eps: dict[str, float]) -> str:
        cells = " ".join(f"{c}:{e:.2f}" for c, e in eps.items())
        cap = f"cap {self.cap:g}" if self.cap is not None else "no cap"
        return f"    ε per client at δ={self.delta:.2g} ({self.kind}, unit: {self.unit_words}, {cap}): {cells}"

    def notes(self) -> list[str]:
        s = sorted(self.sigmas)
        return [f"DP-SGD per client: σ = {s[0]:.3f}…{s[-1]:.3f}, clip C = {self.cfg.dp.max_grad_norm}, "
                f"Poisson sampling, accountant {self.kind}; {self.delta_note}"]

    def statement_lines(self) -> list[str]:
        return [privacy_statement(unit=self.unit_words, epsilons=self.epsilons(), delta=self.delta,
                                  accountant=self.kind, sampling="poisson",
                                  mode="sample")]


class DPSGDTrainer(LocalTrainer):
    """Local training through Opacus: per-example clipping, Gaussian noise, Poisson-sampled batches."""

    def __init__(self, fed: FedConfig, scheduler, privacy: SamplePrivacy) -> None:
        super().__init__(fed, scheduler)
        self.privacy = privacy
        self._steps: dict[int, int] = {}

    def privatize(self, model, optimizer, data, generator, *, client_id: int, round_index: int):
        p = self.privacy
        priv = make_private(module=model, optimizer=optimizer, dataset_size=len(data),
                            batch_size=min(self.fed.batch_size, len(data)),
                            noise_multiplier=p.sigmas[client_id], max_grad_norm=p.cfg.dp.max_grad_norm,
                            grad_sample_mode=p.cfg.dp.grad_sample_mode,
                            # the noise must not be reproducible from the (public) run seed
                            generator=None if p.cfg.dp.secure_rng else generator, secure_mode=p.cfg.dp.secure_rng)
        self._current = priv
        if self._inject is not None:
            inject = self._inject
            # the canary enters like one more clipped example: after clipping, before the Gaussian noise
            priv.optimizer.privfed_before_noise = lambda params: inject(params, "summed_grad", 1.0)
        return priv.module, priv.optimizer, priv.batches(data.images, self.fed.local_epochs)

    def per_example_loss(self, model, x0, generator) -> torch.Tensor:
        """K = `noise_multiplicity` (noise, timestep) draws per example, rows ordered k·B + i."""
        k = self.privacy.cfg.dp.noise_multiplicity
        return super().per_example_loss(model, x0.repeat(k, *([1] * (x0.dim() - 1))) if k > 1 else x0, generator)

    def add_canaries(self, model, optimizer, batch_len: int) -> None:
        """Canaries are added inside the DP optimizer (between clipping and noise), also on empty draws."""

    def backward(self, per_example_loss: torch.Tensor) -> None:
        self._current.backward(per_example_loss, multiplicity=self.privacy.cfg.dp.noise_multiplicity)

    def dp_record(self, *, client_id: int, round_index: int, steps: int, data) -> dict | None:
        ev = self._current.event()     # the optimizer's own count of noisy steps (empty draws included)
        if ev.steps != steps:
            raise RuntimeError(f"DP step count mismatch: optimizer took {ev.steps} noisy steps, loop ran {steps}")
        return {"noise_multiplier": ev.noise_multiplier, "sample_rate": ev.sample_rate, "steps": int(ev.steps)}


class ClientPrivacy(SamplePrivacy):
    """DP-FedAvg (McMahan et al. 2018): clip each site's update to C, Gaussian noise σ·C on the sum.

    The unit of privacy is a whole site; amplification comes from sampling `fraction` of the sites per round.
    """

    unit = "client"
    unit_words = "one whole site (all of its images)"

    def __init__(self, cfg: RunConfig, client_sizes: Sequence[int]) -> None:
        dpc, fed = cfg.dp, cfg.fed
        self.cfg = cfg
        self.kind = dpc.accountant
        self.n_clients = len(client_sizes)
        self.delta = dpc.delta if dpc.delta is not None else default_delta(self.n_clients)
        self.delta_note = ("δ given by the user" if dpc.delta is not None else
                           f"δ = {self.delta:.3g} chosen below 1/number of sites")
        self.q = fed.fraction   # each site joins a round independently with probability q (Poisson, see runner)
        if dpc.noise_multiplier is not None:
            self.sigma = dpc.noise_multiplier
        else:
            self.sigma = calibrate_noise_multiplier(target_epsilon=dpc.target_epsilon, target_delta=self.delta,
                                                    sample_rate=self.q, steps=fed.rounds, accountant=self.kind)
        self.sigmas = [self.sigma] * self.n_clients
        self.cap = dpc.max_epsilon if dpc.max_epsilon is not None else dpc.target_epsilon
        validate_dp_args(target_epsilon=dpc.target_epsilon, target_delta=self.delta, n_local=self.n_clients,
                         noise_multiplier=self.sigma, max_grad_norm=dpc.max_grad_norm, max_epsilon=self.cap,
                         one_round_event=self._event(0), allow_large_delta=dpc.allow_large_delta)
        self.accountants = [PrivacyAccountant(kind=self.kind) for _ in client_sizes]
        self.noise_rng = "torch generator seeded from the OS CSPRNG per round (server-side aggregate noise)"

    def _event(self, cid: int) -> GaussianEvent:
        return GaussianEvent(noise_multiplier=self.sigma, sample_rate=self.q, steps=1)

    def trainer(self, fed: FedConfig, scheduler) -> LocalTrainer:
        return ClippedUpdateTrainer(fed, scheduler, self.cfg.dp.max_grad_norm)

    def post_aggregate(self, mean_delta: torch.Tensor, updates, agg, *, round_index: int) -> torch.Tensor:
        """Noise σ·C on the sum of clipped updates, divided by the expected number of sites per round."""
        expected = self.q * self.n_clients
        g = torch.Generator().manual_seed(int.from_bytes(os.urandom(8), "big") >> 1)
        noise = aggregate_noise(mean_delta.shape, noise_multiplier=self.sigma,
                                clip_norm=self.cfg.dp.max_grad_norm, generator=g)
        total = mean_delta.double() * len(agg.contributors)
        return ((total + noise.double()) / expected).float()

    def commit_round(self, updates, agg, *, round_index: int) -> list[dict[str, Any]]:
        """Every site is charged each round: sampling amplification is over the selection of sites."""
        out = []
        event = self._event(0)
        for cid, acc in enumerate(self.accountants):
            acc.add_event(event)
            out.append(self._payload(round_index, cid, event, acc.epsilon(delta=self.delta)))
        return out

    def notes(self) -> list[str]:
        return [f"DP-FedAvg: σ = {self.sigma:.3f}, update clip C = {self.cfg.dp.max_grad_norm}, "
                f"site sampling q = {self.q:.2f}, accountant {self.kind}; {self.delta_note}"]

    def statement_lines(self) -> list[str]:
        return [privacy_statement(unit=self.unit_words, epsilons=self.epsilons(), delta=self.delta,
                                  accountant=self.kind, sampling="poisson", mode="client")]


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


def build_privacy(cfg: RunConfig, client_sizes: Sequence[int]):
    """Validate the DP arguments and calibrate noise; raises ConfigError before anything is trained or written."""
    try:
        if cfg.dp.mode == "sample":
            return SamplePrivacy(cfg, client_sizes)
        return ClientPrivacy(cfg, client_sizes)
    except ValueError as e:
        raise ConfigError(str(e)) from None
