"""The Flower ``ServerApp``: the server role of a run whose sites are Flower SuperNodes.

Its run config names the run directory (``run-dir``; config.toml, roster.json and the ledger key live there) and
the timeouts. It runs exactly the in-process federation loop (:class:`~privfed.federation.runner.FederatedRun`:
ledger, checkpoints, evaluation, resume from the last complete round), with the sites reached only through
:class:`~privfed.flower.engine.FlowerEngine`. Whatever happens, it writes ``RUN_DIR/flower/status.json`` (finished
or failed, with the error) for the launcher.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

app = ServerApp()

FAULT_ENV = "PRIVFED_FLOWER_SERVER_FAULT"     # tests only: "<round>" → the server process dies (SIGKILL) there


class LogReporter:
    """Round lines on stdout (Flower keeps them in the SuperLink's log and shows them with ``flwr log``)."""

    def run_start(self, *, total_rounds, done_rounds, info):
        print(f"privfed: {total_rounds} rounds ({done_rounds} done); " + "; ".join(info.get("notes", [])), flush=True)

    def round_start(self, round_index, selected):
        print(f"privfed: round {round_index}: sites {selected}", flush=True)
        fault = os.environ.get(FAULT_ENV)
        if fault and int(fault) == round_index:
            os.kill(os.getpid(), 9)

    def client_done(self, *_):
        pass

    def round_end(self, round_index, record):
        keys = ("eval_loss", "fid", "epsilon_max", "seconds")
        print(f"privfed: round {round_index} done: " + ", ".join(f"{k} {record[k]}" for k in keys if k in record),
              flush=True)

    def note(self, text):
        print(f"privfed: {text}", flush=True)


def write_status(run_dir: Path, **status) -> None:
    from privfed.rundir import atomic_write_text

    (run_dir / "flower").mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "flower" / "status.json", json.dumps({**status, "time": time.time()}, indent=1))


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    run_dir = Path(str(cfg["run-dir"]))
    try:
        from privfed.federation.runner import FederatedRun
        from privfed.flower.engine import FlowerEngine

        reporter = LogReporter()
        fr = FederatedRun.resume(run_dir, reporter=reporter)
        fr.remote_sites = True
        run_id = fr.run_id

        made: list[FlowerEngine] = []

        def engine(*, drop_plan, releases, observer, ledger):
            made.append(FlowerEngine(grid, run_id=run_id, roster=fr.roster, ledger=ledger,
                                stage_timeout_s=float(cfg.get("stage-timeout", 60.0)),
                                train_timeout_s=float(cfg.get("train-timeout", 1800.0)),
                                wait_for_nodes_s=float(cfg.get("wait-for-nodes", 120.0)),
                                drop_plan=drop_plan, releases=releases, observer=observer, note=reporter.note))
            return made[-1]

        fr.engine_factory = engine
        result = fr.run()
        write_status(run_dir, state="finished", rounds_completed=result.rounds_completed,
                     closing_lines=result.closing_lines,
                     timings=[list(t) for e in made for t in e.timings])
    except BaseException as e:      # the launcher must learn why; Flower only records "failed"
        write_status(run_dir, state="failed", error=type(e).__name__, reason=str(e))
        traceback.print_exc(file=sys.stdout)
        raise
