"""What privfed writes into the signed ledger (audits.ledger) — payload builders, never raw data or secrets."""

from __future__ import annotations

import hashlib
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from audits.artifact_hash import sha256_path
from privfed.config import RunConfig

SUPPRESSION_THRESHOLD = 5    # counts in 1..4 are published as "<5" (small-cell suppression)
_PACKAGES = ("privfed", "torch", "diffusers", "opacus", "dp-accounting", "cryptography", "numpy", "torchmetrics")


def package_versions() -> dict[str, str]:
    out = {}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def hardware() -> dict[str, Any]:
    info: dict[str, Any] = {"machine": platform.machine(), "processor": platform.processor() or "unknown",
                            "cpu_count": os.cpu_count(), "python": platform.python_version(),
                            "platform": platform.platform(), "torch_threads": torch.get_num_threads(),
                            "cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(0)
    return info


def run_start(cfg: RunConfig, config_path: Path, *, dp_noise_rng: str) -> dict[str, Any]:
    return {"config_hash": hashlib.sha256(config_path.read_bytes()).hexdigest(), "config": cfg.to_dict(),
            "versions": package_versions(), "hardware": hardware(), "dp_mode": cfg.dp.mode,
            "secure_agg_mode": cfg.secure_agg.mode, "dp_noise_rng": dp_noise_rng,
            "public_pretrain": public_pretrain_description(cfg),
            "intended_use": "research and evaluation of federated generative models on privacy-bound image data"}


def public_pretrain_description(cfg: RunConfig) -> str:
    """What the initial model was trained on before any site took part (in words, for the report)."""
    if cfg.public_pretrain == "none":
        return "none: the global model starts from a random initialisation"
    m = cfg.model
    return (f"{cfg.public_pretrain}: {m.pretrain_steps} non-private Adam steps (lr {m.pretrain_lr:g}, batch "
            f"{cfg.fed.batch_size}) on {m.pretrain_set_size} synthetic digits typeset in fonts shipped with "
            f"matplotlib, seeded from the run seed; public data, no site data, no privacy budget spent")


def _suppress(count: int, k: int) -> int | str:
    return f"<{k}" if 0 < count < k else int(count)


def data_summary(summary: Iterable[Mapping[str, Any]], *, k: int = SUPPRESSION_THRESHOLD) -> dict[str, Any]:
    """Per-client counts with small cells suppressed, so that a rare label at one site is not singled out."""
    return {"suppression_threshold": k,
            "clients": {str(row["client"]): {"n": _suppress(row["n"], k),
                                             "label_counts": {lab: _suppress(c, k)
                                                              for lab, c in row["label_counts"].items()}}
                        for row in summary}}


def checkpoint_entry(run_root: Path, checkpoint: Path) -> dict[str, str]:
    return {"path": checkpoint.relative_to(run_root).as_posix(), "sha256": sha256_path(checkpoint)}


_LEDGER_METRICS = ("loss", "fid", "examples", "train_seconds", "eval_seconds", "classifier_test_accuracy",
                   "class_histogram", "epsilon_max")


def round_metrics(record: Mapping[str, Any]) -> dict[str, Any]:
    """The utility figures that go into round_end (the rest stays in metrics.jsonl)."""
    return {k: record[k] for k in _LEDGER_METRICS if k in record}
