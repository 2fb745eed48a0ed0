"""The in-process federation runner (the embedded default): every client and the server in one process."""

from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from privfed.config import RunConfig
from privfed.data import client_summary, load_dataset, partition_indices
from privfed.data.dataset import DatasetSplits, ImageDataset
from privfed.errors import RunDirError
from privfed.federation.aggregation import PlainFedAvg
from privfed.federation.client import ClientUpdate, LocalTrainer
from privfed.federation.seeding import derive_seed, numpy_generator, torch_generator
from privfed.metrics import domain_fid, load_or_train_classifier, save_grid
from privfed.metrics.classifier import accuracy
from privfed.metrics.fid import class_histogram
from privfed.models import build_scheduler, build_unet, sample_images
from privfed.rundir import RunDir, atomic_write_text


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
    untrained_fid: float | None
    metrics: list[dict[str, Any]]


class FederatedRun:
    """One federated training run bound to a run directory (new or resumed)."""

    def __init__(self, cfg: RunConfig, run_dir: str | Path, *, reporter: Reporter | None = None) -> None:
        self.cfg = cfg
        self.dir = RunDir(run_dir)
        self.reporter = reporter or SilentReporter()
        self.device = torch.device(cfg.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise RunDirError("--device cuda requested but no CUDA device is available")

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def create(cls, cfg: RunConfig, run_dir: str | Path, *, reporter: Reporter | None = None) -> "FederatedRun":
        """Validate data and partition first, then create the run directory (nothing half-written on bad input)."""
        run = cls(cfg, run_dir, reporter=reporter)
        run._load_data()
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

    # ---- the loop -----------------------------------------------------------------------------
    def run(self) -> RunResult:
        cfg = self.cfg
        self.dir.clean_partial()
        self.scheduler = build_scheduler(cfg.model)
        self.classifier = load_or_train_classifier(self.dir.cache / "domain_classifier.safetensors",
                                                   self.splits.train, seed=derive_seed(cfg.seed, "classifier"))
        latest = self.dir.latest_checkpoint()
        if latest is None:
            torch.manual_seed(derive_seed(cfg.seed, "init"))
            self.model = build_unet(cfg.model, channels=self.splits.train.channels,
                                    image_size=self.splits.train.size).to(self.device)
            start = 0
        else:
            start, path = latest
            from diffusers import UNet2DModel
            self.model = UNet2DModel.from_pretrained(path / "unet").to(self.device)
            self.dir.truncate_metrics_after(start)
            self.reporter.note(f"resuming {self.dir.root} after round {start}")
        self.trainer = LocalTrainer(cfg.fed, self.scheduler)
        self.aggregator = PlainFedAvg()
        self.reporter.run_start(total_rounds=cfg.fed.rounds, done_rounds=start, info=self._info())
        if start == 0 and latest is None:
            record = {"round": 0, **self._evaluate(0)}
            self.dir.append_metrics(record)
            self.dir.save_checkpoint(0, self.model, {"round": 0})
            self.reporter.round_end(0, record)
        for r in range(start + 1, cfg.fed.rounds + 1):
            record = self._round(r)
            self.dir.append_metrics(record)
            self.dir.save_checkpoint(r, self.model, {"round": r})
            self.reporter.round_end(r, record)
        metrics = self.dir.read_metrics()
        fids = [m["fid"] for m in metrics if "fid" in m]
        untrained = next((m["fid"] for m in metrics if m["round"] == 0 and "fid" in m), None)
        return RunResult(self.dir.root, cfg.fed.rounds, fids[-1] if fids else None, untrained, metrics)

    def _select(self, round_index: int) -> list[int]:
        n = self.cfg.fed.clients
        k = max(1, int(round(self.cfg.fed.fraction * n)))
        rng = numpy_generator(self.cfg.seed, "select", round_index)
        return sorted(rng.choice(n, size=k, replace=False).tolist())

    def _round(self, r: int) -> dict[str, Any]:
        t0 = time.perf_counter()
        selected = self._select(r)
        self.reporter.round_start(r, selected)
        updates: list[ClientUpdate] = []
        for cid in selected:
            upd = self.trainer.train(self.model, self.client_data[cid], client_id=cid, round_index=r,
                                     generator=torch_generator(self.cfg.seed, "client", r, cid))
            updates.append(upd)
            self.reporter.client_done(r, cid, upd)
        agg = self.aggregator.aggregate(updates, round_index=r)
        with torch.no_grad():
            vec = parameters_to_vector(self.model.parameters())
            vector_to_parameters(vec + self.cfg.fed.server_lr * agg.mean_delta.to(vec.device), self.model.parameters())
        train_time = time.perf_counter() - t0
        record: dict[str, Any] = {
            "round": r, "selected": selected, "contributors": agg.contributors,
            "loss": float(np.average([u.loss for u in updates], weights=[u.num_examples for u in updates])),
            "examples": int(sum(u.num_examples for u in updates)), "train_seconds": round(train_time, 3),
        }
        if r % self.cfg.eval_every == 0 or r == self.cfg.fed.rounds:
            record.update(self._evaluate(r))
        record["seconds"] = round(time.perf_counter() - t0, 3)
        return record

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
