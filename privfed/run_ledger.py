"""What privfed writes into the signed ledger (audits.ledger) — payload builders, never raw data or secrets."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import platform
import subprocess
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


def run_start(cfg: RunConfig, config_path: Path, *, dp_noise_rng: str,
              evaluation: Mapping[str, Any] | None = None) -> dict[str, Any]:
    config_hash = hashlib.sha256(config_path.read_bytes()).hexdigest()
    extra = {"evaluation": dict(evaluation)} if evaluation is not None else {}
    return {**extra,"run_id": config_hash[:32],  # as the runner names the run (pins.txt, roster, receipts)
            "config_hash": config_hash, "config": cfg.to_dict(),
            "versions": package_versions(), "hardware": hardware(), "dp_mode": cfg.dp.mode,
            "secure_agg_mode": cfg.secure_agg.mode, "dp_noise_rng": dp_noise_rng,
            "public_pretrain": public_pretrain_description(cfg),
            "intended_use": "research and evaluation of federated generative models on privacy-bound image data",
            "operator": {k: v for k, v in dataclasses.asdict(cfg.operator).items() if v is not None},
            "source": source_version(), "dataset_fingerprint": dataset_fingerprint(cfg)}


def source_version() -> dict[str, Any]:
    """The privfed package version and, when it runs from a git checkout, the commit and whether the tracked files
    differ from it (for the report's first page); never fails a run."""
    out: dict[str, Any] = {"package": "privfed", "version": package_versions()["privfed"]}
    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        return out
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=20, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return out
    if len(commit) in (40, 64):
        out["commit"] = commit
        out["modified"] = bool(dirty)
    return out


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def dataset_fingerprint(cfg: RunConfig) -> dict[str, Any]:
    """SHA-256 of the dataset's source file(s) as read from disk (a folder: of the sorted (path, file hash) list),
    so an auditor can check which data the run used. Counts and images are never recorded."""
    d = cfg.data
    try:
        if d.dataset == "digits":
            import sklearn.datasets as skd

            f = Path(skd.__file__).parent / "data" / "digits.csv.gz"
            return {"source": "scikit-learn bundled digits (digits.csv.gz)", "sha256": _sha256_file(f)}
        if d.path and Path(d.path).is_file():
            return {"source": f"{d.dataset}: {Path(d.path).name}", "sha256": _sha256_file(Path(d.path))}
        if d.path and Path(d.path).is_dir():
            root = Path(d.path)
            files = sorted(p for p in root.rglob("*") if p.is_file())
            listing = "".join(f"{p.relative_to(root).as_posix()}\t{_sha256_file(p)}\n" for p in files)
            return {"source": f"folder {root.name}/ ({len(files)} files)",
                    "sha256": hashlib.sha256(listing.encode()).hexdigest()}
        local = Path.home() / ".medmnist" / f"{d.dataset}.npz"
        if local.is_file():
            return {"source": f"{d.dataset}: {local.name}", "sha256": _sha256_file(local)}
    except (OSError, ImportError):
        pass
    return {"source": d.dataset}


def public_pretrain_description(cfg: RunConfig) -> str:
    """What the initial model was trained on before any site took part (in words, for the report)."""
    if cfg.public_pretrain == "none":
        return "none: the global model starts from a random initialisation"
    m = cfg.model
    return (f"{cfg.public_pretrain}: {m.pretrain_steps} non-private Adam steps (lr {m.pretrain_lr:g}, batch "
            f"{m.pretrain_batch_size}) on {m.pretrain_set_size} synthetic digits typeset in "
            f"fonts shipped with matplotlib, seeded from the run seed; public data, no site data, no privacy budget "
            f"spent")


SUPPRESSED = "suppressed"


def suppress_row(label_counts: Mapping[str, int], *, k: int = SUPPRESSION_THRESHOLD) -> dict[str, int | str]:
    """One site's label counts with small cells (1..k-1) and complementary cells suppressed.

    A site's total n is public (the DP sample rate q = batch/n in every DP event gives it away), so suppressing
    the small cells alone is undone by subtraction: n minus the published cells. Whenever a row has a small cell,
    the smallest non-zero cells of at least k (with every cell tied to them) are suppressed too, until at least
    two cells are suppressed and together they hold at least 2k images. Every suppressed cell is published as the
    same word, so a reader learns their total, not which label is the rare one nor its count. Zeros are published
    (a zero is no individual). A row without any cell of at least k cannot be protected this way;
    ``rows_left_exposed`` names such rows.
    """
    counts = {str(lab): int(c) for lab, c in label_counts.items()}
    small = {lab for lab, c in counts.items() if 0 < c < k}
    if not small:
        return dict(counts)
    hidden = set(small)
    rest = sorted({c for lab, c in counts.items() if c >= k})
    for value in rest:
        if len(hidden) >= 2 and sum(counts[lab] for lab in hidden) >= 2 * k and hidden - small:
            break
        hidden |= {lab for lab, c in counts.items() if c == value}
    return {lab: (SUPPRESSED if lab in hidden else c) for lab, c in counts.items()}


def rows_left_exposed(label_counts: Mapping[str, int], *, k: int = SUPPRESSION_THRESHOLD) -> bool:
    """True when complementary suppression cannot hide a small cell: the row has no cell of at least k to suppress
    with it (e.g. a site with fewer than k images of every label), so a reader who knows n knows that every
    suppressed label there is rare."""
    cs = [int(c) for c in label_counts.values()]
    return any(0 < c < k for c in cs) and not any(c >= k for c in cs)


def _small_total(n: int, k: int) -> int | str:
    return f"<{k}" if 0 < n < k else n


def data_summary(summary: Iterable[Mapping[str, Any]], *, k: int = SUPPRESSION_THRESHOLD) -> dict[str, Any]:
    """Per-client counts with small cells and their complements suppressed (``suppress_row``), so that a rare label
    at one site is not singled out, not even by subtracting the published cells from the site's total n."""
    return {"suppression_threshold": k, "suppression": "complementary",
            "clients": {str(row["client"]): {"n": _small_total(int(row["n"]), k),
                                             "label_counts": suppress_row(row["label_counts"], k=k)}
                        for row in summary}}


def checkpoint_entry(run_root: Path, checkpoint: Path) -> dict[str, str]:
    return {"path": checkpoint.relative_to(run_root).as_posix(), "sha256": sha256_path(checkpoint)}


def evaluation_provenance(feature_extractor: Mapping[str, Any], test, *, val=None) -> dict[str, Any]:
    """What the utility metrics are computed on (run_start.evaluation; the report prints it): the FID feature
    extractor's training data (``privfed.metrics.classifier.evaluation_classifier``), the evaluation split and,
    where the dataset has one, the validation split behind ``fid_val``."""
    from privfed.metrics.classifier import RUN_EXTRACTOR_PATH, dataset_sha256

    # the material (which data, seed, epochs) stays in the run's provenance file and the cache entry; the ledger
    # pins it by its hash (key) and the weights by theirs
    fx = {k: v for k, v in feature_extractor.items() if k != "material"}
    if "weights_sha256" in fx:
        fx["path"] = RUN_EXTRACTOR_PATH          # the copy audits.verify hashes
    out = {"feature_extractor": fx,
           "evaluation_split": {"class": "declared", "image_count": len(test), "sha256": dataset_sha256(test),
                                "source": "the dataset's test split, held out and never partitioned to a site"},
           "released": "FID (the split's feature mean and covariance are not released), the model's diffusion loss "
                       "on the split (eval_loss), the feature extractor's accuracy on the split; the sites' "
                       "training loss is not released"}
    if val is not None:
        out["validation_split"] = {"class": "declared", "image_count": len(val), "sha256": dataset_sha256(val),
                                   "source": "the dataset's validation split, held out and never partitioned to a "
                                             "site; FID on it (fid_val) is for choosing schedules"}
    return out


# no "loss": the sites' training loss on private batches is not a release (issue 15); eval_loss is on the declared
# evaluation split
_LEDGER_METRICS = ("eval_loss", "fid", "examples", "train_seconds", "eval_seconds", "classifier_test_accuracy",
                   "class_histogram", "epsilon_max", "pretrain_key", "pretrain_sha256", "fid_interval", "fid_val")


def round_metrics(record: Mapping[str, Any]) -> dict[str, Any]:
    """The utility figures that go into round_end (the rest stays in metrics.jsonl)."""
    return {k: record[k] for k in _LEDGER_METRICS if k in record}
