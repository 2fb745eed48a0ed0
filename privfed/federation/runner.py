"""The in-process federation runner (the embedded default): every client and the server in one process."""

from __future__ import annotations

import hashlib
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
import torch
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from privfed.config import RunConfig
from privfed.data import client_summary, load_dataset, partition_indices
from privfed.data.dataset import DatasetSplits, ImageDataset
from privfed.errors import RunDirError
from privfed.federation.aggregation import AggregateResult, PlainFedAvg
from privfed.federation.client import ClientUpdate, LocalTrainer
from privfed.federation.seeding import derive_seed, numpy_generator, torch_generator
from privfed.metrics import domain_fid, load_or_train_classifier, save_grid
from privfed.metrics.classifier import accuracy
from privfed.metrics.fid import class_histogram
from privfed.models import build_scheduler, build_unet, load_unet, sample_images
from privfed.rundir import RunDir, atomic_write_text
from privfed import run_ledger as ledger_payloads
from privfed.run_ledger import completed_rounds
from audits.ledger import LEDGER_FILENAME, LedgerWriter


class Reporter(Protocol):
    """What the runner tells a user interface (the CLI renders it with rich)."""

    def run_start(self, *, total_rounds: int, done_rounds: int, info: dict[str, Any]) -> None: ...
    def round_start(self, round_index: int, selected: list[int]) -> None: ...
    def client_done(self, round_index: int, client_id: int, update: ClientUpdate | None) -> None: ...
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


class FederatedRun:
    """One federated training run bound to a run directory (new or resumed)."""

    def __init__(self, cfg: RunConfig, run_dir: str | Path, *, reporter: Reporter | None = None) -> None:
        self.cfg = cfg
        self.dir = RunDir(run_dir)
        self.reporter = reporter or SilentReporter()
        self.gradient_canaries = None    # set by the empirical audit (privfed.federation.canaries)
        self.device = torch.device(cfg.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise RunDirError("--device cuda requested but no CUDA device is available")

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def create(cls, cfg: RunConfig, run_dir: str | Path, *, reporter: Reporter | None = None,
               augment: Callable[[list[ImageDataset]], list[ImageDataset]] | None = None,
               gradient_canaries=None) -> "FederatedRun":
        """Validate data and partition first, then create the run directory (nothing half-written on bad input).

        `augment` may add examples to the clients' data (the empirical canary audit inserts canaries this way);
        DP noise is calibrated on the augmented sizes. `gradient_canaries` (a
        :class:`~privfed.federation.canaries.GradientCanaries`) makes the clients insert white-box gradient
        canaries; audits only, never a production run.
        """
        run = cls(cfg, run_dir, reporter=reporter)
        run.gradient_canaries = gradient_canaries
        run._load_data()
        if augment is not None:
            run.client_data = augment(run.client_data)
        run._build_privacy()
        run.dir.create()
        atomic_write_text(run.dir.config, cfg.to_toml())
        return run

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
        """Validate DP arguments and calibrate noise before anything is written (fail before training)."""
        self.privacy = None
        if self.cfg.dp.mode != "off":
            from privfed.federation.privacy import build_privacy
            self.privacy = build_privacy(self.cfg, [len(d) for d in self.client_data])

    # ---- the loop -----------------------------------------------------------------------------
    def run(self) -> RunResult:
        cfg = self.cfg
        self.dir.clean_partial()
        ledger_path = self.dir.root / LEDGER_FILENAME
        new_ledger = not ledger_path.exists()
        done = completed_rounds(ledger_path)
        self.scheduler = build_scheduler(cfg.model)
        self.classifier = load_or_train_classifier(self.dir.cache / "domain_classifier.safetensors",
                                                   self.splits.train, seed=derive_seed(cfg.seed, "classifier"))
        latest = self.dir.latest_checkpoint(among=done)
        with LedgerWriter.open(self.dir.root, create=new_ledger) as self.ledger:
            if new_ledger:
                self.ledger.append("run_start", ledger_payloads.run_start(
                    cfg, self.dir.config, dp_noise_rng=self.privacy.noise_rng if self.privacy else "none"))
                self.ledger.append("data_summary", ledger_payloads.data_summary(self.summary))
            if latest is None:
                torch.manual_seed(derive_seed(cfg.seed, "init"))
                self.model = build_unet(cfg.model, channels=self.splits.train.channels,
                                        image_size=self.splits.train.size).to(self.device)
                start = -1
                self.dir.truncate_metrics_after(-1)
            else:
                start, path = latest
                self.model = load_unet(path / "unet").to(self.device)
                self.dir.truncate_metrics_after(start)
                self.ledger.append("resume", {"from_round": start})
                self.reporter.note(f"resuming {self.dir.root} after round {start}")
                if self.privacy:
                    self.privacy.restore(ledger_path)
            self.trainer = self.privacy.trainer(cfg.fed, self.scheduler) if self.privacy else \
                LocalTrainer(cfg.fed, self.scheduler)
            self.trainer.canaries = self.gradient_canaries
            self.aggregator = self._aggregator()
            info = self._info()
            info["notes"] = self.privacy.notes() if self.privacy else []
            if start < 0:
                info["notes"].append("initial model: " + ledger_payloads.public_pretrain_description(cfg))
            self.reporter.run_start(total_rounds=cfg.fed.rounds, done_rounds=max(start, 0), info=info)
            if start < 0:
                record = {"round": 0, **self._public_pretrain(), **self._evaluate(0)}
                self._finish_round(0, record)
                start = 0
            stopped = None
            for r in range(start + 1, cfg.fed.rounds + 1):
                record = self._round(r)
                if record is None:
                    stopped = r
                    break
                self._finish_round(r, record)
            completed = (stopped - 1) if stopped else cfg.fed.rounds
            eps = self.privacy.epsilons() if self.privacy else {}
            self.ledger.append("run_end", {"rounds_completed": completed, "final_epsilon": eps,
                                           "delta": self.privacy.delta if self.privacy else None})
        metrics = self.dir.read_metrics()
        fids = [m["fid"] for m in metrics if "fid" in m]
        untrained = next((m["fid"] for m in metrics if m["round"] == 0 and "fid" in m), None)
        result = RunResult(self.dir.root, completed, fids[-1] if fids else None, untrained, metrics)
        result.initial_label = ("public pretraining only, before any site data" if cfg.public_pretrain != "none"
                                else "untrained model")
        if self.privacy:
            result.closing_lines = self.privacy.statement_lines()
        return result

    def _finish_round(self, r: int, record: dict[str, Any]) -> None:
        """Checkpoint, then the signed round_end (with the checkpoint hash), then metrics: in that order."""
        ckpt = self.dir.save_checkpoint(r, self.model, {"round": r})
        self.ledger.append("round_end", {"round": r, "checkpoint": ledger_payloads.checkpoint_entry(self.dir.root, ckpt),
                                         "metrics": ledger_payloads.round_metrics(record)})
        self.dir.append_metrics(record)
        self.reporter.round_end(r, record)

    def _aggregator(self):
        mode = self.cfg.secure_agg.mode
        if mode == "off":
            return PlainFedAvg()
        from privfed.federation.secure import SecureFedAvg
        run_id = hashlib.sha256(self.dir.config.read_bytes()).hexdigest()[:32]
        return SecureFedAvg(self.cfg.secure_agg, run_id=run_id, seed=self.cfg.seed)

    def _select(self, round_index: int) -> list[int]:
        """Clients of this round: a fixed-size uniform draw, or Poisson (each site independently with
        probability `fraction`) under DP-FedAvg, whose accounting assumes Poisson sampling of sites."""
        n, q = self.cfg.fed.clients, self.cfg.fed.fraction
        rng = numpy_generator(self.cfg.seed, "select", round_index)
        if self.cfg.dp.mode == "client":
            if q >= 1:
                return list(range(n))
            # the draw must be secret from whoever could otherwise learn who took part: OS CSPRNG
            import secrets
            return [c for c in range(n) if secrets.randbelow(2**53) < q * 2**53]
        k = max(1, int(round(q * n)))
        return sorted(rng.choice(n, size=k, replace=False).tolist())

    def _round(self, r: int) -> dict[str, Any] | None:
        """One round; None when too few clients may still train (the run then ends cleanly)."""
        t0 = time.perf_counter()
        selected = self._select(r)
        site_level = self.cfg.dp.mode == "client"
        if self.privacy:
            allowed = []
            # DP-FedAvg charges every site every round (amplification by site sampling), so every site is checked
            for cid in (range(self.cfg.fed.clients) if site_level else selected):
                check = self.privacy.check_budget(cid, r)
                self.ledger.append("budget_check", {"round": r, "client": str(cid), **check})
                if check["allowed"]:
                    allowed.append(cid)
                else:
                    self.reporter.note(f"client {cid} refuses round {r}: ε would reach "
                                       f"{check['projected_epsilon']:.2f} > cap {check['max_epsilon']:.2f}")
            if site_level and len(allowed) < self.cfg.fed.clients:
                return self._abort(r, f"round {r} would push {self.cfg.fed.clients - len(allowed)} site(s) over "
                                      f"their ε cap; DP-FedAvg charges every site each round")
            selected = [c for c in selected if c in allowed]
        if site_level and len(selected) < min(self.cfg.fed.min_clients, self.cfg.fed.clients):
            # Poisson site sampling drew too few sites: a noise-only round (the draw does not depend on data)
            self.reporter.note(f"round {r}: {len(selected)} site(s) drawn (< min_clients); noise-only update")
            selected = []
        elif len(selected) < min(self.cfg.fed.min_clients, self.cfg.fed.clients):
            return self._abort(r, f"only {len(selected)} client(s) may still train in round {r} "
                                  f"(min_clients={self.cfg.fed.min_clients}); their privacy budgets are spent")
        self.ledger.append("round_start", {"round": r, "selected": [str(c) for c in selected]})
        self.reporter.round_start(r, selected)
        updates: list[ClientUpdate] = []
        for cid in selected:
            upd = self.trainer.train(self.model, self.client_data[cid], client_id=cid, round_index=r,
                                     generator=torch_generator(self.cfg.seed, "client", r, cid))
            updates.append(upd)
            self.reporter.client_done(r, cid, upd)
        if updates:
            agg = self.aggregator.aggregate(updates, round_index=r)
        else:
            agg = AggregateResult(torch.zeros_like(parameters_to_vector(self.model.parameters())).cpu(), [],
                                  {"mode": "off", "note": "no participants"})
        if agg.transcript.get("mode", "off") != "off":
            self.ledger.append("secure_agg", {"round": r, "transcript": agg.transcript})
        mean_delta = agg.mean_delta
        record: dict[str, Any] = {}
        if self.privacy:
            mean_delta = self.privacy.post_aggregate(mean_delta, updates, agg, round_index=r)
            for payload in self.privacy.commit_round(updates, agg, round_index=r):
                self.ledger.append("dp_event", payload)
            record.update(self.privacy.round_summary(selected))
        with torch.no_grad():
            vec = parameters_to_vector(self.model.parameters())
            vector_to_parameters(vec + self.cfg.fed.server_lr * mean_delta.to(vec.device), self.model.parameters())
        train_time = time.perf_counter() - t0
        record = {
            "round": r, "selected": selected, "contributors": agg.contributors,
            "loss": (float(np.average([u.loss for u in updates], weights=[u.num_examples for u in updates]))
                     if updates else None),
            "examples": int(sum(u.num_examples for u in updates)), "train_seconds": round(train_time, 3),
            **record,
        }
        if r % self.cfg.eval_every == 0 or r == self.cfg.fed.rounds:
            record.update(self._evaluate(r))
        record["seconds"] = round(time.perf_counter() - t0, 3)
        return record

    def _public_pretrain(self) -> dict[str, Any]:
        """Non-private pretraining of the fresh global model on public data (no site data, no ε spent)."""
        cfg, tr = self.cfg, self.splits.train
        if cfg.public_pretrain == "none":
            return {}
        from privfed.data.typeset import typeset_digits
        from privfed.models.pretrain import public_pretrain

        t0 = time.perf_counter()
        public = typeset_digits(cfg.model.pretrain_set_size, image_size=tr.size, channels=tr.channels,
                                seed=derive_seed(cfg.seed, "public-data"))
        progress = getattr(self.reporter, "pretrain_progress", None)
        loss = public_pretrain(self.model, self.scheduler, public, steps=cfg.model.pretrain_steps,
                               lr=cfg.model.pretrain_lr, batch_size=cfg.fed.batch_size,
                               generator=torch_generator(cfg.seed, "pretrain"), progress=progress)
        return {"public_pretrain": cfg.public_pretrain, "pretrain_loss": round(loss, 5),
                "pretrain_seconds": round(time.perf_counter() - t0, 3)}

    def _abort(self, r: int, reason: str) -> None:
        self.ledger.append("abort", {"round": r, "reason": reason})
        self.reporter.note(f"stopping: {reason}")
        return None

    def _evaluate(self, r: int) -> dict[str, Any]:
        t0 = time.perf_counter()
        fake = sample_images(self.model, self.scheduler, num_images=self.cfg.eval_samples,
                             sampler=self.cfg.model.sampler, steps=self.cfg.model.sampling_steps,
                             generator=torch_generator(self.cfg.seed, "eval"))
        grid = save_grid(fake[:100], self.dir.samples / f"round_{r:04d}.png")
        out = {"fid": round(domain_fid(self.classifier, self.splits.test.images, fake), 4),
               "class_histogram": class_histogram(self.classifier, fake),
               "sample_grid": str(grid.relative_to(self.dir.root)), "eval_seconds": round(time.perf_counter() - t0, 3)}
        if r == 0:
            out["classifier_test_accuracy"] = round(accuracy(self.classifier, self.splits.test), 4)
        return out

    def _info(self) -> dict[str, Any]:
        tr = self.splits.train
        return {"dataset": tr.name.split(":")[0], "train": len(tr), "test": len(self.splits.test),
                "image": f"{tr.channels}×{tr.size}×{tr.size}", "clients": self.summary,
                "parameters": sum(p.numel() for p in self.model.parameters()),
                "device": str(self.device), "python": platform.python_version(), "torch": torch.__version__}
