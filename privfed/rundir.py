"""The run directory (DESIGN.md §4): atomic files, per-round checkpoints, metrics lines, resume state."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from privfed.errors import RunDirError

CHECKPOINT_PREFIX = "round_"
#: the moving average of the global model inside a checkpoint (fed.ema_decay > 0): what the run releases
EMA_MODEL = "unet_ema"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, then rename: readers see the old or the new file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


class RunDir:
    """Paths and atomic operations on one run directory."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    config = property(lambda self: self.root / "config.toml")
    metrics = property(lambda self: self.root / "metrics.jsonl")
    checkpoints = property(lambda self: self.root / "checkpoints")
    samples = property(lambda self: self.root / "samples")
    cache = property(lambda self: self.root / "cache")

    def create(self) -> None:
        """Create a new run directory; refuse to overwrite one that already holds a run."""
        if self.config.exists():
            raise RunDirError(f"{self.root} already holds a run; use --resume {self.root} or another --out")
        for d in (self.root, self.checkpoints, self.samples, self.cache):
            d.mkdir(parents=True, exist_ok=True)

    def require_existing(self) -> None:
        if not self.root.is_dir():
            raise RunDirError(f"run directory not found: {self.root}")
        if not self.config.is_file():
            raise RunDirError(f"{self.root} has no config.toml; it is not a privfed run directory")

    # --- checkpoints -------------------------------------------------------------------------
    def checkpoint_dir(self, round_index: int) -> Path:
        return self.checkpoints / f"{CHECKPOINT_PREFIX}{round_index:04d}"

    def save_checkpoint(self, round_index: int, model, state: dict[str, Any],
                        extra: dict[str, bytes] | None = None, models: dict[str, Any] | None = None) -> Path:
        """Save a diffusers `save_pretrained` folder plus `privfed_state.json` (and `extra` files, name -> bytes;
        `models`, name -> further models saved the same way), published by one rename."""
        final = self.checkpoint_dir(round_index)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=self.checkpoints))
        try:
            model.save_pretrained(tmp / "unet", safe_serialization=True)
            for name, other in (models or {}).items():
                other.save_pretrained(tmp / name, safe_serialization=True)
            for name, data in (extra or {}).items():
                atomic_write_bytes(tmp / name, data)
            atomic_write_text(tmp / "privfed_state.json", json.dumps(state, sort_keys=True, indent=1))
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        atomic_write_text(self.checkpoints / "latest", final.name)
        return final

    def latest_checkpoint(self, among: set[int] | None = None) -> tuple[int, Path] | None:
        """The newest complete checkpoint (folders are only ever published whole), optionally only of `among`."""
        done = sorted(p for p in self.checkpoints.glob(f"{CHECKPOINT_PREFIX}*")
                      if p.is_dir() and (p / "privfed_state.json").is_file()
                      and (among is None or int(p.name[len(CHECKPOINT_PREFIX):]) in among))
        if not done:
            return None
        return int(done[-1].name[len(CHECKPOINT_PREFIX):]), done[-1]

    def clean_partial(self) -> None:
        """Remove temp folders/files left by a crash mid-write."""
        for p in list(self.checkpoints.glob(".*")) + list(self.samples.glob(".*")):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)

    # --- metrics -----------------------------------------------------------------------------
    def append_metrics(self, record: dict[str, Any]) -> None:
        """Append one JSON line; the file is rewritten atomically so a crash never leaves a torn line."""
        lines = self.read_metrics()
        lines.append(record)
        atomic_write_text(self.metrics, "".join(json.dumps(r, sort_keys=True) + "\n" for r in lines))

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics.is_file():
            return []
        return [json.loads(line) for line in self.metrics.read_text().splitlines() if line.strip()]

    def truncate_metrics_after(self, round_index: int) -> None:
        """Drop metrics of rounds after the last checkpoint (they will be recomputed on resume)."""
        keep = [r for r in self.read_metrics() if r.get("round", 0) <= round_index]
        atomic_write_text(self.metrics, "".join(json.dumps(r, sort_keys=True) + "\n" for r in keep))
