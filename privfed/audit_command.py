"""`privfed audit RUN_DIR`: verify the ledger, optionally run the empirical audits, write the report."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from privfed.errors import PrivfedError


def run_audit(run_dir: Path, *, empirical: bool, pdf: bool, pin_key: str | None, console: Console,
              site_dirs: tuple[Path, ...] = (), head: str | None = None, keep_audit_runs: bool = False,
              synthetic_only: bool = False) -> int:
    """Return the exit code: 0 when the report was written from a verified ledger (and every site receipt found in
    RUN_DIR/sites/*/ or given in ``site_dirs`` verified and agreed with it).

    ``empirical`` appends an ``audit_spend`` record to the run's signed ledger (see :mod:`privfed.empirical`) and
    rewrites pins.txt; a ``head`` pinned before that still verifies (the report names the records after it)."""
    from audits.empirical import EmpiricalBoundViolation
    from audits.errors import AuditError, VerificationError
    from audits.report.build import build_report

    if not run_dir.is_dir():
        raise PrivfedError(f"run directory not found: {run_dir}")
    try:
        if empirical:
            from privfed.empirical import run_empirical
            run_empirical(run_dir, console=console, keep_runs=keep_audit_runs, synthetic_only=synthetic_only)
        paths = build_report(run_dir, pdf=pdf, expected_key_fingerprint=pin_key, expected_head_hash=head,
                             site_dirs=site_dirs)
    except VerificationError as e:
        console.print(f"[bold red]FAILED[/] {type(e).__name__}: {e}")
        for moved in _set_aside_earlier_report(run_dir):
            console.print(f"an earlier report no longer describes this ledger: moved to {moved}")
        return 1
    except EmpiricalBoundViolation as e:
        console.print(f"[bold red]FAILED: empirical privacy audit contradicts the accountant[/] {e}")
        return 3
    except AuditError as e:
        raise PrivfedError(f"{type(e).__name__}: {e}") from None
    for name in ("html", "json", "pdf"):
        p = getattr(paths, name, None)
        if p:
            console.print(f"report: {p}")
    return 0


REPORT_FILES = ("report.html", "report.json", "report.pdf")


def _set_aside_earlier_report(run_dir: Path) -> list[Path]:
    """A failed audit writes no report, and must not leave an earlier (PASSED) one in place as if it still held:
    rename report/report.{html,json,pdf} to *.stale (replacing an older .stale)."""
    moved = []
    for name in REPORT_FILES:
        p = run_dir / "report" / name
        if p.is_file():
            dst = p.with_name(name + ".stale")
            p.replace(dst)
            moved.append(dst)
    return moved
