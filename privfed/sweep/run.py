"""Run a sweep: each point an ordinary run directory under ``SWEEP_DIR/runs/<point>/`` (signed ledger and all),
finished points skipped, interrupted ones resumed, results and summary rewritten after every point.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from audits.artifact_hash import sha256_path
from privfed.errors import ConfigError, PrivfedError
from privfed.rundir import atomic_write_text
from privfed.sweep.results import csv_columns, group_rows, point_row, read_ledger_end
from privfed.sweep.spec import Point, Sweep


#: points that failed with a privfed error (slug -> error, config hash), so a rerun skips them unless asked
FAILED_FILE = "failed.json"
#: points copied from another sweep by --reuse-from (slug -> source run directory, SHA-256 of the copied ledger):
#: their `seconds` were measured there, and the summary says so
REUSED_FILE = "reused.json"


@dataclass
class PointState:
    point: Point
    run_dir: Path
    status: str                 # new | partial | done | failed
    error: str | None = None


def point_state(point: Point, run_dir: Path) -> PointState:
    """Where a point stands. A run directory that holds another configuration (the sweep file was edited) is an
    error, never silently reused or overwritten."""
    cfg_path = run_dir / "config.toml"
    failed = _failures(run_dir.parent.parent).get(point.slug)
    if failed is not None and failed["config_hash"] == point.config_hash:
        return PointState(point, run_dir, "failed", failed["error"])
    if not cfg_path.is_file():
        return PointState(point, run_dir, "new")
    if not _same_config(cfg_path, point):
        raise ConfigError(f"{run_dir} holds a run with another configuration than point {point.label!r} of the sweep "
                          f"file (was the file edited?); move that folder away or restore the sweep file")
    return PointState(point, run_dir, "done" if read_ledger_end(run_dir) is not None else "partial")


def _same_config(cfg_path: Path, point: Point) -> bool:
    """Whether the run's config.toml means the point's configuration: compared as resolved configs, so that a run
    written before a key with a default was added (it behaves as that default) is still the same point, and with
    the clip range the run fitted when the point leaves it unset."""
    from privfed.config import RunConfig

    if cfg_path.read_text() == point.config.to_toml():
        return True
    try:
        run = RunConfig.from_toml(cfg_path)
    except PrivfedError:
        return False
    if run == point.config:
        return True
    # a clip range the point leaves unset is fitted to the noise when the run starts (fit_clip_range)
    if (not point.config.was_unset("secure_agg", "clip_range")
            or run != point.config.replace(secure_agg={"clip_range": run.secure_agg.clip_range})):
        return False
    from privfed.federation.runner import FederatedRun

    try:
        return run == FederatedRun.written_config(point.config)
    except PrivfedError:
        return False


def _failures(out: Path) -> dict[str, Any]:
    path = out / FAILED_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def _record_failure(out: Path, st: PointState) -> None:
    failed = _failures(out)
    if st.status == "failed":
        failed[st.point.slug] = {"error": st.error, "config_hash": st.point.config_hash}
    else:
        failed.pop(st.point.slug, None)
    atomic_write_text(out / FAILED_FILE, json.dumps(failed, indent=1, sort_keys=True))


def plan(sweep: Sweep, out: Path) -> list[PointState]:
    return [point_state(p, out / "runs" / p.slug) for p in sweep.points]


def write_results(sweep: Sweep, out: Path, states: list[PointState]) -> list[dict[str, Any]]:
    """results.csv, results.json and summary.html (with figures/) from the points' run directories."""
    from privfed.sweep.summary import write_summary

    copies = _reused(out)
    rows = [point_row(s.point, s.run_dir, status=s.status, error=s.error, reused_from=reused_from(copies, s))
            for s in states]
    groups = group_rows(rows)
    cols = csv_columns(rows)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("inf" if isinstance(r.get(k), float) and math.isinf(r[k]) else r.get(k)) for k in cols})
    atomic_write_text(out / "results.csv", buf.getvalue())
    public_groups = [{k: v for k, v in g.items() if not k.startswith("_")} for g in groups]
    atomic_write_text(out / "results.json", json.dumps(
        {"sweep": sweep.name, "source": str(sweep.source), "points": [_jsonable(r) for r in rows],
         "groups": [_jsonable(g) for g in public_groups]}, indent=1, sort_keys=True, allow_nan=False))
    write_summary(sweep, out, rows, groups)
    return rows


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k.lstrip("_"): _jsonable(v) for k, v in obj.items() if k not in ("_context", "_group", "_rows")}
    if isinstance(obj, list):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and (math.isnan(obj) or math.isinf(obj)):
        return None if math.isnan(obj) else "inf"
    return obj


def reusable_runs(sweep: Sweep, out: Path, sources: Sequence[Path]) -> dict[str, Path]:
    """Finished runs in other sweep directories (``SOURCE/runs/*``) that mean a point of this sweep which has no run
    directory yet: point slug -> the run found (the first source wins)."""
    for src in sources:
        if not (src / "runs").is_dir():
            raise ConfigError(f"--reuse-from {src}: not a sweep directory (no runs/ folder)")
    found: dict[str, Path] = {}
    candidates = [d for src in sources for d in sorted((src / "runs").iterdir())
                  if (d / "config.toml").is_file() and read_ledger_end(d) is not None]
    for st in plan(sweep, out):
        if st.status != "new":
            continue
        hit = next((d for d in candidates if _same_config(d / "config.toml", st.point)), None)
        if hit is not None:
            found[st.point.slug] = hit
    return found


def reuse_runs(sweep: Sweep, out: Path, sources: Sequence[Path],
               found: dict[str, Path] | None = None) -> list[str]:
    """Copy the finished runs that ``reusable_runs`` finds (or `found`, its result when the caller already has it)
    into this sweep (one rename per run, so a crash leaves no half copy), each only after its copy verifies:
    complete, signed hash chain, checkpoint hashes and ε recomputed (``audits.verify.verify_run``). Returns the
    slugs reused."""
    from audits.errors import AuditError
    from audits.verify import verify_run

    reused = []
    record = _reused(out)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    for slug, src in (reusable_runs(sweep, out, sources) if found is None else found).items():
        tmp = Path(tempfile.mkdtemp(prefix=f".{slug}.", dir=out / "runs"))
        try:
            shutil.copytree(src, tmp / "run", symlinks=True)
            try:
                verify_run(tmp / "run", require_complete=True)
            except AuditError as e:
                raise ConfigError(f"--reuse-from: {src} does not verify ({e}); not reused") from e
            os.replace(tmp / "run", out / "runs" / slug)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        reused.append(slug)
        record[slug] = {"from": str(src), "ledger_sha256": sha256_path(out / "runs" / slug / "ledger.jsonl")}
        atomic_write_text(out / REUSED_FILE, json.dumps(record, indent=1, sort_keys=True))
    return reused


def _reused(out: Path) -> dict[str, Any]:
    path = out / REUSED_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def reused_from(copies: dict[str, Any], st: PointState) -> str | None:
    """The run directory a point was copied from by --reuse-from (``copies``: the sweep's reused.json), or None:
    None as well when its run directory no longer holds the copied ledger (deleted and run again here)."""
    entry = copies.get(st.point.slug)
    ledger = st.run_dir / "ledger.jsonl"
    if entry is None or not ledger.is_file() or sha256_path(ledger) != entry["ledger_sha256"]:
        return None
    return entry["from"]


def run_sweep(sweep: Sweep, out: Path, *, reporter_factory: Callable[[PointState], Any] | None = None,
              on_point: Callable[[PointState, float], None] | None = None, retry_failed: bool = False,
              only: set[str] | None = None) -> list[PointState]:
    """Run every point that is not done, one after the other, in this process (points compete for the same cores:
    running them in parallel on a small machine is slower, not faster). A point that fails with a privfed error
    (a refused round, an exhausted budget) is recorded as failed and the sweep goes on; ``retry_failed`` runs it again.
    ``only``: the slugs of the points to run (``--only``); the others are left as they are, and the results and
    summary still cover every point of the sweep.
    """
    from privfed.federation.runner import FederatedRun

    out.mkdir(parents=True, exist_ok=True)
    states = plan(sweep, out)
    src_copy = out / "sweep.toml"
    if src_copy.is_file() and src_copy.read_text() != sweep.source.read_text():
        atomic_write_text(out / f"sweep.{time.strftime('%Y%m%d-%H%M%S')}.toml", src_copy.read_text())
    atomic_write_text(src_copy, sweep.source.read_text())
    write_results(sweep, out, states)
    for st in states:
        if st.status == "done" or (st.status == "failed" and not retry_failed):
            continue
        if only is not None and st.point.slug not in only:
            continue
        if st.status == "failed":
            st.status = "partial" if (st.run_dir / "config.toml").is_file() else "new"
        t0 = time.perf_counter()
        reporter = reporter_factory(st) if reporter_factory else None
        try:
            if st.status == "new":
                run = FederatedRun.create(st.point.config, st.run_dir, reporter=reporter)
            else:
                run = FederatedRun.resume(st.run_dir, reporter=reporter)
            run.run()
            st.status, st.error = "done", None
        except PrivfedError as e:
            st.status, st.error = "failed", f"{type(e).__name__}: {e}"
        _record_failure(out, st)
        if on_point:
            on_point(st, time.perf_counter() - t0)
        write_results(sweep, out, states)
    return states
