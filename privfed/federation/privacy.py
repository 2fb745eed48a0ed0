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

import math
import os
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch

from dp import (GaussianEvent, PrivacyAccountant, calibrate_noise_multiplier, check_budget, default_delta,
                privacy_statement, validate_dp_args)
from dp.client_level import aggregate_noise, signal_to_noise_bound
from dp.distributed import EVENT_TYPE as DDG_TYPE, DistributedAccountant, DistributedGaussianEvent
from privfed.federation.distributed_noise import DistributedNoise
from privfed.config import FedConfig, RunConfig
from privfed.errors import ConfigError

EVENT_TYPE = "gaussian"      # Poisson-subsampled Gaussian mechanism, `steps` compositions
DDG_EVENT_TYPE = DDG_TYPE    # distributed discrete Gaussian (dp.distributed), `steps` compositions


def event_payload(event) -> dict[str, Any]:
    """The typed event as stored in the ledger and the receipts."""
    if isinstance(event, DistributedGaussianEvent):
        return event.to_payload()
    return {"type": EVENT_TYPE, "noise_multiplier": float(event.noise_multiplier),
            "sample_rate": float(event.sample_rate), "steps": int(event.steps)}


def event_from_payload(p: Mapping[str, Any]):
    if p.get("type") == DDG_EVENT_TYPE:
        return DistributedGaussianEvent.from_payload(p)
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


def clip_range_fitted(cfg: RunConfig) -> bool:
    """Whether a run of ``cfg`` fits its secure-aggregation clip range to the noise (distributed noise, range unset)."""
    return cfg.dp.effective_placement == "distributed" and cfg.was_unset("secure_agg", "clip_range")


def fit_clip_range(cfg: RunConfig, client_sizes: Sequence[int], *, dimension: int) -> RunConfig:
    """``cfg`` with ``secure_agg.clip_range`` raised to what distributed noise needs, when the user left it unset.

    The schedule's range (8 for distributed DP-SGD) fits ε = 10 on the default; a smaller ε means more noise in
    the summed shares, which must stay inside ±clip_range (DistributedNoise.required_range). The fitted value is
    the larger of the two, rounded up to 3 significant digits, and written to config.toml as an explicit value, so a
    resumed run and every site read the same ring. A range the user set is never changed (a too-small one is
    refused with the value it needs); other placements are returned unchanged."""
    if not clip_range_fitted(cfg):
        return cfg
    delta, _ = run_delta(cfg, client_sizes)
    need = DistributedNoise(cfg, delta=delta, dimension=dimension, check=False).required_range()
    if need <= cfg.secure_agg.clip_range:
        return cfg
    digits = 2 - math.floor(math.log10(need))
    fitted = math.ceil(need * 10 ** digits) / 10 ** digits
    return cfg.replace(secure_agg={"clip_range": fitted})


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
    placement = "none"           # local | distributed | server (where the noise is added)
    trust = "none"               # who must be trusted for the stated guarantee (one line)
    charges_all_sites = False    # True: every site is charged every round and told so in the close message

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
    def participants(self, round_index: int, sites: Sequence[int]) -> None:
        """The sites whose updates enter this round's aggregation (before it runs)."""

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

    def optimizer_state(self) -> dict[str, torch.Tensor] | None:
        """The server optimizer's state, saved with each checkpoint so a resumed run continues it (None: no state).
        It is computed from released aggregates only (post-processing)."""
        return None

    def load_optimizer_state(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore what :meth:`optimizer_state` saved (resume)."""

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
    placement = "local"
    trust = "no one: each site adds the full noise to its own DP-SGD steps before anything leaves it"

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
    placement = "server"
    trust = ("THE SERVER: it adds the noise after unmasking and sees the exact sum of the sites' clipped updates; "
             "the guarantee holds only against those who see the released model")
    charges_all_sites = True

    def __init__(self, cfg: RunConfig, client_sizes: Sequence[int], *, dimension: int | None = None) -> None:
        super().__init__(cfg, client_sizes)
        dpc, fed = cfg.dp, cfg.fed
        self.dimension = dimension
        self.delta, self.delta_note = run_delta(cfg, client_sizes)
        self.q = fed.fraction   # each site joins a round independently with probability q (Poisson)
        self.sensitivity_factor = too_few_sites_factor(cfg)
        if dpc.noise_multiplier is not None:
            self.sigma = dpc.noise_multiplier
        else:
            # calibrate the accounted multiplier σ/m; the noise added is σ·C with σ = m·(σ/m)
            self.sigma = self.sensitivity_factor * calibrate_noise_multiplier(
                target_epsilon=dpc.target_epsilon, target_delta=self.delta, sample_rate=self.q, steps=fed.rounds,
                accountant=self.kind)
        self.sigmas = [self.sigma] * self.n_clients
        self.unamplified = [PrivacyAccountant(kind=self.kind) for _ in client_sizes]
        validate_dp_args(target_epsilon=dpc.target_epsilon, target_delta=self.delta, n_local=self.n_clients,
                         noise_multiplier=self.sigma, max_grad_norm=dpc.max_grad_norm, max_epsilon=self.cap,
                         one_round_event=self._event(0), allow_large_delta=dpc.allow_large_delta)
        self.noise_rng = "torch generator seeded from the OS CSPRNG per round (server-side aggregate noise)"

    def restore(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Also the ε without amplification: from the signed round_start records (the sites selected, a superset of
        those whose update entered: conservative)."""
        records = list(records)
        super().restore(records)
        self.unamplified = [PrivacyAccountant(kind=self.kind) for _ in self.unamplified]
        for rec in records:
            if rec["kind"] == "round_start":
                for c in rec["payload"]["selected"]:
                    self.unamplified[int(c)].add_event(GaussianEvent(noise_multiplier=self.sigma, sample_rate=1.0,
                                                                     steps=1))

    def participants(self, round_index: int, sites: Sequence[int]) -> None:
        """Without amplification (who took part is known, so a noise-only round reveals nothing about a site's data):
        a site is charged N(0, σ²C²) at sensitivity C for each round its update entered."""
        for cid in sites:
            self.unamplified[cid].add_event(GaussianEvent(noise_multiplier=self.sigma, sample_rate=1.0, steps=1))

    def _event(self, cid: int) -> GaussianEvent:
        """σ/m: a round with fewer than m drawn sites releases noise only, so one site's presence can move the
        release by the sum of m clipped updates (m·C), not C (see :func:`too_few_sites_factor`)."""
        return GaussianEvent(noise_multiplier=self.sigma / self.sensitivity_factor, sample_rate=self.q, steps=1)

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
        m = self.sensitivity_factor
        return [f"DP-FedAvg, noise placement 'server' (trusts the server): σ = {self.sigma:.3f}, update clip C = "
                f"{self.cfg.dp.max_grad_norm}, site sampling q = {self.q:.2f}"
                + (f", accounted sensitivity {m}·C (a round that draws fewer than {m} sites releases noise only)"
                   if m > 1 else "")
                + f", accountant {self.kind}; {self.delta_note}; the SERVER adds the noise after unmasking and sees "
                "the clean sum (trusted server)"] + swamped_noise_warning(self.q * self.n_clients, self.sigma,
                                                                         self.dimension)

    def statement_lines(self) -> list[str]:
        return [privacy_statement(unit=self.unit_words, epsilons=self.epsilons(), delta=self.delta,
                                  accountant=self.kind, sampling="poisson", mode="client"),
                "Trust (placement 'server', trusts the server): in DP-FedAvg the server adds the noise after "
                "unmasking the sum, so the server itself sees the exact sum of the sites' clipped updates; the "
                "guarantee above (with site-sampling amplification) holds against everyone who only sees the released "
                "model; against the server there is none."] + self._unamplified_lines()

    def _unamplified_lines(self) -> list[str]:
        if self.q >= 1.0:
            return []
        eps = {str(c): a.epsilon(delta=self.delta) for c, a in enumerate(self.unamplified) if a.events}
        cells = ", ".join(f"{c}: ε = {e:.2f}" for c, e in eps.items()) or "no site took part"
        return [f"Without site-sampling amplification (against anyone who knows which sites took part in which "
                f"round, e.g. a reader of the ledger, but not against the server): at δ = {self.delta:.3g}, {cells}."]


class ServerDistributedDP(ServerPrivacy):
    """DP-FedAvg with distributed noise: each site adds an exact discrete Gaussian share in the integer ring of
    secure aggregation before masking (:mod:`privfed.federation.distributed_noise`); the server only unmasks a sum
    that already carries the noise of at least t − n_C honest survivors, and adds nothing itself.

    Every site takes part in every round (fraction = 1): who takes part is visible to the server, so no sampling
    amplification is claimed and the stated ε holds against the server too. A site is charged for the rounds its
    masked update reached the server; the typed event is ``distributed_discrete_gaussian``, accounted by RDP.
    """

    mode = "client"
    unit = "client"
    unit_words = "one whole site (all of its images)"
    placement = "distributed"
    trust = ("at least t − n_C of each round's surviving sites are honest (their noise shares alone meet σ); the "
             "server never sees a sum without noise")

    def __init__(self, cfg: RunConfig, client_sizes: Sequence[int], *, dimension: int | None = None) -> None:
        super().__init__(cfg, client_sizes)
        self.delta, self.delta_note = run_delta(cfg, client_sizes)
        self.kind = "rdp"
        self.accountants = [DistributedAccountant() for _ in client_sizes]
        # sample level, dp.public_subspace > 0: callable(mean_gradient, round) -> its projection onto public
        # gradients (privfed.federation.public_subspace); the runner sets it once the model exists
        self.projector: Callable[[torch.Tensor, int], torch.Tensor] | None = None
        if cfg.dp.mode == "sample":
            # sample level: one private step per round; q_i per site; the step divides by the expected union batch
            self.mode, self.unit, self.unit_words = "sample", "example", "one training image"
            self.rates = [min(cfg.fed.batch_size, n) / n for n in client_sizes]
            self.union_batch = float(sum(min(cfg.fed.batch_size, n) for n in client_sizes))
            self._adam: dict[str, Any] = {}
        else:
            self.rates = [1.0] * len(client_sizes)
        self.plan = DistributedNoise(cfg, delta=self.delta, dimension=dimension)
        self.dimension = dimension
        self.sigma = self.plan.z
        self.sigmas = [self.sigma] * self.n_clients
        self._round_sites = self.n_clients
        self._dim: int | None = None
        self.noise_rng = ("each site's share: exact discrete Gaussian sampler (Canonne-Kamath-Steinke 2020, integer "
                          "arithmetic) on bytes from the site's OS CSPRNG (os.urandom)")

    def restore(self, records: Iterable[Mapping[str, Any]]) -> None:
        self.accountants = [DistributedAccountant() for _ in self.accountants]
        for rec in records:
            if rec["kind"] == "dp_event":
                p = rec["payload"]
                self.accountants[int(p["client"])].add_event(event_from_payload(p["event"]))

    def participants(self, round_index: int, sites: Sequence[int]) -> None:
        self._round_sites = len(sites)

    def check_round(self, round_index: int) -> tuple[list[dict[str, Any]], str | None]:
        out, over = [], 0
        if self.mode == "sample":
            return out, None        # sample level: each site checks its own cap at the offer (recorded by the server)
        for cid, acc in enumerate(self.accountants):
            ev = self.plan.event(self.n_clients, self._dim or self.plan.dimension, sample_rate=self.rates[cid])
            proj = acc.projected_epsilon(ev, delta=self.delta)
            allowed = self.cap is None or proj <= self.cap
            out.append({"round": round_index, "client": str(cid), "projected_epsilon": float(proj),
                        "max_epsilon": float(self.cap), "allowed": bool(allowed)})
            over += not allowed
        return out, (f"round {round_index} would push {over} site(s) over their ε cap" if over else None)

    def post_aggregate(self, total: torch.Tensor, total_weight: float, *, round_index: int) -> torch.Tensor:
        """The unmasked sum already holds the sites' noise. Site level: divide by the number of sites (fixed
        denominator). Sample level: the total is −Σ clipped gradients + noise; divided by the expected union
        batch it is a noisy gradient step, taken with Adam (lr = fed.lr) on the server (post-processing)."""
        self._dim = int(total.numel())
        if self.mode != "sample":
            return (total.double() / self.n_clients).float()
        g = -total.double() / self.union_batch          # the noisy mean gradient
        if self.projector is not None:
            # post-processing with public data: no ε
            tau = self.noise_std(round(total_weight), g.numel()) if self.cfg.dp.public_subspace_shrink else None
            g = self.projector(g, round_index, noise_std=tau)
        a = self._adam
        if not a:
            a.update(m=torch.zeros_like(g), v=torch.zeros_like(g), t=0)
        b1, b2, eps = 0.9, 0.999, 1e-8
        a["t"] += 1
        a["m"].mul_(b1).add_(g, alpha=1 - b1)
        a["v"].mul_(b2).addcmul_(g, g, value=1 - b2)
        mhat, vhat = a["m"] / (1 - b1 ** a["t"]), a["v"] / (1 - b2 ** a["t"])
        return (-self.cfg.fed.lr * mhat / (vhat.sqrt() + eps)).float()

    def noise_std(self, n: int, dimension: int) -> float:
        """τ: the standard deviation per coordinate of the noise in the noisy mean gradient of a round whose sum
        holds n sites' shares at the plan's σ (gradient units): each share is γ·Z in the masking inputs
        (contribution / n), so the unmasked total carries n·γ·σ·√n, divided by the expected union batch."""
        ev = self.plan.event(n, dimension)
        return n * self.plan.step(n) * ev.share_stddev * math.sqrt(n) / self.union_batch

    def optimizer_state(self) -> dict[str, torch.Tensor] | None:
        a = getattr(self, "_adam", None)
        if not a:
            return None
        return {"adam_m": a["m"].contiguous(), "adam_v": a["v"].contiguous(),
                "adam_t": torch.tensor([a["t"]], dtype=torch.int64)}

    def load_optimizer_state(self, state: Mapping[str, torch.Tensor]) -> None:
        if self.mode != "sample":
            return
        self._adam = {"m": state["adam_m"].clone(), "v": state["adam_v"].clone(), "t": int(state["adam_t"][0])}

    def charges(self, round_index: int, released: Mapping[int, Mapping[str, Any] | None]) -> list[dict[str, Any]]:
        out = []
        if not released or self._dim is None:
            return out
        for cid in sorted(released):
            event = self.plan.event(self._round_sites, self._dim, sample_rate=self.rates[cid])
            acc = self.accountants[cid]
            acc.add_event(event)
            out.append(self._payload(round_index, cid, event, acc.epsilon(delta=self.delta)))
        return out

    def notes(self) -> list[str]:
        sa = self.cfg.secure_agg
        n = self.n_clients
        if self.mode == "sample":
            return [f"DP-SGD, noise placement 'distributed': one private step per round; each site Poisson-samples "
                    f"its images (q = {min(self.rates):.3g}–{max(self.rates):.3g})"
                    + (f", draws each one's diffusion timestep from [{self.cfg.fed.min_timestep}, "
                       f"{self.cfg.model.num_train_timesteps})" if self.cfg.fed.min_timestep else "")
                    + f", clips each example's gradient to "
                    f"C = {self.cfg.dp.max_grad_norm}, sums them and adds an exact discrete Gaussian share before "
                    f"masking; honest noise alone has σ/C = {self.sigma:.3f} (t − n_C = {self.plan.honest_sites(n)} "
                    f"honest shares of {n}; calibrated without sampling amplification, accounted with it); the "
                    f"server divides the unmasked sum by the expected union batch {self.union_batch:g}"
                    + (f", projects it onto the span of {self.cfg.dp.public_subspace} public per-example gradients "
                       f"at the current model"
                       + (", weighting each principal direction by its estimated signal share against the known "
                          "noise" if self.cfg.dp.public_subspace_shrink else "")
                       + " (post-processing with public images: no ε)" if self.cfg.dp.public_subspace else "")
                    + f" and takes an Adam step; accountant: RDP of the Poisson-subsampled distributed discrete "
                    f"Gaussian (Kairouz, Liu & Steinke 2021; Zhu & Wang 2019); {self.delta_note}"]
        return [f"DP-FedAvg, noise placement 'distributed': each site adds an exact discrete Gaussian share before "
                f"masking; honest noise alone has σ/C = {self.sigma:.3f} (t − n_C = {self.plan.honest_sites(n)} "
                f"honest shares of {n}, threshold fraction {sa.threshold_fraction}, max_colluders "
                f"{sa.max_colluders}); update clip C = {self.cfg.dp.max_grad_norm}; every site every round (no "
                f"sampling amplification claimed); accountant: RDP of the distributed discrete Gaussian (Kairouz, "
                f"Liu & Steinke 2021); {self.delta_note}"] + swamped_noise_warning(n, self.sigma, self.dimension)

    def statement_lines(self) -> list[str]:
        return [privacy_statement(unit=self.unit_words, epsilons=self.epsilons(), delta=self.delta,
                                  accountant="rdp (distributed discrete Gaussian)",
                                  sampling="poisson" if self.mode == "sample" else "none", mode=self.mode),
                "Trust (placement 'distributed'): the server only ever unmasks a sum that already contains the noise "
                "of at least t − n_C honest surviving sites, so the guarantee above holds against the server as well "
                "as against everyone who sees the model ("
                + ("the sampling of examples inside each site is secret from the server, so its amplification holds "
                   "against the server too; every site takes part in every round)."
                   if self.mode == "sample" else
                   "no sampling amplification is claimed: every site takes part in every round).")]


SWAMPED_RATIO = 0.1   # below this n/(σ√d) the noise's norm is over 10× the largest possible signal


def swamped_noise_warning(sites_per_round: float, sigma: float, dimension: int | None) -> list[str]:
    """A one-line warning (in a list, empty when there is nothing to say) for site-level DP whose noise must swamp
    the signal: ‖Σ clipped updates‖ / ‖noise‖ ≤ n/(σ√d) below :data:`SWAMPED_RATIO` (``dimension``: the number of
    trained parameters; None: unknown, no warning)."""
    if dimension is None or sites_per_round <= 0:
        return []
    ratio = signal_to_noise_bound(sites_per_round=sites_per_round, noise_multiplier=sigma, dimension=dimension)
    if ratio >= SWAMPED_RATIO:
        return []
    need = sigma * dimension ** 0.5
    return [f"warning: site-level noise swamps the signal: with {sites_per_round:g} sites per round, σ = {sigma:.3g} "
            f"and {dimension:,} trained parameters, the noise's norm is at least {1 / ratio:,.0f}× the largest "
            f"possible sum of clipped updates (n/(σ√d) = {ratio:.3g}); expect the model not to learn. Bringing the "
            f"ratio to 1 takes about σ√d ≈ {need:,.0f} sites per round (or fewer trained parameters, "
            f"model.trainable); with few sites, DP-SGD (dp.mode = \"sample\", unit one image) learns instead"]


def too_few_sites_factor(cfg: RunConfig) -> int:
    """m for DP-FedAvg with Poisson site sampling (fraction < 1): a round that draws fewer than m sites (the run's
    min_clients, and secure aggregation's smallest round) releases noise only, so adding one site can turn a
    noise-only release into the sum of m clipped updates — sensitivity m·C. With simulated dropouts a round aborts
    below the threshold t, so m is at least t (for all sites). 1 when every site takes every round."""
    if cfg.fed.fraction >= 1.0:
        return 1
    m = min(cfg.fed.min_clients, cfg.fed.clients)
    if cfg.secure_agg.mode != "off":
        m = max(m, cfg.secure_agg.min_clients)
        if cfg.secure_agg.dropout_rate > 0 and cfg.secure_agg.mode != "ckks":
            # dropouts can leave exactly t survivors with the site and t − 1 (abort: noise only) without it
            m = max(m, cfg.secure_agg.threshold(cfg.fed.clients))
    return max(1, m)


SERVER_MODES = {"off": ServerPrivacy, "sample": ServerSampleDP, "client": ServerClientDP}


def server_privacy(cfg: RunConfig, client_sizes: Sequence[int], *, dimension: int | None = None) -> ServerPrivacy:
    """The server half for the run's DP mode (ConfigError on bad DP arguments, before anything is written).
    ``dimension``: the model's parameter count (sizes the distributed-noise checks; None: their 2^24 bound)."""
    try:
        if cfg.dp.effective_placement == "distributed":
            return ServerDistributedDP(cfg, client_sizes, dimension=dimension)
        if cfg.dp.mode == "client":
            return ServerClientDP(cfg, client_sizes, dimension=dimension)
        return SERVER_MODES[cfg.dp.mode](cfg, client_sizes)
    except ValueError as e:
        raise ConfigError(str(e)) from None


