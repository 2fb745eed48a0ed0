"""The in-process federation (the embedded default): one server and N sites in one process, talking only by
messages through :class:`~privfed.parties.engine.InProcessEngine`.

:class:`FederatedRun` is the composition root: it loads and partitions the data, hands each partition to its own
:class:`~privfed.parties.site.Site` (identity, policy, receipt under ``RUN_DIR/sites/<id>/``), builds the
:class:`~privfed.parties.server.Server` (which never sees a site's data or, with secure aggregation on, its
plaintext update) and runs the rounds: checkpoints, evaluation and the ledger's round records.
"""

from __future__ import annotations

import copy
import hashlib
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
import torch

from privfed.config import RunConfig
from privfed.data import client_summary, load_dataset, partition_indices
from privfed.data.dataset import DatasetSplits, ImageDataset
from privfed.errors import RunDirError, SiteKeyError, UnknownSiteError
from privfed.federation.aggregation import KeyHolderChannel, build_aggregator, releases_update
from privfed.federation.privacy import clip_range_fitted, fit_clip_range, run_cap, server_privacy
from privfed.federation.public_subspace import PublicSubspace, fit_public_subspace, public_subspace_fitted
from privfed.federation.seeding import derive_seed, numpy_generator, torch_generator
from privfed.federation.site_privacy import site_privacy
from privfed.parties.engine import InProcessEngine, transport
from privfed.parties.identity import Roster, load_identity, load_or_init
from privfed.parties.policy import SitePolicy
from privfed.parties.server import Server
from privfed.parties.site import Site
from privfed.metrics import domain_fid, save_grid
from privfed.metrics.classifier import RUN_EXTRACTOR_PATH, accuracy, evaluation_classifier
from privfed.metrics.eval_loss import eval_loss
from privfed.metrics.fid import class_histogram, fid_interval
from privfed.models import build_scheduler, build_unet, load_unet, parameter_count, sample_images
from privfed.pins import write_pins
from privfed.rundir import EMA_MODEL, RunDir, atomic_write_text
from privfed import run_ledger as ledger_payloads
from audits.keys import PRIVATE_KEY_RELPATH, load_private_key
from audits.ledger import LEDGER_FILENAME, LedgerWriter


#: the server optimizer's state inside a checkpoint folder (only where the server keeps one)
SERVER_OPTIMIZER = "server_optimizer.safetensors"


class Reporter(Protocol):
    """What the runner tells a user interface (the CLI renders it with rich)."""

    def run_start(self, *, total_rounds: int, done_rounds: int, info: dict[str, Any]) -> None: ...
    def round_start(self, round_index: int, selected: list[int]) -> None: ...
    def client_done(self, round_index: int, client_id: int, reply) -> None: ...
    def round_end(self, round_index: int, record: dict[str, Any]) -> None: ...
    def note(self, text: str) -> None: ...


class SilentReporter:
    def run_start(self, **_: Any) -> None: pass
    def round_start(self, *_: Any) -> None: pass
    def client_done(self, *_: Any) -> None: pass
    def round_end(self, *_: Any) -> None: pass
    def note(self, text: str) -> None: pass


@dataclass
class RunResult:
    run_dir: Path
    rounds_completed: int
    final_fid: float | None
    untrained_fid: float | None          # FID at round 0: the initial model (after public pretraining, if any)
    metrics: list[dict[str, Any]]
    closing_lines: list[str] = field(default_factory=list)
    initial_label: str = "untrained model"


def evaluation_samples(model: torch.nn.Module, scheduler, cfg: RunConfig) -> torch.Tensor:
    """The ``cfg.eval_samples`` images every evaluation of a run generates: the same noise draws (the run seed's
    "eval" stream) at every round, so rounds differ only by the model (``privfed rescore`` regenerates them)."""
    return sample_images(model, scheduler, num_images=cfg.eval_samples, sampler=cfg.model.sampler,
                         steps=cfg.model.sampling_steps, generator=torch_generator(cfg.seed, "eval"))


class FederatedRun:
    """One federated training run bound to a run directory (new or resumed)."""

    def __init__(self, cfg: RunConfig, run_dir: str | Path, *, reporter: Reporter | None = None) -> None:
        self.cfg = cfg
        self.dir = RunDir(run_dir)
        self.reporter = reporter or SilentReporter()
        self.ema: torch.nn.Module | None = None   # the moving average of the global model (fed.ema_decay > 0)
        self.gradient_canaries = None    # set by the empirical audit (privfed.federation.canaries)
        self.reseal_state = False        # seal and unseal every site's round state at each message (Flower's path)
        self.observer = None             # callable(direction, message): sees every message the engine moves
        # remote sites (the Flower engine): the sites run elsewhere; this process holds only the server's side and
        # reaches them through `engine_factory(drop_plan=, releases=, observer=)`
        self.remote_sites = False
        self.engine_factory: Callable[..., Any] | None = None
        self.device = torch.device(cfg.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise RunDirError("--device cuda requested but no CUDA device is available")

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def create(cls, cfg: RunConfig, run_dir: str | Path, *, reporter: Reporter | None = None,
               augment: Callable[[list[ImageDataset]], list[ImageDataset]] | None = None,
               gradient_canaries=None) -> "FederatedRun":
        """Validate data, partition and DP arguments first, then create the run directory (nothing half-written
        on bad input).

        `augment` may add examples to the sites' data (the empirical canary audit inserts canaries this way);
        DP noise is calibrated on the augmented sizes. `gradient_canaries` (a
        :class:`~privfed.federation.canaries.GradientCanaries`) makes the sites insert white-box gradient
        canaries; audits only, never a production run.
        """
        run = cls(cfg, run_dir, reporter=reporter)
        run.gradient_canaries = gradient_canaries
        run._load_data()
        if augment is not None:
            run.client_data = augment(run.client_data)
        run._build_privacy()
        run.dir.create()
        atomic_write_text(run.dir.config, run.cfg.to_toml())
        return run

    @classmethod
    def written_config(cls, cfg: RunConfig) -> RunConfig:
        """The configuration a new run of ``cfg`` writes to its config.toml: ``cfg`` with an unset clip range fitted
        to the distributed noise (:func:`~privfed.federation.privacy.fit_clip_range`, which needs the sites' data
        sizes and the model's size) and an unset public subspace rank fitted to memory
        (:func:`~privfed.federation.public_subspace.fit_public_subspace`). Loads the data; writes nothing."""
        if not clip_range_fitted(cfg) and not public_subspace_fitted(cfg):
            return cfg
        probe = cls(cfg, Path("."))
        probe._load_data()
        probe._build_privacy()
        return probe.cfg

    @classmethod
    def resume(cls, run_dir: str | Path, *, reporter: Reporter | None = None) -> "FederatedRun":
        d = RunDir(run_dir)
        d.require_existing()
        cfg = RunConfig.from_toml(d.config)
        run = cls(cfg, run_dir, reporter=reporter)
        run._load_data()
        run._build_privacy()
        return run

    def _load_data(self) -> None:
        cfg = self.cfg
        self.splits: DatasetSplits = load_dataset(cfg.data, seed=cfg.seed)
        labels = self.splits.train.labels.numpy()
        self.parts = partition_indices(labels, num_clients=cfg.fed.clients, scheme=cfg.data.partition,
                                       seed=derive_seed(cfg.seed, "partition"), alpha=cfg.data.alpha,
                                       quantity_sigma=cfg.data.quantity_sigma)
        self.client_data: list[ImageDataset] = [self.splits.train.subset(p) for p in self.parts]
        self.summary = client_summary(labels, self.parts, num_classes=self.splits.train.num_classes)

    def _build_privacy(self) -> None:
        """Validate DP arguments and calibrate noise (server half, and each site's own half) before anything is
        written, so bad DP input fails before training."""
        sizes = [len(d) for d in self.client_data]
        train = self.splits.train
        dim = self.update_dim = parameter_count(self.cfg.model, channels=train.channels, image_size=train.size)
        self.cfg = fit_public_subspace(fit_clip_range(self.cfg, sizes, dimension=dim), dimension=dim)
        self.privacy = server_privacy(self.cfg, sizes, dimension=dim)
        self.site_privacy = [site_privacy(self.cfg, n, delta=self.privacy.delta, dimension=dim) for n in sizes]

    # ---- parties --------------------------------------------------------------------------------------------
    def _site_policy(self, cid: int, server_fp: str) -> SitePolicy:
        """The policy the in-process engine pins for a site on first use (edit site.toml to make it stricter)."""
        cfg, sa = self.cfg, self.cfg.secure_agg
        delta = self.privacy.delta or 1e-5
        return SitePolicy(site_id=cid, max_epsilon=float(run_cap(self.cfg) or 10.0),
                          max_delta=max(1e-5, float(delta)),
                          min_clients=min(sa.min_clients, max(2, cfg.fed.clients)),
                          max_colluders=sa.max_colluders, failure_log2=sa.failure_log2,
                          require_secure_aggregation=sa.mode != "off",
                          server_key=server_fp)

    @property
    def run_id(self) -> str:
        """The run's id: the first 32 hex digits of SHA-256 of its config.toml (every party derives the same)."""
        return hashlib.sha256(self.dir.config.read_bytes()).hexdigest()[:32]

    def server_key(self):
        """The server's (ledger's) signing key, generated on first use (mode 0600; the sites pin its public half)."""
        from audits.keys import PUBLIC_KEY_RELPATH, generate_private_key, write_public_key

        path = self.dir.root / PRIVATE_KEY_RELPATH
        if path.exists():
            return load_private_key(path)
        key = generate_private_key(path)
        write_public_key(self.dir.root / PUBLIC_KEY_RELPATH, key.public_key())
        return key

    def enroll_sites(self) -> Roster:
        """Give every site of a new run its identity and pinned policy under ``RUN_DIR/sites/<id>/`` and write the
        roster (``RUN_DIR/roster.json``); an enrolled run's roster is only read, never rewritten. The Flower launcher
        calls this before it starts the sites' processes; the in-process engine calls it from :meth:`run`."""
        from privfed.parties.identity import fingerprint

        roster_path = self.dir.root / "roster.json"
        if roster_path.exists():
            return Roster.load(roster_path)
        server_fp = fingerprint(self.server_key().public_key())
        idents = {}
        for cid in range(self.cfg.fed.clients):
            sdir = self.dir.root / "sites" / str(cid)
            idents[cid] = load_or_init(sdir)
            if not (sdir / "site.toml").exists():
                self._site_policy(cid, server_fp).save(sdir)
        roster = Roster({c: i.public_key for c, i in idents.items()})
        roster.save(roster_path)
        return roster

    def _build_parties(self, run_id: str, server_key) -> None:
        from privfed.parties.identity import fingerprint

        server_fp = fingerprint(server_key.public_key())
        ids = list(range(self.cfg.fed.clients))
        roster_path = self.dir.root / "roster.json"
        self.sites = {}
        if self.remote_sites:
            # the sites hold their own keys on their own machines: the server knows them only by the roster
            if not roster_path.exists():
                raise RunDirError(f"{roster_path}: no roster; enroll the sites first (privfed site init)")
            self.roster = Roster.load(roster_path)
            self.missing_sites = {}
            self.key_holder = None
            return
        if not roster_path.exists():
            self.enroll_sites()                   # a new run
        # from here on identities must exist and are never replaced (a resumed run without a key leaves it out)
        idents = {}
        self.missing_sites: dict[int, str] = {}   # site -> why it cannot take part (resume without its key)
        for cid in ids:
            sdir = self.dir.root / "sites" / str(cid)
            try:
                idents[cid] = load_identity(sdir)
            except SiteKeyError as e:
                self.missing_sites[cid] = str(e)      # the run goes on without it; never re-enrolled
                continue
            if not (sdir / "site.toml").exists():
                self._site_policy(cid, server_fp).save(sdir)
        self.roster = Roster.load(roster_path)
        for cid, ident in idents.items():
            if self.roster.raw().get(cid) != ident.public_key.public_bytes_raw():
                raise UnknownSiteError(f"{roster_path}: site {cid}'s identity key is not the run's roster key")
        self.key_holder = None
        if self.cfg.secure_agg.mode == "ckks":
            from privfed.parties.key_holder import KeyHolder

            # a party of its own (in-process here): it alone holds the CKKS secret key
            self.key_holder = KeyHolder(self.dir.root / "key_holder", run_id=run_id,
                                        server_key=server_key.public_key(), roster_ids=ids,
                                        min_contributors=max(2, self.cfg.secure_agg.min_clients))
        for cid in (c for c in ids if c not in self.missing_sites):
            site = Site(cid, site_dir=self.dir.root / "sites" / str(cid), data=self.client_data[cid], cfg=self.cfg,
                        run_id=run_id, delta=self.privacy.delta, roster=self.roster,
                        server_key=server_key.public_key(), device=str(self.device),
                        privacy=self.site_privacy[cid],
                        key_holder_key=self.key_holder.public_key if self.key_holder is not None else None)
            site.trainer.canaries = self.gradient_canaries
            self.sites[cid] = site

    def _key_holder_channel(self, run_id: str, server_key) -> KeyHolderChannel | None:
        """The server's line to the in-process key holder (CKKS only): every message crosses the codec."""
        if self.key_holder is None:
            return None
        kh = self.key_holder
        return KeyHolderChannel(send=lambda m: transport(kh.handle(transport(m))), server_key=server_key,
                                key_holder_key=kh.public_key, run_id=run_id)

    def _dropouts(self, round_index: int) -> set[int]:
        """Simulated unreliable sites: a fixed fraction of the round's participants goes silent before release."""
        part = getattr(self, "_participants", {}).get(round_index, [])
        k = int(np.floor(self.cfg.secure_agg.dropout_rate * len(part)))
        if k == 0:
            return set()
        rng = numpy_generator(self.cfg.seed, "dropout", round_index)
        return set(rng.choice(np.asarray(part), size=k, replace=False).tolist())

    # ---- the loop -----------------------------------------------------------------------------
    def run(self) -> RunResult:
        cfg = self.cfg
        self.dir.clean_partial()
        ledger_path = self.dir.root / LEDGER_FILENAME
        new_ledger = not ledger_path.exists()
        self.scheduler = build_scheduler(cfg.model)
        # the FID feature extractor: public data (digits) or the declared evaluation split, never the sites' data
        self.classifier, self.evaluation = evaluation_classifier(
            self.dir.root / RUN_EXTRACTOR_PATH, cfg.data.dataset, self.splits.test)
        run_id = self.run_id
        config_hash = hashlib.sha256(self.dir.config.read_bytes()).hexdigest()
        with LedgerWriter.open(self.dir.root, create=new_ledger) as self.ledger:
            # resume reads only verified records: opening the writer checked the chain and every signature
            records = self.ledger.records
            done = {int(r["payload"]["round"]) for r in records if r["kind"] == "round_end"}
            latest = self.dir.latest_checkpoint(among=done)
            server_key = self.server_key()
            self._build_parties(run_id, server_key)
            if new_ledger:
                self.ledger.append("run_start", ledger_payloads.run_start(
                    cfg, self.dir.config, dp_noise_rng=self.privacy.noise_rng,
                    evaluation=ledger_payloads.evaluation_provenance(self.evaluation, self.splits.test,
                                                                     val=self.splits.val)))
                self.ledger.append("roster", {"fingerprint": self.roster.fingerprint,
                                              "sites": {str(c): k.hex() for c, k in self.roster.raw().items()},
                                              "server_key": self.ledger.key_fingerprint})
                self.ledger.append("data_summary", ledger_payloads.data_summary(self.summary))
            for site in self.sites.values():
                site.open_receipt()
            if latest is None:
                torch.manual_seed(derive_seed(cfg.seed, "init"))
                self.model = build_unet(cfg.model, channels=self.splits.train.channels,
                                        image_size=self.splits.train.size).to(self.device)
                start = -1
                self.dir.truncate_metrics_after(-1)
                self.ema = self._new_ema(None)
            else:
                start, path = latest
                self.model = load_unet(path / "unet").to(self.device)
                self.ema = self._new_ema(path if start > 0 else None)
                self.dir.truncate_metrics_after(start)
                self.ledger.append("resume", {"from_round": start})
                for cid, why in sorted(self.missing_sites.items()):
                    # named, recorded, and the rounds go on without the site (or stop cleanly below min_clients)
                    self.ledger.append("site_event", {"round": start + 1, "client": str(cid), "event": "excluded",
                                                      "error": "SiteKeyError", "reason": why})
                    self.reporter.note(f"site {cid} cannot take part: {why}")
                self.reporter.note(f"resuming {self.dir.root} after round {start}")
                self.privacy.restore(records)
                if (path / SERVER_OPTIMIZER).is_file():
                    # the server's optimizer state at that checkpoint (distributed DP-SGD's Adam moments)
                    from safetensors.torch import load_file

                    self.privacy.load_optimizer_state(load_file(str(path / SERVER_OPTIMIZER)))
            if cfg.dp.public_subspace:
                self.privacy.projector = self._public_subspace().project
            self._participants: dict[int, list[int]] = {}
            if self.engine_factory is not None:
                engine = self.engine_factory(drop_plan=self._dropouts, releases=releases_update,
                                             observer=self.observer, ledger=self.ledger)
            else:
                engine = InProcessEngine(self.sites, drop_plan=self._dropouts, releases=releases_update,
                                         reseal=self.reseal_state, observer=self.observer)
            self.server = Server(cfg=cfg, run_id=run_id, config_hash=config_hash, roster=self.roster,
                                 key=server_key, ledger=self.ledger, privacy=self.privacy,
                                 aggregator=build_aggregator(cfg.secure_agg, run_id=run_id, roster=self.roster,
                                                             key_holder=self._key_holder_channel(run_id,
                                                                                                 server_key)),
                                 engine=engine, reporter=self.reporter, model=self.model)
            self.server.on_participants = lambda r, ids: self._participants.__setitem__(r, list(ids))
            info = self._info()
            info["notes"] = self.privacy.notes()
            info["notes"].append(f"sites: {len(self.roster.raw())} on the roster "
                                 f"({'remote' if self.remote_sites else 'in this process'}), "
                                 f"roster {self.roster.fingerprint[:16]}…, "
                                 f"server key {self.ledger.key_fingerprint}")
            info["notes"].append(f"ledger key fingerprint {self.ledger.key_fingerprint}: send it to the sites and "
                                 "auditors now, out of band (privfed audit --pin-key)")
            if start < 0:
                info["notes"].append("initial model: " + ledger_payloads.public_pretrain_description(cfg))
            self.reporter.run_start(total_rounds=cfg.fed.rounds, done_rounds=max(start, 0), info=info)
            try:
                if start < 0:
                    record = {"round": 0, **self._public_pretrain(), **self._evaluate(0)}
                    self._finish_round(0, record)
                    start = 0
                stopped = None
                for r in range(start + 1, cfg.fed.rounds + 1):
                    record = self.server.round(r)
                    if record is None:
                        stopped = r
                        break
                    self._update_ema(r)
                    if r % cfg.eval_every == 0 or r == cfg.fed.rounds:
                        record.update(self._evaluate(r))
                    record["seconds"] = round(record["train_seconds"] + record.get("eval_seconds", 0.0), 3)
                    self._finish_round(r, record)
                completed = (stopped - 1) if stopped else cfg.fed.rounds
                eps = self.privacy.epsilons()
                self.ledger.append("run_end", {"rounds_completed": completed, "final_epsilon": eps,
                                               "delta": self.privacy.delta})
                head, key_fp = self.ledger.head_hash, self.ledger.key_fingerprint
                pins = write_pins(self.dir.root, run_id=run_id, key_fingerprint=key_fp, head_hash=head)
            finally:
                for site in self.sites.values():
                    site.close()
        metrics = self.dir.read_metrics()
        fids = [m["fid"] for m in metrics if "fid" in m]
        untrained = next((m["fid"] for m in metrics if m["round"] == 0 and "fid" in m), None)
        result = RunResult(self.dir.root, completed, fids[-1] if fids else None, untrained, metrics)
        result.initial_label = ("public pretraining only, before any site data" if cfg.public_pretrain != "none"
                                else "untrained model")
        result.closing_lines = self.privacy.statement_lines() + [
            f"ledger head hash {head} (key {key_fp}); both written to {pins}: send it out of "
            f"band, then verify with privfed audit {self.dir.root} --pin-key <key> --head <head>"]
        return result

    def _finish_round(self, r: int, record: dict[str, Any]) -> None:
        """Checkpoint, then the signed round_end (with the checkpoint hash), then metrics: in that order."""
        extra = None
        opt = self.privacy.optimizer_state()
        if opt is not None:
            from safetensors.torch import save

            extra = {SERVER_OPTIMIZER: save({k: v.detach().cpu().contiguous() for k, v in opt.items()})}
        models = {EMA_MODEL: self.ema} if self.ema is not None and r > 0 else {}
        ckpt = self.dir.save_checkpoint(r, self.model, {"round": r}, extra=extra, models=models)
        self.ledger.append("round_end", {"round": r,
                                         "checkpoint": ledger_payloads.checkpoint_entry(self.dir.root, ckpt),
                                         "metrics": ledger_payloads.round_metrics(record)})
        self.dir.append_metrics(record)
        self.reporter.round_end(r, record)

    def _public_pretrain(self) -> dict[str, Any]:
        """Non-private pretraining of the fresh global model on public data (no site data, no ε spent)."""
        cfg, tr = self.cfg, self.splits.train
        if cfg.public_pretrain == "none":
            return {}
        from privfed.cache import pretrained_initial_model
        from privfed.models.pretrain import public_pretrain

        t0 = time.perf_counter()
        pretrain_batch = cfg.model.pretrain_batch_size   # RunConfig always resolves it

        def compute() -> float:
            public = self._public_images()
            progress = getattr(self.reporter, "pretrain_progress", None)
            return public_pretrain(self.model, self.scheduler, public, steps=cfg.model.pretrain_steps,
                                   lr=cfg.model.pretrain_lr, batch_size=pretrain_batch,
                                   generator=torch_generator(cfg.seed, "pretrain"), progress=progress)

        # a public artefact: everything that determines the pretrained weights, and nothing about the sites
        m = cfg.model
        material = {"source": cfg.public_pretrain, "seed": cfg.seed, "channels": tr.channels, "image_size": tr.size,
                    "model": {k: getattr(m, k) for k in ("base_channels", "layers_per_block", "attention",
                                                         "num_train_timesteps", "beta_schedule")},
                    "steps": m.pretrain_steps, "lr": m.pretrain_lr, "set_size": m.pretrain_set_size,
                    "batch_size": pretrain_batch, "device": self.device.type, "torch": torch.__version__}
        out = pretrained_initial_model(self.model, material, compute)
        return {"public_pretrain": cfg.public_pretrain, **out, "pretrain_loss": round(out["pretrain_loss"], 5),
                "pretrain_seconds": round(time.perf_counter() - t0, 3)}

    def _public_images(self) -> ImageDataset:
        """The run's public images (typeset digits at the sites' size, from the run seed): what the public
        pretraining trains on and what dp.public_subspace takes its gradients of."""
        from privfed.data.typeset import typeset_digits

        cfg, tr = self.cfg, self.splits.train
        return typeset_digits(cfg.model.pretrain_set_size, image_size=tr.size, channels=tr.channels,
                              seed=derive_seed(cfg.seed, "public-data"))

    def _public_subspace(self):
        """The server's projection onto gradients of the public images (dp.public_subspace)."""
        from privfed.models.unet import trainable_parameters

        cfg = self.cfg
        return PublicSubspace(self.model, self.scheduler, self._public_images(), k=cfg.dp.public_subspace,
                              params=trainable_parameters(self.model, cfg.model.trainable), seed=cfg.seed)

    # ---- the moving average of the global model ---------------------------------------------------------------
    def _new_ema(self, checkpoint: Path | None):
        """The EMA model (None when ``fed.ema_decay`` is 0): a copy of the global model, or the average saved in
        `checkpoint` when resuming after round 1 or later."""
        if self.cfg.fed.ema_decay == 0:
            return None
        if checkpoint is None:
            return copy.deepcopy(self.model).requires_grad_(False)
        if not (checkpoint / EMA_MODEL).is_dir():
            raise RunDirError(f"{checkpoint} has no {EMA_MODEL}/ although the run averages the model "
                              f"(fed.ema_decay = {self.cfg.fed.ema_decay}); resume from an intact checkpoint")
        return load_unet(checkpoint / EMA_MODEL).to(self.device).requires_grad_(False)

    def _update_ema(self, r: int) -> None:
        """Fold round r's global model into the average, bias-corrected so that it weighs rounds 1..r only
        (round k by (1 - d)·d^(r-k) / (1 - d^r)) and never the initial model."""
        if self.ema is None:
            return
        d = self.cfg.fed.ema_decay
        w = (1 - d) / (1 - d ** r)
        with torch.no_grad():
            for e, p in zip(self.ema.parameters(), self.model.parameters(), strict=True):
                e.lerp_(p.detach(), w)

    def _released_model(self, r: int) -> torch.nn.Module:
        """What round r publishes for use and evaluation: the average when there is one (round 0 has none)."""
        return self.ema if self.ema is not None and r > 0 else self.model

    def _evaluate(self, r: int) -> dict[str, Any]:
        t0 = time.perf_counter()
        model = self._released_model(r)
        fake = evaluation_samples(model, self.scheduler, self.cfg)
        grid = save_grid(fake[:100], self.dir.samples / f"round_{r:04d}.png")
        lo, hi = fid_interval(self.classifier, self.splits.test.images, fake,
                              seed=derive_seed(self.cfg.seed, "fid-bootstrap", r))
        out = {"fid": round(domain_fid(self.classifier, self.splits.test.images, fake), 4),
               "fid_interval": [round(lo, 4), round(hi, 4)],
               # the same samples against the validation split: what to choose a schedule (rounds, lr) on, so
               # that the test FID stays an unbiased estimate of the chosen one
               **({"fid_val": round(domain_fid(self.classifier, self.splits.val.images, fake), 4)}
                  if self.splits.val is not None else {}),
               "class_histogram": class_histogram(self.classifier, fake),
               "eval_loss": round(eval_loss(model, self.scheduler, self.splits.test.images,
                                            seed=derive_seed(self.cfg.seed, "eval-loss")), 5),
               "sample_grid": str(grid.relative_to(self.dir.root)), "eval_seconds": round(time.perf_counter() - t0, 3)}
        if r == 0:
            out["classifier_test_accuracy"] = round(accuracy(self.classifier, self.splits.test), 4)
        return out

    def _info(self) -> dict[str, Any]:
        tr = self.splits.train
        return {"dataset": tr.name.split(":")[0], "train": len(tr), "test": len(self.splits.test),
                "image": f"{tr.channels}×{tr.size}×{tr.size}", "clients": self.summary,
                "parameters": sum(p.numel() for p in self.model.parameters()),
                "trainable": self.cfg.model.trainable, "trainable_parameters": self.update_dim,
                "device": str(self.device), "python": platform.python_version(), "torch": torch.__version__}
