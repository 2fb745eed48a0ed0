"""``privfed rescore RUN_DIR...``: re-measure the FID of finished runs in the dataset's shared feature space.

Runs started before the FID feature extractor was shared across seeds (each trained its own, seeded by the run seed)
measured FID in different feature spaces, so their FIDs do not compare across seeds or sweeps. Rescoring
regenerates a checkpoint's evaluation samples exactly as the run did (:func:`privfed.federation.runner.
evaluation_samples`: the same model, the same noise draws) and scores them with both the run's own extractor (which
reproduces the recorded FID: a check that the regeneration is faithful) and the shared one of
:func:`privfed.metrics.classifier.shared_extractor`.

Nothing in the run directory changes (its ledger is signed); each run is verified first (``audits.verify``), so the
checkpoints rescored are the ones its ledger recorded. The result is a table, optionally written as CSV.
"""

from __future__ import annotations

import csv
import io
import tempfile
from pathlib import Path
from typing import Any, Callable

from privfed.errors import RunDirError
from privfed.rundir import EMA_MODEL, RunDir, atomic_write_text

COLUMNS = ("run", "round", "recorded_fid", "own_extractor_fid", "shared_extractor_fid", "shared_fid_lo",
           "shared_fid_hi", "own_extractor", "shared_extractor")


def _rounds(metrics: list[dict[str, Any]], which: str) -> list[int]:
    evaluated = [int(m["round"]) for m in metrics if "fid" in m]
    if which == "evaluated":
        return evaluated
    last = [r for r in evaluated if r > 0][-1:]
    return ([0] if 0 in evaluated else []) + last


def _check(run_dirs: list[Path], which: str) -> list[tuple[Path, Any, list[dict[str, Any]], list[int]]]:
    """Everything that can be refused, before any sampling: each directory is a run that verifies, with
    evaluated rounds whose checkpoints are present."""
    from audits.errors import AuditError
    from audits.verify import verify_run
    from privfed.config import RunConfig

    if which not in ("ends", "evaluated"):
        raise RunDirError(f"--rounds must be 'ends' or 'evaluated', not {which!r}")
    if not run_dirs:
        raise RunDirError("name at least one run directory")
    plans = []
    for run_dir in run_dirs:
        d = RunDir(run_dir)
        if not d.config.is_file() or not (run_dir / "ledger.jsonl").is_file():
            raise RunDirError(f"{run_dir}: not a run directory (no config.toml or ledger.jsonl)")
        try:
            verify_run(run_dir)
        except AuditError as e:
            raise RunDirError(f"{run_dir}: does not verify, so its checkpoints are not known to be the recorded "
                              f"ones: {e}") from e
        metrics = d.read_metrics()
        rounds = _rounds(metrics, which)
        missing = [r for r in rounds if not (d.checkpoint_dir(r) / "unet").is_dir()]
        if not rounds or missing:
            raise RunDirError(f"{run_dir}: no checkpoint for the evaluated round(s) {missing or 'any'}")
        plans.append((run_dir, RunConfig.from_toml(d.config), metrics, rounds))
    return plans


def rescore_runs(run_dirs: list[Path], *, rounds: str = "ends", on_start: Callable[[int], None] | None = None,
                 on_item: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """One row per (run, round): the recorded FID, the FID of the regenerated samples under the run's own extractor
    and under the shared one (with its basic-bootstrap 95 % interval over samples, as the run computes it), and
    the first 16 hex digits of each extractor's SHA-256. ``rounds``: "ends" (round 0 and the last evaluated round)
    or "evaluated" (every evaluated round). ``on_start(n)`` is called with the number of rows once every run has
    been checked, ``on_item(row)`` after each row."""
    from audits.artifact_hash import sha256_path
    from privfed.data import load_dataset
    from privfed.federation.runner import evaluation_samples
    from privfed.federation.seeding import derive_seed
    from privfed.metrics.classifier import RUN_EXTRACTOR_PATH, load_extractor, shared_extractor
    from privfed.metrics.fid import domain_fid, fid_interval
    from privfed.models.unet import build_scheduler, load_unet

    plans = _check([Path(p) for p in run_dirs], rounds)
    if on_start is not None:
        on_start(sum(len(p[3]) for p in plans))
    rows = []
    with tempfile.TemporaryDirectory(prefix="privfed-rescore-") as scratch:
        for run_dir, cfg, metrics, which in plans:
            d = RunDir(run_dir)
            test = load_dataset(cfg.data, seed=cfg.seed).test
            shared_path, _ = shared_extractor(cfg.data.dataset, test, fallback=Path(scratch))
            shared = load_extractor(shared_path)
            own_path = run_dir / RUN_EXTRACTOR_PATH
            own = load_extractor(own_path) if own_path.is_file() else None
            scheduler = build_scheduler(cfg.model)
            recorded = {int(m["round"]): m["fid"] for m in metrics if "fid" in m}
            for r in which:
                ck = d.checkpoint_dir(r)
                model = load_unet(ck / EMA_MODEL if r > 0 and (ck / EMA_MODEL).is_dir() else ck / "unet")
                fake = evaluation_samples(model.eval(), scheduler, cfg)  # sampling runs under no_grad
                lo, hi = fid_interval(shared, test.images, fake, seed=derive_seed(cfg.seed, "fid-bootstrap", r))
                row = {"run": str(run_dir), "round": r, "recorded_fid": recorded[r],
                       "own_extractor_fid": round(domain_fid(own, test.images, fake), 4) if own else None,
                       "shared_extractor_fid": round(domain_fid(shared, test.images, fake), 4),
                       "shared_fid_lo": round(lo, 4), "shared_fid_hi": round(hi, 4),
                       "own_extractor": sha256_path(own_path)[:16] if own else None,
                       "shared_extractor": sha256_path(shared_path)[:16]}
                rows.append(row)
                if on_item is not None:
                    on_item(row)
    return rows


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    """The rows as CSV (columns :data:`COLUMNS`), written atomically."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())
