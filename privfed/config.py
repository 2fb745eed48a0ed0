"""Run configuration: frozen dataclasses that validate on construction and round-trip through TOML.

Every privacy-relevant argument is keyword-only and named with its unit (see DESIGN.md §3).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

import tomli_w

from privfed.errors import ConfigError

PARTITIONS = ("iid", "dirichlet", "quantity")
DP_MODES = ("sample", "client", "off")
# where the DP noise is added: "local" (each site's DP-SGD), "distributed" (each site adds a share of discrete
# noise before masking), "server" (the server, after unmasking: trusted); "auto": local for sample, server for client
# (the meaning it had when it was the default, kept so that earlier runs' config.toml files read the same). Unset:
# RunConfig chooses (`RunConfig.default_placement`).
DP_PLACEMENTS = ("auto", "local", "distributed", "server")
# the schedule each placement defaults to when a key is unset. Distributed DP-SGD takes one private step per round
# over the union batch, so it wants more rounds, a batch that covers each site (q = 1 on the digits), a smaller
# server Adam step and room in the ring for the noisy sum (README "Where the noise goes"; examples/sweeps/
# public_subspace.toml measured this recipe). Every other run (local DP-SGD, DP-FedAvg, non-private) trains locally.
SCHEDULES = {
    "local": {("fed", "rounds"): 15, ("fed", "batch_size"): 64, ("fed", "lr"): 2e-3,
              ("secure_agg", "clip_range"): 0.25},
    "distributed-sample": {("fed", "rounds"): 30, ("fed", "batch_size"): 512, ("fed", "lr"): 5e-4,
                           ("secure_agg", "clip_range"): 8.0},
}
# rank k of the public gradient subspace when distributed DP-SGD has public images (at most the public images there
# are), its directions weighted by their estimated signal (public_subspace_shrink; examples/sweeps/
# public_subspace_shrink.toml measured it against the earlier default, k = 64 without weights)
PUBLIC_SUBSPACE_DEFAULT = 512
PUBLIC_SUBSPACE_MIN_IMAGES = 64    # fewer public images than this: no projection by default
# with that default projection the sites train on timesteps t >= T / MIN_TIMESTEP_DIVISOR only (fed.min_timestep):
# the public span misses 12-15 % of the sites' small-t gradient energy, against <= 1 % above (README "Training the
# private rounds on t >= 200"); the small-t (cleaning) stage keeps what public pretraining and shared weights give it
MIN_TIMESTEP_DIVISOR = 5
# what an unset key reads as in a section on its own (RunConfig then chooses by placement)
SECTION_DEFAULTS = {"dp": {"public_subspace": 0, "public_subspace_shrink": False},
                    **{sec: {k: v for (s, k), v in SCHEDULES["local"].items() if s == sec}
                       for sec in ("fed", "secure_agg")}}
SECTION_DEFAULTS["fed"] |= {"min_timestep": 0}     # not a schedule key: it follows the projection (_resolve_unset)
PRETRAIN_BATCH_DEFAULT = 64        # public pretraining batch when neither it nor fed.batch_size is set
SECAGG_MODES = ("secagg", "secagg+", "ckks", "off")
ACCOUNTANTS = ("pld", "prv", "rdp")
PUBLIC_PRETRAIN = ("auto", "typeset-digits", "none")
# which parameters the sites train and the updates carry (privfed.models.unet.trainable_parameters)
TRAINABLE = ("all", "decoder", "norms_biases")


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """Where the images come from and how they are split across clients."""

    dataset: str = "digits"          # digits | npz | folder | a MedMNIST flag such as pneumoniamnist
    path: str | None = None          # .npz file or image folder, for dataset npz/folder (or a local MedMNIST file)
    image_size: int | None = None    # resize folder images to this square size (pixels); None keeps npz/digits size
    partition: str = "dirichlet"
    alpha: float = 0.5               # Dirichlet concentration (label skew); larger means closer to IID
    quantity_sigma: float = 1.0      # log-normal sigma of client sizes for quantity skew
    test_fraction: float = 0.2       # only for datasets without an official test split (digits, folders)
    val_fraction: float = 0.0        # digits, folders: a validation split (fid_val) taken out of the training images

    def __post_init__(self) -> None:
        _check_types(self, "data")
        if self.partition not in PARTITIONS:
            raise ConfigError(f"partition must be one of {', '.join(PARTITIONS)}; got {self.partition!r}")
        if not self.alpha > 0:
            raise ConfigError(f"alpha (Dirichlet concentration) must be > 0; got {self.alpha}")
        if not self.quantity_sigma >= 0:
            raise ConfigError(f"quantity_sigma must be >= 0; got {self.quantity_sigma}")
        if not 0 < self.test_fraction < 1:
            raise ConfigError(f"test_fraction must be in (0, 1); got {self.test_fraction}")
        if not 0 <= self.val_fraction < 1 or self.test_fraction + self.val_fraction >= 1:
            raise ConfigError(f"val_fraction must be in [0, 1) with test_fraction + val_fraction < 1; got "
                              f"val_fraction {self.val_fraction}, test_fraction {self.test_fraction}")
        if self.val_fraction > 0 and self.dataset not in ("digits", "folder"):
            raise ConfigError(f"val_fraction applies to the digits and image folders; dataset {self.dataset!r} "
                              "brings its own validation split (MedMNIST files: val_images, val_labels)")
        if self.dataset in ("npz", "folder") and not self.path:
            raise ConfigError(f"dataset {self.dataset!r} needs --data PATH")
        if self.image_size is not None and not 4 <= self.image_size <= 256:
            raise ConfigError(f"image_size must be in [4, 256] pixels; got {self.image_size}")


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """diffusers UNet2DModel and scheduler sizes; block widths scale with `base_channels`."""

    base_channels: int = 16
    layers_per_block: int = 1
    attention: bool = False          # self-attention at the lowest resolution (slower under DP-SGD)
    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"
    sampler: str = "ddim"            # ddim | ddpm
    sampling_steps: int = 50         # DDIM steps (DDPM always uses num_train_timesteps)
    # non-private pretraining on public data before any site trains (no ε spent); auto = typeset-digits for the
    # digits dataset, none otherwise (there is no public look-alike of the sites' medical images here)
    public_pretrain: str = "auto"
    pretrain_steps: int = 1500
    pretrain_lr: float = 2e-3
    pretrain_set_size: int = 4000
    # None: RunConfig resolves it to 64 (PRETRAIN_BATCH_DEFAULT), or to fed.batch_size where that is set explicitly
    # (as before the placement schedules); set it when sweeping fed.batch_size so the public model stays the same
    pretrain_batch_size: int | None = None
    # the parameters federated training changes (public pretraining always trains all): all, decoder (up blocks and
    # output layers) or norms_biases (normalisation weights and every bias); the rest stay at their initial values
    trainable: str = "all"

    def __post_init__(self) -> None:
        _check_types(self, "model")
        if self.base_channels < 8 or self.base_channels % 8:
            raise ConfigError(f"base_channels must be a multiple of 8, >= 8; got {self.base_channels}")
        if self.layers_per_block < 1:
            raise ConfigError("layers_per_block must be >= 1")
        if self.sampler not in ("ddim", "ddpm"):
            raise ConfigError(f"sampler must be ddim or ddpm; got {self.sampler!r}")
        if not 1 <= self.sampling_steps <= self.num_train_timesteps:
            raise ConfigError("sampling_steps must be in [1, num_train_timesteps]")
        if self.public_pretrain not in PUBLIC_PRETRAIN:
            raise ConfigError(f"public_pretrain must be one of {', '.join(PUBLIC_PRETRAIN)}; "
                              f"got {self.public_pretrain!r}")
        if self.trainable not in TRAINABLE:
            raise ConfigError(f"model.trainable must be one of {', '.join(TRAINABLE)}; got {self.trainable!r}")
        if self.pretrain_batch_size is not None and self.pretrain_batch_size < 1:
            raise ConfigError(f"pretrain_batch_size must be >= 1; got {self.pretrain_batch_size}")
        if self.pretrain_steps < 1 or self.pretrain_set_size < 1 or not self.pretrain_lr > 0:
            raise ConfigError("pretrain_steps and pretrain_set_size must be >= 1 and pretrain_lr > 0")


@dataclass(frozen=True, kw_only=True)
class FedConfig:
    """Federated round loop: who trains, how long, and how updates are combined."""

    clients: int = 10
    rounds: int | None = None        # None: the placement's schedule (SCHEDULES: 15, or 30 for distributed DP-SGD)
    fraction: float = 1.0            # fraction of clients selected per round, in (0, 1]
    local_epochs: int = 2
    batch_size: int | None = None    # expected local batch size (examples); Poisson-sampled under DP; None: 64
                                     # (512 for distributed DP-SGD)
    lr: float | None = None          # client Adam learning rate (distributed DP-SGD: the server's Adam step);
                                     # None: 2e-3 (5e-4 for distributed DP-SGD)
    server_lr: float = 1.0           # FedAvg step size on the averaged update
    min_clients: int = 2             # end the run cleanly when fewer clients can train
    # decay per round of an exponential moving average of the global model: evaluation and the released model use
    # the average (0 = off). Post-processing of the released rounds, so it costs no privacy.
    ema_decay: float = 0.0
    # the lowest diffusion timestep the sites' training loss draws (uniform on [min_timestep, T)); evaluation and
    # public pretraining always use all T. None: T // 5 with the default public subspace of distributed DP-SGD, else 0
    min_timestep: int | None = None

    def __post_init__(self) -> None:
        _check_types(self, "fed")
        _fill_unset(self, "fed")
        if self.clients < 1:
            raise ConfigError(f"clients must be >= 1; got {self.clients}")
        if self.rounds < 1:
            raise ConfigError(f"rounds must be >= 1; got {self.rounds}")
        if not 0 < self.fraction <= 1:
            raise ConfigError(f"fraction must be in (0, 1]; got {self.fraction}")
        if self.local_epochs < 1:
            raise ConfigError(f"local_epochs must be >= 1; got {self.local_epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1; got {self.batch_size}")
        if not self.lr > 0 or not self.server_lr > 0:
            raise ConfigError("lr and server_lr must be > 0")
        if self.min_clients < 1:
            raise ConfigError("min_clients must be >= 1")
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"ema_decay must be in [0, 1); got {self.ema_decay}")
        if self.min_timestep < 0:
            raise ConfigError(f"min_timestep must be >= 0; got {self.min_timestep}")


@dataclass(frozen=True, kw_only=True)
class DPConfig:
    """Differential privacy. `mode`: sample (DP-SGD, unit = one image), client (DP-FedAvg, unit = one site), off."""

    mode: str = "sample"
    target_epsilon: float | None = 10.0   # calibrates noise_multiplier when it is not given
    delta: float | None = None            # None -> below 1/n_local (sample) or 1/clients (client)
    max_grad_norm: float = 1.0            # L2 clip per example (sample) or per client update (client)
    noise_multiplier: float | None = None # sigma / clip; overrides target_epsilon calibration
    max_epsilon: float | None = None      # hard cap per client; None -> target_epsilon
    accountant: str = "pld"
    grad_sample_mode: str = "ghost"           # fastest exact mode here (benchmarks/bench_dp.py); all three exact
    noise_multiplicity: int = 1           # (noise, timestep) draws averaged per example before clipping (DPDM)
    allow_large_delta: bool = False
    secure_rng: bool = True               # sampling + noise from an OS-CSPRNG-seeded generator, Opacus secure_mode
    # local | distributed | server | auto (see DP_PLACEMENTS); None: RunConfig.default_placement (distributed DP-SGD
    # where public images exist and the aggregation carries noise shares, else local; server for client level)
    placement: str | None = None
    # distributed DP-SGD: the server projects the noisy mean gradient onto the span of this many public
    # per-example gradients at the current model (0 = off); post-processing with public data, no ε.
    # None: min(512, public images) for distributed DP-SGD with at least 64 public images, else 0
    public_subspace: int | None = None
    # with public_subspace: weight each principal direction of the public gradients by its estimated signal share
    # (positive-part James-Stein: max(0, 1 − τ²/a²), τ the noise std per coordinate the server knows from the plan)
    # instead of keeping all k directions whole; post-processing, no ε. None: on where public_subspace is unset too
    # (the default subspace), off where k is given (so config.toml files that name k without this key, written
    # before it existed, read as they did)
    public_subspace_shrink: bool | None = None

    def __post_init__(self) -> None:
        _check_types(self, "dp")
        _fill_unset(self, "dp")
        if self.mode not in DP_MODES:
            raise ConfigError(f"dp mode must be one of {', '.join(DP_MODES)}; got {self.mode!r}")
        if self.grad_sample_mode not in ("hooks", "ghost", "functorch"):
            raise ConfigError(f"grad_sample_mode must be hooks, ghost or functorch; got {self.grad_sample_mode!r}")
        if not 1 <= self.noise_multiplicity <= 64:
            raise ConfigError(f"noise_multiplicity must be an integer in [1, 64]; got {self.noise_multiplicity!r}")
        if self.noise_multiplicity > 1 and self.grad_sample_mode == "ghost":
            raise ConfigError("noise_multiplicity > 1 needs grad_sample_mode hooks or functorch (ghost clipping "
                              "cannot average an example's draws before clipping)")
        if self.accountant not in ACCOUNTANTS:
            raise ConfigError(f"accountant must be one of {', '.join(ACCOUNTANTS)}; got {self.accountant!r}")
        if self.target_epsilon is not None and not self.target_epsilon > 0:
            raise ConfigError(f"target epsilon must be > 0; got {self.target_epsilon}")
        if self.delta is not None and not 0 < self.delta < 1:
            raise ConfigError(f"delta must be in (0, 1); got {self.delta}")
        if not self.max_grad_norm > 0:
            raise ConfigError(f"max_grad_norm must be > 0; got {self.max_grad_norm}")
        if self.noise_multiplier is not None and not self.noise_multiplier >= 0:
            raise ConfigError(f"noise_multiplier must be >= 0; got {self.noise_multiplier}")
        if self.max_epsilon is not None and not self.max_epsilon > 0:
            raise ConfigError(f"max epsilon must be > 0; got {self.max_epsilon}")
        if self.mode != "off" and self.target_epsilon is None and self.noise_multiplier is None:
            raise ConfigError("DP needs --target-epsilon or --noise-multiplier")
        if not 0 <= self.public_subspace <= 4096:
            raise ConfigError(f"dp public_subspace must be an integer in [0, 4096] (0 = off); "
                              f"got {self.public_subspace!r}")
        if self.placement is not None and self.placement not in DP_PLACEMENTS:
            raise ConfigError(f"dp placement must be one of {', '.join(DP_PLACEMENTS)}; got {self.placement!r}")
        allowed = {"sample": ("local", "distributed"), "client": ("server", "distributed"), "off": ()}[self.mode]
        if self.placement not in (None, "auto") and self.placement not in allowed:
            hint = {"sample": " (DP-SGD noise is added by the sites: locally or as distributed shares)",
                    "off": " (DP is off: there is no noise to place)"}.get(self.mode, "")
            raise ConfigError(f"dp placement {self.placement!r} is not available with dp mode {self.mode!r}; "
                              f"allowed: {', '.join(allowed) or 'auto'}{hint}")

    @property
    def effective_placement(self) -> str:
        """Where the noise is added: local | distributed | server, or "none" when DP is off. An unset placement is
        resolved by RunConfig (which sees the aggregation); on a bare DPConfig it reads as "auto"."""
        if self.mode == "off":
            return "none"
        if self.placement not in (None, "auto"):
            return self.placement
        return "local" if self.mode == "sample" else "server"


@dataclass(frozen=True, kw_only=True)
class SecAggConfig:
    """Secure aggregation of client updates: the server only sees the sum over survivors.

    With n sites in a round the threshold is t = floor(threshold_fraction·n) + 1; every site refuses a round unless
    n/2 < t <= n and, against an active server working with up to `max_colluders` (n_C) sites, t >= floor((n + n_C)/2)
    + 1. `RunConfig` checks these for the configured round size at load, before a run directory exists.
    """

    mode: str = "secagg+"
    # per-coordinate clip of the (weighted) update before quantization; None: 0.25 (8.0 for distributed DP-SGD,
    # whose summed noisy gradients need the room), raised under distributed noise to what the noise needs
    # (privfed.federation.privacy.fit_clip_range, once the data sizes and the model are known)
    clip_range: float | None = None
    threshold_fraction: float = 0.67 # t = floor(threshold_fraction * n) + 1, in [0.5, 1)
    dropout_rate: float = 0.0        # simulated fraction of selected clients that drop at the masked-input stage
    max_colluders: int = 0           # n_C: colluding sites tolerated against an active server (needs t > (n+n_C)/2)
    failure_log2: int = 40           # SecAgg+ graph: accept a failure probability of at most 2^-failure_log2
    min_clients: int = 3             # the smallest round (sites) a site accepts
    seeded_rounding: bool = False    # stochastic rounding from the run seed (reproducible; experiments only);
                                     # false: each site rounds with its own OS-CSPRNG generator

    def __post_init__(self) -> None:
        _check_types(self, "secure_agg")
        _fill_unset(self, "secure_agg")
        if self.mode not in SECAGG_MODES:
            raise ConfigError(f"secure-agg mode must be one of {', '.join(SECAGG_MODES)}; got {self.mode!r}")
        if not self.clip_range > 0:
            raise ConfigError("secure-agg clip_range must be > 0")
        if not 0.5 <= self.threshold_fraction < 1:
            raise ConfigError(f"secure-agg threshold_fraction must be in [0.5, 1) (t = floor(fraction·n) + 1 must "
                              f"satisfy n/2 < t <= n); got {self.threshold_fraction}")
        if not 0 <= self.dropout_rate < 0.5:
            raise ConfigError("secure-agg dropout_rate must be in [0, 0.5)")
        if self.dropout_rate > 1 - self.threshold_fraction:
            raise ConfigError(f"secure-agg dropout_rate {self.dropout_rate} leaves fewer survivors than the threshold "
                              f"fraction {self.threshold_fraction}: every round would abort")
        if self.max_colluders < 0:
            raise ConfigError(f"secure-agg max_colluders must be >= 0; got {self.max_colluders}")
        if not 10 <= self.failure_log2 <= 256:
            raise ConfigError(f"secure-agg failure_log2 must be in [10, 256] (failure probability 2^-failure_log2); "
                              f"got {self.failure_log2}")
        if self.min_clients < 2:
            raise ConfigError(f"secure-agg min_clients must be >= 2 (a sum of one site is that site's update); "
                              f"got {self.min_clients}")

    def threshold(self, n: int) -> int:
        """t for a round of n sites: floor(threshold_fraction·n) + 1 (as `secure_agg.SecAggParams.threshold`)."""
        return int(math.floor(self.threshold_fraction * n)) + 1

    def check_round(self, n: int) -> int:
        """Raise ConfigError unless every site would accept a round of n sites; return its threshold t."""
        if self.mode == "ckks":
            # homomorphic aggregation: no threshold; the key holder decrypts only sums of >= min_clients sites
            import importlib.util
            if importlib.util.find_spec("tenseal") is None:
                raise ConfigError("secure-agg mode ckks needs TenSEAL: pip install -c constraints.txt -e '.[he]'")
            if n < self.min_clients:
                raise ConfigError(f"CKKS aggregation: a round of n={n} sites is below secure_agg.min_clients="
                                  f"{self.min_clients}, the smallest aggregate the key holder decrypts")
            return self.min_clients
        t = self.threshold(n)
        where = f"a round of n={n} sites (threshold_fraction={self.threshold_fraction} gives t={t})"
        if n < self.min_clients:
            raise ConfigError(f"secure aggregation: {where} is below secure_agg.min_clients={self.min_clients}, "
                              f"the smallest round a site accepts")
        if t < 2 or 2 * t <= n or t > n:
            raise ConfigError(f"secure aggregation: {where} is unsafe: need n/2 < t <= n and t >= 2")
        need = (n + self.max_colluders) // 2 + 1
        if t < need:
            raise ConfigError(f"secure aggregation: {where} tolerates fewer than max_colluders={self.max_colluders} "
                              f"colluding sites: need t >= floor((n + n_C)/2) + 1 = {need}"
                              + ("" if need <= n else f" > n; at most {n - 1} colluders are possible with n={n}")
                              + "; raise threshold_fraction or lower max_colluders")
        survivors = n - int(math.floor(self.dropout_rate * n))
        if survivors < t:
            raise ConfigError(f"secure aggregation: {where} with dropout_rate={self.dropout_rate} leaves "
                              f"{survivors} survivors < t: every round would abort")
        return t


@dataclass(frozen=True, kw_only=True)
class OperatorConfig:
    """Who runs the federation: recorded in the signed ledger (run_start) and shown on the audit report's first page.

    Free text, no secrets: e.g. name = "J. Doe", organisation = "Example Hospital, Data Science Unit".
    """

    name: str | None = None
    organisation: str | None = None
    contact: str | None = None        # an e-mail address or role a data-protection officer can write to

    def __post_init__(self) -> None:
        _check_types(self, "operator")
        for f in fields(self):
            v = getattr(self, f.name)
            if v is not None and (not v.strip() or len(v) > 200):
                raise ConfigError(f"operator.{f.name} must be non-empty text of at most 200 characters; got {v!r}")


def sites_per_round(fed: FedConfig) -> int:
    """Sites selected per round, rounded as the runner draws them: max(1, round(fraction·clients)).

    Under DP-FedAvg with fraction < 1 the runner draws sites by Poisson sampling: this is then the expected size.
    """
    return max(1, int(round(fed.fraction * fed.clients)))


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """Everything that determines a run; written to RUN_DIR/config.toml and hashed into the ledger."""

    seed: int = 0
    device: str = "cpu"
    eval_every: int = 5             # rounds between FID evaluations (the last round is always evaluated)
    eval_samples: int = 400          # generated images per FID evaluation
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    fed: FedConfig = field(default_factory=FedConfig)
    dp: DPConfig = field(default_factory=DPConfig)
    secure_agg: SecAggConfig = field(default_factory=SecAggConfig)
    operator: OperatorConfig = field(default_factory=OperatorConfig)

    def __post_init__(self) -> None:
        _check_types(self, "")
        self._resolve_unset()
        if self.device not in ("cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ConfigError(f"device must be cpu or cuda; got {self.device!r}")
        if self.eval_every < 1:
            raise ConfigError("eval_every must be >= 1")
        if self.eval_samples < 16:
            raise ConfigError("eval_samples must be >= 16")
        if self.fed.min_timestep >= self.model.num_train_timesteps:
            raise ConfigError(f"fed min_timestep = {self.fed.min_timestep} leaves no timestep to train on: it must be "
                              f"below model.num_train_timesteps = {self.model.num_train_timesteps}")
        if self.secure_agg.mode != "off" and (self.fed.clients < 2 or self.fed.min_clients < 2):
            raise ConfigError("secure aggregation needs at least 2 clients per round (clients and min_clients "
                              ">= 2); use --secure-agg off for a single site")
        if self.secure_agg.mode != "off":
            self.secure_agg.check_round(sites_per_round(self.fed))
        if self.dp.effective_placement == "distributed":
            self._check_distributed()
        if self.dp.public_subspace:
            self._check_public_subspace()
        elif self.dp.public_subspace_shrink:
            raise ConfigError("dp public_subspace_shrink weights the directions of the public subspace: it needs "
                              "dp public_subspace > 0 (--public-subspace K)")

    def default_placement(self) -> str | None:
        """Where the noise goes when [dp] placement is unset (measured, README "Where the noise goes"): distributed
        DP-SGD, whose server projects onto public gradients, where that is possible — public images to take the
        gradients of, and an aggregation that carries noise shares (pairwise masks, every site every round, at least
        one honest share after the colluder bound); local DP-SGD otherwise (without public images it measured better
        on the pneumonia data, and it trusts no one); DP-FedAvg keeps the server placement; None when DP is off."""
        if self.dp.mode == "off":
            return None
        if self.dp.mode == "client":
            return "server"
        sa = self.secure_agg
        if (sa.mode in ("secagg", "secagg+") and self.fed.fraction == 1.0
                and sa.threshold(sites_per_round(self.fed)) - sa.max_colluders >= 1
                and self._public_subspace_possible()):
            return "distributed"
        return "local"

    def _public_subspace_possible(self) -> bool:
        return self.public_pretrain != "none" and self.model.pretrain_set_size >= PUBLIC_SUBSPACE_MIN_IMAGES

    def _resolve_unset(self) -> None:
        """Fill the keys left unset (None) from the chosen placement's schedule (SCHEDULES), so that config.toml and
        the ledger carry explicit values; remember which were filled, so that `replace` chooses them afresh."""
        auto: list[tuple[str, str]] = []
        updates: dict[str, dict[str, Any]] = {"fed": {}, "secure_agg": {}, "dp": {}, "model": {}}

        def unset(section: str, key: str) -> bool:
            return key in getattr(getattr(self, section), "_unset", ())

        dp = self.dp
        if dp.mode == "off" and dp.placement == "auto":
            # written by earlier versions for non-private runs; there is no noise to place
            updates["dp"]["placement"] = None
        if dp.placement is None and dp.mode != "off":
            updates["dp"]["placement"] = self.default_placement()
            auto.append(("dp", "placement"))
            dp = dataclasses.replace(dp, placement=updates["dp"]["placement"])
        distributed_sgd = dp.mode == "sample" and dp.effective_placement == "distributed"
        for (section, key), value in SCHEDULES["distributed-sample" if distributed_sgd else "local"].items():
            if unset(section, key):
                updates[section][key] = value
                auto.append((section, key))
        default_k = 0
        if unset("dp", "public_subspace"):
            if distributed_sgd and self._public_subspace_possible():
                default_k = min(PUBLIC_SUBSPACE_DEFAULT, self.model.pretrain_set_size)
            updates["dp"]["public_subspace"] = default_k
            auto.append(("dp", "public_subspace"))
        if unset("dp", "public_subspace_shrink"):
            updates["dp"]["public_subspace_shrink"] = default_k > 0
            auto.append(("dp", "public_subspace_shrink"))
        if unset("fed", "min_timestep"):
            # only with the default projection (an explicit public_subspace, as every earlier run's config.toml
            # has, keeps training on all timesteps, so those runs resume and compare as they were)
            updates["fed"]["min_timestep"] = (self.model.num_train_timesteps // MIN_TIMESTEP_DIVISOR
                                              if default_k > 0 else 0)
            auto.append(("fed", "min_timestep"))
        if self.model.pretrain_batch_size is None:
            # an explicit site batch sets the public pretraining batch too (as before these defaults existed)
            updates["model"]["pretrain_batch_size"] = (PRETRAIN_BATCH_DEFAULT if unset("fed", "batch_size")
                                                       else self.fed.batch_size)
            auto.append(("model", "pretrain_batch_size"))
        for section, values in updates.items():
            if values:
                object.__setattr__(self, section, dataclasses.replace(getattr(self, section), **values))
        object.__setattr__(self, "_unset", frozenset(auto))

    def _check_public_subspace(self) -> None:
        """The projection needs the server's noisy mean gradient (distributed DP-SGD) and public images."""
        k = self.dp.public_subspace
        if self.dp.mode != "sample" or self.dp.effective_placement != "distributed":
            raise ConfigError(f"dp public_subspace = {k} needs distributed DP-SGD (--dp sample --dp-placement "
                              f"distributed): only there does the server hold the noisy mean gradient to project")
        if self.public_pretrain == "none":
            raise ConfigError(f"dp public_subspace = {k} needs public images (model.public_pretrain "
                              f"typeset-digits); this run has none")
        if k > self.model.pretrain_set_size:
            raise ConfigError(f"dp public_subspace = {k} exceeds the public images available "
                              f"(model.pretrain_set_size = {self.model.pretrain_set_size})")

    def _check_distributed(self) -> None:
        """Distributed noise needs pairwise-mask secure aggregation (the integer ring the shares are added in), every
        site in every round, and at least one honest share after the colluder bound (ConfigError otherwise)."""
        if self.secure_agg.mode not in ("secagg", "secagg+"):
            raise ConfigError(f"dp placement 'distributed' needs pairwise-mask secure aggregation (--secure-agg "
                              f"secagg or secagg+): with {self.secure_agg.mode!r} "
                              + ("the server would see every noise share and update in the clear"
                                 if self.secure_agg.mode == "off" else "the shares are not added in an integer ring"))
        if self.fed.fraction != 1.0:
            raise ConfigError("dp placement 'distributed' needs fraction = 1 (every site every round): who takes part "
                              "is visible to the server, so no site-sampling amplification is claimed for it")
        n = sites_per_round(self.fed)
        t = self.secure_agg.threshold(n)
        if t - self.secure_agg.max_colluders < 1:
            raise ConfigError(f"dp placement 'distributed': threshold t={t} minus max_colluders="
                              f"{self.secure_agg.max_colluders} leaves no honest noise share")

    def was_unset(self, section: str, key: str) -> bool:
        """Whether ``[section] key`` was left unset and filled from the placement's schedule (SCHEDULES)."""
        return (section, key) in getattr(self, "_unset", ())

    @property
    def public_pretrain(self) -> str:
        """The public pretraining source this run uses ('none' when there is none)."""
        choice = self.model.public_pretrain
        if choice == "auto":
            return "typeset-digits" if self.data.dataset == "digits" else "none"
        return choice

    def to_dict(self, *, resolved: bool = True) -> dict[str, Any]:
        """The configuration as nested dicts (None dropped). resolved=False leaves out the keys that were unset and
        filled from the placement's schedule: what was actually given, to build other configurations from."""
        raw = _drop_none(dataclasses.asdict(self))
        if not resolved:
            for section, key in getattr(self, "_unset", ()):
                raw.get(section, {}).pop(key, None)
        return raw

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> "RunConfig":
        return _build(cls, raw, "")

    @classmethod
    def from_toml(cls, path: str | Path) -> "RunConfig":
        return cls.from_dict(read_toml(path, "config file"))

    def replace(self, **sections: Mapping[str, Any]) -> "RunConfig":
        """Return a copy with fields overridden; `sections` maps 'fed'/'dp'/... or top-level names to values.

        Keys that were unset here are unset in the copy too, so they follow its placement (e.g. the default run
        with dp mode off trains on the local schedule, not on distributed DP-SGD's)."""
        raw = self.to_dict(resolved=False)
        for key, value in sections.items():
            if isinstance(value, Mapping):
                raw.setdefault(key, {}).update({k: v for k, v in value.items()})
            else:
                raw[key] = value
        return RunConfig.from_dict(raw)


def read_toml(path: str | Path, what: str, *, missing_hint: str = "") -> dict[str, Any]:
    """Parse a TOML file; ConfigError naming `what` and the path when it is missing or not valid TOML."""
    p = Path(path)
    try:
        return tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{what} not found: {p}{missing_hint}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{what} {p} is not valid TOML: {e}") from None


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (_drop_none(v) if isinstance(v, dict) else v) for k, v in d.items() if v is not None}


def _build(cls, raw: Mapping[str, Any], where: str):
    if not isinstance(raw, Mapping):
        raise ConfigError(f"config key {where} expects a table ([{where}]); got {type(raw).__name__} {raw!r}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(raw) - known, key=str)
    if unknown:
        key = unknown[0]
        name = f"{where}.{key}" if where else str(key)
        what = "section or key" if not where else "key"
        raise ConfigError(f"unknown config {what} {name} = {raw[key]!r}; known in [{where or 'top level'}]: "
                          f"{', '.join(sorted(known))}")
    kwargs = {}
    for name, value in raw.items():
        sub = _SECTIONS.get(name) if cls is RunConfig else None
        kwargs[name] = _build(sub, value, name) if sub else value
    return cls(**kwargs)


_SECTIONS = {"data": DataConfig, "model": ModelConfig, "fed": FedConfig, "dp": DPConfig, "secure_agg": SecAggConfig,
             "operator": OperatorConfig}


@functools.cache
def _field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "nothing (omit the key)"
    if tp is float:
        return "float"
    if dataclasses.is_dataclass(tp):
        return f"a table ({tp.__name__})"
    return tp.__name__


def _coerce(value: Any, tp: Any) -> tuple[bool, Any]:
    """(ok, value) for `value` against a field type; ints are accepted (as floats) where floats are expected."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            ok, v = _coerce(value, arg)
            if ok:
                return True, v
        return False, value
    if tp is type(None):
        return value is None, value
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False, value
        try:
            v = float(value)
        except OverflowError:
            return False, value
        return math.isfinite(v), v
    return isinstance(value, tp), value


def _fill_unset(obj: Any, section: str) -> None:
    """Give a section's unset (None) keys their value for a section on its own (SECTION_DEFAULTS) and remember which
    they were, in ``obj._unset``, so that RunConfig can choose them by placement instead."""
    unset = {k for k in SECTION_DEFAULTS.get(section, {}) if getattr(obj, k) is None}
    for k in unset:
        object.__setattr__(obj, k, SECTION_DEFAULTS[section][k])
    object.__setattr__(obj, "_unset", frozenset(unset))


def _check_types(obj: Any, section: str) -> None:
    """Type-check every field of a frozen config dataclass (ConfigError naming key, expected type and value)."""
    hints = _field_types(type(obj))
    for f in fields(obj):
        value = getattr(obj, f.name)
        ok, coerced = _coerce(value, hints[f.name])
        if not ok:
            key = f"{section}.{f.name}" if section else f.name
            finite = "a finite " if isinstance(value, float) and not math.isfinite(value) else ""
            raise ConfigError(f"config key {key} expects {finite}{_type_name(hints[f.name])}; "
                              f"got {type(value).__name__} {value!r}")
        if coerced is not value:
            object.__setattr__(obj, f.name, coerced)
