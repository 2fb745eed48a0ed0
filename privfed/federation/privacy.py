"""The privacy layer of a run, one policy object per DP mode, each split into a site half and a server half.

- ``off``: no DP. Sites train plainly; the server averages.
- ``sample`` (DP-SGD, unit = one image): each **site** calibrates its own σ from its own size, runs Opacus, keeps
  its own accountant (rebuilt from its signed receipt) and refuses a round that would exceed its cap. The server
  only records the events sites report (its ledger accountants mirror the sites').
- ``client`` (DP-FedAvg, unit = one site): sites clip their update to C; the **server** adds the Gaussian noise to
  the unmasked sum, so the server sees the clean sum of clipped updates: this mode TRUSTS THE SERVER (stated in
  every statement) until distributed noise lands. Every site is charged every round (site sampling amplification).

The server half (:class:`ServerPrivacy`) is what the runner talks to: ``check_round``, ``post_aggregate(sum,
total_weight)``, ``charges``; the site half (:class:`SitePrivacy`) is what a site owns. Nothing here is normalised
and undone: aggregates arrive as ``(sum, total_weight)``.
"""

from __future__ import annotations

import os
from typing import Any, Iterable, Mapping, Sequence

import torch

from dp import (GaussianEvent, PrivacyAccountant, calibrate_noise_multiplier, check_budget, default_delta,
                privacy_statement, validate_dp_args)
from dp.client_level import aggregate_noise
from privfed.config import FedConfig, RunConfig
from privfed.errors import ConfigError

EVENT_TYPE = "gaussian"      # Poisson-subsampled Gaussian mechanism, `steps` compositions


def event_payload(event: GaussianEvent) -> dict[str, Any]:
    """The typed event as stored in the ledger and the receipts."""
    return {"type": EVENT_TYPE, "noise_multiplier": float(event.noise_multiplier),
            "sample_rate": float(event.sample_rate), "steps": int(event.steps)}


def event_from_payload(p: Mapping[str, Any]) -> GaussianEvent:
    if p.get("type") != EVENT_TYPE:
        raise ValueError(f"unknown DP event type {p.get('type')!r}")
    return GaussianEvent(noise_multiplier=p["noise_multiplier"], sample_rate=p["sample_rate"], steps=p["steps"])


def _expected_steps(n: int, fed: FedConfig) -> tuple[float, int]:
    """(Poisson sample rate q, optimizer steps per round) for a client with n examples."""
    batch = min(fed.batch_size, n)
    return batch / n, fed.local_epochs * max(1, n // batch)


def run_delta(cfg: RunConfig, client_sizes: Sequence[int]) -> tuple[float, str]:
    """(δ, how it was chosen): the user's, or below 1/n for every protected dataset."""
    if cfg.dp.delta is not None:
        return cfg.dp.delta, "δ given by the user"
    if cfg.dp.mode == "client":
        d = default_delta(len(client_sizes))
        return d, f"δ = {d:.3g} chosen below 1/number of sites"
    d = default_delta(max(client_sizes))
    return d, f"δ = {d:.3g} chosen below 1/n_local for every client"


def run_cap(cfg: RunConfig) -> float | None:
    return cfg.dp.max_epsilon if cfg.dp.max_epsilon is not None else cfg.dp.target_epsilon


# ==== server halves ============================================================================================
class ServerPrivacy:
    """What the server does about privacy for the DP mode ``off``: nothing but averaging."""

    mode = "off"
    unit = "none"
    unit_words = "none"
    delta: float | None = None
    noise_rng = "none"

    def __init__(self, cfg: RunConfig, client_sizes: Sequence[int]) -> None:
        self.cfg = cfg
        self.n_clients = len(client_sizes)
        self.kind = cfg.dp.accountant
        self.cap = run_cap(cfg)
        self.accountants = [PrivacyAccountant(kind=self.kind) for _ in client_sizes]

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    # -- round ---------------------------------------------------------------------------------------------------
    def check_round(self, round_index: int) -> tuple[list[dict[str, Any]], str | None]:
        """Server-side budget checks before any offer: (ledger budget_check payloads, abort reason or None)."""
        return [], None

    def post_aggregate(self, total: torch.Tensor, total_weight: float, *, round_index: int) -> torch.Tensor:
        """The global step from the aggregate (sum of weighted updates, total weight of the contributors)."""
        if total_weight <= 0:
            return torch.zeros_like(total, dtype=torch.float32)
        return (total.double() / total_weight).float()

    def charges(self, round_index: int, released: Mapping[int, Mapping[str, Any] | None]) -> list[dict[str, Any]]:
        """dp_event payloads for this round. ``released``: site -> the typed event it reported for its release."""
        return []

    def _payload(self, r: int, cid: int, event: GaussianEvent, eps: float) -> dict[str, Any]:
        return {"round": r, "client": str(cid), "unit": self.unit, "event": event_payload(event),
                "delta": self.delta, "max_grad_norm": self.cfg.dp.max_grad_norm, "accountant": self.kind,
                "epsilon": eps}

    def restore(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Rebuild every accountant from the verified ledger's dp_event records (the single source of truth)."""
        self.accountants = [PrivacyAccountant(kind=self.kind) for _ in self.accountants]
        for rec in records:
            if rec["kind"] == "dp_event":
                p = rec["payload"]
                self.accountants[int(p["client"])].add_event(event_from_payload(p["event"]))

    def epsilons(self) -> dict[str, float]:
        if not self.enabled:
            return {}
        return {str(c): a.epsilon(delta=self.delta) for c, a in enumerate(self.accountants) if a.events}

    def round_summary(self) -> dict[str, Any]:
        if not self.enabled:
            return {}
        eps = self.epsilons()
        return {"epsilon": eps, "epsilon_max": max(eps.values()) if eps else 0.0, "delta": self.delta,
                "report_lines": [self._table_line(eps)]}

    def _table_line(self, eps: dict[str, float]) -> str:
        cells = " ".join(f"{c}:{e:.2f}" for c, e in eps.items())
        cap = f"cap {self.cap:g}" if self.cap is not None else "no cap"
        return f"    ε per client at δ={self.delta:.2g} ({self.kind}, unit: {self.unit_words}, {cap}): {cells}"

    def notes(self) -> list[str]:
        return []

    def statement_lines(self) -> list[str]:
        return []


class ServerSampleDP(ServerPrivacy):
    """Sample-level DP-SGD: the sites add the noise; the server records the events they report."""

    mode = "sample"
    unit = "example"
    unit_words = "one training image"

    def __init__(self, cfg: RunConfig, client_sizes: Sequence[int]) -> None:
        super().__init__(cfg, client_sizes)
        self.delta, self.delta_note = run_delta(cfg, client_sizes)
        self.noise_rng = ("per client-round torch generator seeded with 64 bits from the OS CSPRNG; Opacus secure_mode "
                          "noise (sum of 4 Gaussians against floating-point attacks); the stream itself is not a "
                          "CSPRNG (torchcsprng unavailable)" if cfg.dp.secure_rng else
                          "torch generator seeded from the run seed (reproducible experiments only: NOT private "
                          "against anyone who knows the seed)")
        self.sigmas: dict[int, float] = {}

    def charges(self, round_index: int, released: Mapping[int, Mapping[str, Any] | None]) -> list[dict[str, Any]]:
        out = []
        for cid in sorted(released):
            event = event_from_payload(released[cid])
            self.sigmas[cid] = event.noise_multiplier
            acc = self.accountants[cid]
            acc.add_event(event)
            out.append(self._payload(round_index, cid, event, acc.epsilon(delta=self.delta)))
        return out

    def notes(self) -> list[str]:
        return [f"DP-SGD at each site: σ calibrated by the site from its own size, clip C = "
                f"{self.cfg.dp.max_grad_norm}, Poisson sampling, accountant {self.kind}; {self.delta_note}"]

    def statement_lines(self) -> list[str]:
        return [privacy_statement(unit=self.unit_words, epsilons=self.epsilons(), delta=self.delta,
                                  accountant=self.kind, sampling="poisson", mode="sample")]


class ServerClientDP(ServerPrivacy):
    """DP-FedAvg (McMahan et al. 2018): Gaussian noise σ·C added BY THE SERVER to the sum of clipped updates.

    The unit of privacy is a whole site; amplification comes from sampling `fraction` of the sites per round.
    The server sees the clean sum before it adds the noise: this mode trusts the server.
    """

    mode = "client"
    unit = "client"
    unit_words = "one whole site (all of its images)"

    def __init__(self, cfg: RunConfig, client_sizes: Sequence[int]) -> None:
        super().__init__(cfg, client_sizes)
        dpc, fed = cfg.dp, cfg.fed
        self.delta, self.delta_note = run_delta(cfg, client_sizes)
        self.q = fed.fraction   # each site joins a round independently with probability q (Poisson)
        if dpc.noise_multiplier is not None:
            self.sigma = dpc.noise_multiplier
        else:
            self.sigma = calibrate_noise_multiplier(target_epsilon=dpc.target_epsilon, target_delta=self.delta,
                                                    sample_rate=self.q, steps=fed.rounds, accountant=self.kind)
        self.sigmas = [self.sigma] * self.n_clients
        validate_dp_args(target_epsilon=dpc.target_epsilon, target_delta=self.delta, n_local=self.n_clients,
                         noise_multiplier=self.sigma, max_grad_norm=dpc.max_grad_norm, max_epsilon=self.cap,
                         one_round_event=self._event(0), allow_large_delta=dpc.allow_large_delta)
        self.noise_rng = "torch generator seeded from the OS CSPRNG per round (server-side aggregate noise)"

    def _event(self, cid: int) -> GaussianEvent:
        return GaussianEvent(noise_multiplier=self.sigma, sample_rate=self.q, steps=1)

    def check_round(self, round_index: int) -> tuple[list[dict[str, Any]], str | None]:
        """DP-FedAvg charges every site every round, so every site's budget is checked first."""
        out, over = [], 0
        for cid, acc in enumerate(self.accountants):
            res = check_budget(acc, self._event(cid), delta=self.delta, max_epsilon=self.cap)
            check = {"projected_epsilon": float(res["projected_epsilon"]), "max_epsilon": float(self.cap),
                     "allowed": bool(res["allowed"])}
            out.append({"round": round_index, "client": str(cid), **check})
            over += not check["allowed"]
        reason = (f"round {round_index} would push {over} site(s) over their ε cap; DP-FedAvg charges every site "
                  "each round") if over else None
        return out, reason

    def post_aggregate(self, total: torch.Tensor, total_weight: float, *, round_index: int) -> torch.Tensor:
        """Noise σ·C on the sum of clipped updates, divided by the expected number of sites per round."""
        expected = self.q * self.n_clients
        g = torch.Generator().manual_seed(int.from_bytes(os.urandom(8), "big") >> 1)
        noise = aggregate_noise(total.shape, noise_multiplier=self.sigma, clip_norm=self.cfg.dp.max_grad_norm,
                                generator=g)
        return ((total.double() + noise.double()) / expected).float()

    def charges(self, round_index: int, released: Mapping[int, Mapping[str, Any] | None]) -> list[dict[str, Any]]:
        """Every site is charged each round: sampling amplification is over the selection of sites."""
        out = []
        event = self._event(0)
        for cid, acc in enumerate(self.accountants):
            acc.add_event(event)
            out.append(self._payload(round_index, cid, event, acc.epsilon(delta=self.delta)))
        return out

    def notes(self) -> list[str]:
        return [f"DP-FedAvg: σ = {self.sigma:.3f}, update clip C = {self.cfg.dp.max_grad_norm}, "
                f"site sampling q = {self.q:.2f}, accountant {self.kind}; {self.delta_note}; the SERVER adds the "
                "noise after unmasking and sees the clean sum (trusted server)"]

    def statement_lines(self) -> list[str]:
        return [privacy_statement(unit=self.unit_words, epsilons=self.epsilons(), delta=self.delta,
                                  accountant=self.kind, sampling="poisson", mode="client"),
                "Trust: in DP-FedAvg the server adds the noise after unmasking the sum, so the server itself sees "
                "the exact sum of the sites' clipped updates; the guarantee above holds against everyone who only "
                "sees the released model, not against the server."]


SERVER_MODES = {"off": ServerPrivacy, "sample": ServerSampleDP, "client": ServerClientDP}


def server_privacy(cfg: RunConfig, client_sizes: Sequence[int]) -> ServerPrivacy:
    """The server half for the run's DP mode (ConfigError on bad DP arguments, before anything is written)."""
    try:
        return SERVER_MODES[cfg.dp.mode](cfg, client_sizes)
    except ValueError as e:
        raise ConfigError(str(e)) from None


