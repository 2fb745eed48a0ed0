"""``privfed sweep SWEEP.toml``: progress over all points (with ETA), one line per finished point."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from privfed.sweep.run import PointState, plan, reusable_runs, reuse_runs, run_sweep, write_results
from privfed.sweep.spec import load_sweep, select_points


class _PointReporter:
    """Advances the sweep's round counter; the per-point detail stays in the point's run directory."""

    def __init__(self, progress: Progress, task, st: PointState, counted: dict[str, int]) -> None:
        self.p, self.task, self.st, self.counted = progress, task, st, counted

    def run_start(self, *, total_rounds: int, done_rounds: int, info: dict[str, Any]) -> None:
        already = self.counted.get(self.st.point.slug, 0)
        if done_rounds > already:
            self.p.advance(self.task, done_rounds - already)
            self.counted[self.st.point.slug] = done_rounds
        self.p.update(self.task, description=f"{self.st.point.label} (round {done_rounds}/{total_rounds})")

    def pretrain_progress(self, done: int, total: int) -> None:
        if done == 1 or done == total:
            self.p.update(self.task, description=f"{self.st.point.label} (public pretraining {done}/{total})")

    def round_start(self, round_index: int, selected: list[int]) -> None:
        self.p.update(self.task, description=f"{self.st.point.label} (round {round_index}/"
                                             f"{self.st.point.config.fed.rounds})")

    def client_done(self, *_: Any) -> None:
        pass

    def round_end(self, round_index: int, record: dict[str, Any]) -> None:
        if round_index > 0:
            self.p.advance(self.task)
            self.counted[self.st.point.slug] = self.counted.get(self.st.point.slug, 0) + 1

    def note(self, text: str) -> None:
        pass


def sweep_command(sweep_file: Path, out: Path | None, *, dry_run: bool, retry_failed: bool,
                  console: Console, reuse_from: tuple[Path, ...] = (), only: tuple[str, ...] = ()) -> int:
    """Validate the whole sweep first (every point's configuration; exit 2 on bad input, nothing written), then
    run it. Returns 0 when every selected point is done, 1 when some failed (listed). ``reuse_from``: other sweep
    directories whose finished runs of the same configuration are copied in (verified) instead of run again.
    ``only``: ``KEY=VALUE`` clauses choosing the points to run (``spec.select_points``); results and summary still
    cover the whole sweep, so a later run without ``--only`` goes on where this one stopped."""
    sweep = load_sweep(sweep_file)
    out = out or Path("sweeps") / sweep.name
    chosen = {p.slug for p in select_points(sweep, only)}
    states = plan(sweep, out)
    reusable = reusable_runs(sweep, out, reuse_from) if reuse_from else {}
    reusable = {slug: src for slug, src in reusable.items() if slug in chosen}      # --only: touch nothing else
    table = Table(title=f"sweep {sweep.name}: {len(states)} points → {out}")
    for col in ("point", "rounds", "status"):
        table.add_column(col)
    for st in states:
        also = f" (= {', '.join(st.point.also)})" if st.point.also else ""
        status = f"reuse {reusable[st.point.slug]}" if st.point.slug in reusable else st.status
        if st.point.slug not in chosen:
            status += " (not selected)"
        table.add_row(st.point.label + also, str(st.point.config.fed.rounds), status)
    console.print(table)
    if dry_run:
        return 0
    if reusable:
        reused = reuse_runs(sweep, out, reuse_from, found=reusable)
        console.print(f"reused {len(reused)} finished run(s) from {', '.join(map(str, reuse_from))} (verified)")
        states = plan(sweep, out)
    selected = [st for st in states if st.point.slug in chosen]
    total = sum(st.point.config.fed.rounds for st in selected)
    done = sum(st.point.config.fed.rounds for st in selected if st.status == "done")
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("rounds"),
                        TimeElapsedColumn(), TimeRemainingColumn(), console=console)
    counted: dict[str, int] = {}
    with progress:
        task = progress.add_task("sweep", total=total, completed=done)

        def on_point(st: PointState, seconds: float) -> None:
            if st.status == "done":
                rounds = st.point.config.fed.rounds
                progress.advance(task, max(0, rounds - counted.get(st.point.slug, 0)))
                counted[st.point.slug] = rounds
            from privfed.sweep.results import point_row

            row = point_row(st.point, st.run_dir, status=st.status, error=st.error)
            fid = "–" if row["fid"] is None else f"{row['fid']:.1f} [{row['fid_lo']:.1f}, {row['fid_hi']:.1f}]"
            eps = "–" if row["epsilon"] is None or math.isinf(row["epsilon"]) else f"{row['epsilon']:.2f}"
            progress.console.print(f"{st.status:>6}  {st.point.label}: FID {fid}, ε {eps}, {seconds:.0f} s"
                                   + (f"  ({st.error})" if st.error else ""))

        try:
            states = run_sweep(sweep, out, reporter_factory=lambda st: _PointReporter(progress, task, st, counted),
                               on_point=on_point, retry_failed=retry_failed, only=chosen)
        except KeyboardInterrupt:
            console.print(f"privfed: interrupted; run the same command again to resume ({out})")
            write_results(sweep, out, plan(sweep, out))
            return 130
    failed = [st for st in states if st.status == "failed" and st.point.slug in chosen]
    finished = sum(st.status == "done" for st in states)
    console.print(f"[bold]{finished} of {len(states)} points done[/]"
                  + (f" ({len(chosen)} selected by --only)" if only else "")
                  + f" → {out / 'summary.html'}, {out / 'results.csv'}")
    for st in failed:
        console.print(f"[red]failed[/] {st.point.label}: {st.error} (run again with --retry-failed)")
    return 1 if failed else 0
