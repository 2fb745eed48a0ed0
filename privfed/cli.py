"""`privfed` command line: run (train a federation), audit (verify and report on a run), site init (a site's identity).

Errors: the project's own named errors (bad input, a refused round, a failed verification, an exhausted budget)
become one line on stderr and exit code 2; anything else is a bug and keeps its traceback. `--debug` shows the
traceback for the project's errors too.
"""

from __future__ import annotations

import sys
import time
import traceback
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from privfed.config import RunConfig
from privfed.errors import PrivfedError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Privacy-hardened federated training of image diffusion models.")
console = Console(stderr=False)


_STATE = {"debug": False}


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show the traceback of the project's own errors too "
                                     "(a bug always shows one).")) -> None:
    """Privacy-hardened federated training of image diffusion models."""
    _STATE["debug"] = debug


def _trains(info: dict[str, Any]) -> str:
    """' (trains decoder: 88,209)' when model.trainable fine-tunes a subset; empty when every parameter trains."""
    which = info.get("trainable", "all")
    return "" if which == "all" else f" (trains {which}: {info['trainable_parameters']:,})"


class RichReporter:
    """Progress bars per round and per client, one summary line per round."""

    def __init__(self, progress: Progress) -> None:
        self.p = progress
        self.rounds = None
        self.clients = None
        self.pretrain = None

    def run_start(self, *, total_rounds: int, done_rounds: int, info: dict[str, Any]) -> None:
        console.print(f"[bold]privfed[/] {info['dataset']}: {info['train']} train / {info['test']} test images "
                      f"({info['image']}), {len(info['clients'])} clients, UNet {info['parameters']:,} parameters"
                      f"{_trains(info)}, device {info['device']}")
        from privfed.run_ledger import SUPPRESSION_THRESHOLD, suppress_row

        k = SUPPRESSION_THRESHOLD
        table = Table(title=f"Per-client data (counts only; cells below {k} and their complements suppressed, "
                            "as in the ledger)", show_lines=False)
        table.add_column("client", justify="right")
        table.add_column("n", justify="right")
        table.add_column("label counts")
        for row in info["clients"]:
            shown = suppress_row(row["label_counts"], k=k)
            table.add_row(str(row["client"]), str(row["n"]),
                          " ".join(f"{lab}:{'s' if v == 'suppressed' else v}" for lab, v in shown.items() if v))
        console.print(table)
        if any(v == "suppressed" for row in info["clients"] for v in suppress_row(row["label_counts"], k=k).values()):
            console.print(f"s: suppressed (a count of 1–{k - 1}, or a complementary cell suppressed with it so that "
                          "it cannot be recovered from n)")
        for line in info.get("notes", []):
            console.print(line, style="bold yellow" if line.startswith("warning:") else None, markup=False)
        self.rounds = self.p.add_task("rounds", total=total_rounds, completed=done_rounds)

    def pretrain_progress(self, done: int, total: int) -> None:
        if self.pretrain is None:
            self.pretrain = self.p.add_task("public pretraining (no site data)", total=total)
        self.p.update(self.pretrain, completed=done)

    def round_start(self, round_index: int, selected: list[int]) -> None:
        if self.clients is not None:
            self.p.remove_task(self.clients)
        self.clients = self.p.add_task(f"round {round_index} clients", total=len(selected))

    def client_done(self, round_index: int, client_id: int, update) -> None:
        self.p.advance(self.clients)

    def round_end(self, round_index: int, record: dict[str, Any]) -> None:
        parts = [f"round {round_index:>3}"]
        if record.get("eval_loss") is not None:
            parts.append(f"eval loss {record['eval_loss']:.4f}")
        if "fid" in record:
            parts.append(f"FID {record['fid']:.1f}")
        if "epsilon_max" in record:
            parts.append(f"ε≤{record['epsilon_max']:.2f}")
        if "seconds" in record:
            parts.append(f"{record['seconds']:.1f}s")
        elif "eval_seconds" in record:
            parts.append(f"eval {record['eval_seconds']:.1f}s")
        self.p.console.print("  ".join(parts))
        for line in record.get("report_lines", []):
            self.p.console.print(line)
        if round_index > 0:
            self.p.advance(self.rounds)

    def note(self, text: str) -> None:
        self.p.console.print(text)


def _overrides(**opts: Any) -> dict[str, Any]:
    """Map CLI flags onto config sections; None means 'not given'."""
    sections = {
        "fed": {"clients": opts["clients"], "rounds": opts["rounds"], "local_epochs": opts["local_epochs"],
                "fraction": opts["fraction"], "batch_size": opts["batch_size"], "lr": opts["lr"],
                "ema_decay": opts["ema_decay"], "min_timestep": opts["min_timestep"]},
        "data": {"dataset": opts["dataset"], "path": opts["data"], "partition": opts["partition"],
                 "alpha": opts["alpha"]},
        "dp": {"mode": opts["dp"], "target_epsilon": opts["target_epsilon"], "delta": opts["delta"],
               "max_grad_norm": opts["max_grad_norm"], "noise_multiplier": opts["noise_multiplier"],
               "max_epsilon": opts["max_epsilon"], "accountant": opts["accountant"],
               "grad_sample_mode": opts["grad_sample_mode"], "noise_multiplicity": opts["noise_multiplicity"],
               "allow_large_delta": opts["allow_large_delta"], "placement": opts["dp_placement"],
               "public_subspace": opts["public_subspace"], "public_subspace_shrink": opts["public_subspace_shrink"]},
        "secure_agg": {"mode": opts["secure_agg"], "dropout_rate": opts["dropout_rate"]},
    }
    out: dict[str, Any] = {k: {kk: vv for kk, vv in v.items() if vv is not None} for k, v in sections.items()}
    out = {k: v for k, v in out.items() if v}
    for top in ("seed", "device", "eval_every"):
        if opts[top] is not None:
            out[top] = opts[top]
    return out


@app.command()
def run(
    config: Optional[Path] = typer.Option(None, "--config", help="TOML file with a resolved or partial config."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue an interrupted run in RUN_DIR."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run directory (default runs/run-YYYYmmdd-HHMMSS)."),
    clients: Optional[int] = typer.Option(None, "--clients", help="Number of clients (sites)."),
    rounds: Optional[int] = typer.Option(None, "--rounds", help="Federated rounds."),
    local_epochs: Optional[int] = typer.Option(None, "--local-epochs", help="Local passes over the data per round."),
    partition: Optional[str] = typer.Option(None, "--partition", help="iid | dirichlet | quantity"),
    alpha: Optional[float] = typer.Option(None, "--alpha", help="Dirichlet concentration (> 0)."),
    fraction: Optional[float] = typer.Option(None, "--fraction", help="Fraction of clients per round, in (0, 1]."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Expected local batch size (examples)."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Client learning rate (Adam)."),
    ema_decay: Optional[float] = typer.Option(None, "--ema-decay", help="Per-round decay in [0, 1) of a moving "
                                              "average of the global model, which is what is evaluated and "
                                              "released (0: off; no ε cost)."),
    min_timestep: Optional[int] = typer.Option(None, "--min-timestep", help="Lowest diffusion timestep the sites "
                                               "train on (default: T/5 with distributed DP-SGD's public subspace, "
                                               "else 0)."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="digits | npz | folder | pneumoniamnist | ..."),
    data: Optional[str] = typer.Option(None, "--data", help="Path of a .npz file or image folder."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Experiment seed (never used for secrets)."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu | cuda"),
    eval_every: Optional[int] = typer.Option(None, "--eval-every", help="Rounds between FID evaluations."),
    dp: Optional[str] = typer.Option(None, "--dp", help="sample | client | off"),
    target_epsilon: Optional[float] = typer.Option(None, "--target-epsilon", help="ε to calibrate noise for."),
    delta: Optional[float] = typer.Option(None, "--delta", help="δ of the (ε, δ) guarantee."),
    max_grad_norm: Optional[float] = typer.Option(None, "--max-grad-norm", help="Clip norm C (L2)."),
    noise_multiplier: Optional[float] = typer.Option(None, "--noise-multiplier", help="σ/C; skips calibration."),
    max_epsilon: Optional[float] = typer.Option(None, "--max-epsilon", help="Hard per-client ε cap."),
    accountant: Optional[str] = typer.Option(None, "--accountant", help="pld | prv | rdp"),
    grad_sample_mode: Optional[str] = typer.Option(None, "--grad-sample-mode", help="hooks | ghost | functorch "
                                                   "(Opacus per-sample gradients; all verified exact on the UNet)."),
    noise_multiplicity: Optional[int] = typer.Option(None, "--noise-multiplicity", help="K draws of (noise, "
                                                     "timestep) averaged per image before clipping (hooks/functorch)."),
    allow_large_delta: Optional[bool] = typer.Option(None, "--allow-large-delta", help="Accept δ ≥ 1/n_local "
                                                     "(weak guarantee; refused by default)."),
    dp_placement: Optional[str] = typer.Option(None, "--dp-placement", help="local | distributed | server: who "
                                               "adds the noise (distributed: sites add discrete noise shares before "
                                               "masking; server: trusted server). Default: distributed for --dp "
                                               "sample where public images exist (digits) and secagg/secagg+ takes "
                                               "every site every round, else local; server for --dp client."),
    public_subspace: Optional[int] = typer.Option(None, "--public-subspace", help="Distributed DP-SGD: project the "
                                                  "noisy mean gradient onto the span of K public per-example "
                                                  "gradients (0: off; no ε cost). Default: 512 (at most the "
                                                  "public images) where public images exist (digits), else 0."),
    public_subspace_shrink: Optional[bool] = typer.Option(None, "--public-subspace-shrink/--no-public-subspace-"
                                                          "shrink", help="Weight each principal public direction "
                                                          "by its estimated signal share instead of keeping it whole "
                                                          "(no ε cost). Default: on with the default subspace, off "
                                                          "when --public-subspace is given."),
    secure_agg: Optional[str] = typer.Option(None, "--secure-agg", help="secagg | secagg+ | ckks | off"),
    dropout_rate: Optional[float] = typer.Option(None, "--dropout-rate", help="Simulated client dropout rate."),
    engine: str = typer.Option("in-process", "--engine", help="in-process (one process, the default) | flower "
                               "(SuperLink + one SuperNode and one site process per site, on loopback)."),
    stage_timeout: float = typer.Option(60.0, "--stage-timeout", help="Flower engine: seconds to wait for each "
                                        "site's reply to a protocol stage before it counts as dropped."),
) -> None:
    """Train a diffusion model across clients (embedded default: 10 clients, Dirichlet α=0.5, digits)."""
    opts = dict(locals())
    cfg = None
    if resume is not None:
        given = {k: v for k, v in _overrides(**opts).items()}
        if given or config is not None:
            raise PrivfedError("--resume takes the run's own config.toml; do not combine it with other options")
    else:
        # the whole configuration is validated before the runner (and torch) is imported or anything is written
        cfg = RunConfig.from_toml(config) if config else RunConfig()
        cfg = cfg.replace(**_overrides(**opts))
    if engine not in ("in-process", "flower"):
        raise PrivfedError(f"--engine must be in-process or flower, not {engine!r}")
    if engine == "flower" and (stage_timeout <= 0 or stage_timeout != stage_timeout):
        raise PrivfedError("--stage-timeout must be a positive number of seconds")
    if engine == "flower" and cfg is not None:
        from privfed.flower.launcher import check_supported

        check_supported(cfg)
    from privfed.federation.runner import FederatedRun

    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        TimeRemainingColumn(), console=console, transient=False)
    reporter = RichReporter(progress)
    if cfg is None:
        fr = FederatedRun.resume(resume, reporter=reporter)
    else:
        run_dir = out or Path("runs") / time.strftime("run-%Y%m%d-%H%M%S")
        fr = FederatedRun.create(cfg, run_dir, reporter=reporter)
    t0 = time.perf_counter()
    if engine == "flower":
        result = _run_flower(fr, reporter, progress, stage_timeout)
    else:
        with progress:
            result = fr.run()
    console.print(f"[bold green]done[/] {result.rounds_completed} rounds in {time.perf_counter() - t0:.0f} s → "
                  f"{result.run_dir}")
    if result.final_fid is not None:
        console.print(f"domain-FID: final {result.final_fid:.1f} (round 0, {result.initial_label}: "
                      f"{result.untrained_fid:.1f}); "
                      f"samples in {result.run_dir / 'samples'}")
    for line in getattr(result, "closing_lines", []):
        console.print(line)


def _run_flower(fr, reporter: RichReporter, progress: Progress, stage_timeout: float):
    """The run on a loopback Flower deployment; progress follows the run's metrics as rounds complete."""
    from privfed.federation.runner import RunResult
    from privfed.flower.launcher import run_loopback

    done = {m["round"] for m in fr.dir.read_metrics()} if fr.dir.metrics.exists() else set()
    with progress:
        reporter.rounds = progress.add_task("rounds (Flower engine)", total=fr.cfg.fed.rounds,
                                            completed=max(done, default=0))
        reporter.pretrain = progress.add_task("public pretraining and round 0 evaluation", total=None)

        def on_round(record: dict[str, Any]) -> None:
            if record["round"] in done:
                return
            done.add(record["round"])
            if reporter.pretrain is not None:
                progress.remove_task(reporter.pretrain)
                reporter.pretrain = None
            reporter.round_end(record["round"], record)

        status = run_loopback(fr, on_round=on_round, note=progress.console.print, stage_timeout_s=stage_timeout)
    metrics = fr.dir.read_metrics()
    fids = [m["fid"] for m in metrics if "fid" in m]
    untrained = next((m["fid"] for m in metrics if m["round"] == 0 and "fid" in m), None)
    result = RunResult(fr.dir.root, int(status["rounds_completed"]), fids[-1] if fids else None, untrained, metrics)
    result.closing_lines = list(status.get("closing_lines", []))
    result.initial_label = ("public pretraining only, before any site data" if fr.cfg.public_pretrain != "none"
                            else "untrained model")
    return result


@app.command(context_settings={"help_option_names": ["-h", "--help"]})
def audit(
    target: list[str] = typer.Argument(..., metavar="[verify] RUN_DIR",
                                       help="RUN_DIR to report on, or 'verify RUN_DIR' to only verify the ledger."),
    pin_key: Optional[str] = typer.Option(None, "--pin-key", help="Expected ledger key fingerprint "
                                          "(sha256:<hex> or <hex>, any case)."),
    head: Optional[str] = typer.Option(None, "--head",
                                       help="A ledger head hash obtained earlier (detects truncation)."),
    empirical: bool = typer.Option(False, "--empirical", help="Also run the empirical privacy audits (membership "
                                   "inference, one-run canary ε lower bounds; trains 4 helper runs, about 2.5× "
                                   "the run's time, on the sites' data unless --synthetic-only; their ε is appended "
                                   "to the signed ledger as an audit_spend record and pins.txt is rewritten)."),
    keep_audit_runs: bool = typer.Option(False, "--keep-audit-runs", help="With --empirical: keep the helper runs' "
                                         "checkpoints (trained on the sites' data, a non-private control among them) "
                                         "in report/empirical_runs/; deleted once scored by default."),
    synthetic_only: bool = typer.Option(False, "--synthetic-only", help="With --empirical: train the helper runs "
                                        "on synthetic data (typeset digits) plus the canaries, never on the sites' "
                                        "data, so the audit spends nothing (recorded in the ledger as such)."),
    pdf: bool = typer.Option(False, "--pdf",
                             help="Also write report/report.pdf (headless Chromium, or weasyprint)."),
    site: list[Path] = typer.Option([], "--site", metavar="SITE_DIR",
                                    help="A standalone site's directory whose receipt.jsonl to cross-check against "
                                         "the ledger as well (repeatable; RUN_DIR/sites/*/ are always checked)."),
) -> None:
    """Verify a run's signed ledger, recompute ε and cross-check the sites' receipts (`audit verify RUN_DIR`), or
    write its report (`audit RUN_DIR`)."""
    if len(target) == 2 and target[0] == "verify":
        from audits.verify import cli_verify
        raise typer.Exit(cli_verify(target[1], expected_key_fingerprint=pin_key, expected_head_hash=head,
                                    site_dirs=tuple(site)))
    if len(target) != 1:
        raise PrivfedError(f"privfed audit takes one RUN_DIR (or: verify RUN_DIR); got {len(target)} arguments: "
                           f"{' '.join(map(repr, target))}")
    from privfed.audit_command import run_audit
    raise typer.Exit(run_audit(Path(target[0]), empirical=empirical, pdf=pdf, pin_key=pin_key, head=head,
                               console=console, site_dirs=tuple(site), keep_audit_runs=keep_audit_runs,
                               synthetic_only=synthetic_only))


@app.command(context_settings={"help_option_names": ["-h", "--help"]})
def sweep(
    sweep_file: Path = typer.Argument(..., metavar="SWEEP.toml", help="The sweep file: [base], [grid], [[variant]] "
                                      "(examples in examples/sweeps/)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Sweep directory (default sweeps/<name> in the "
                                       "current directory); run again with the same --out to resume."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate every point and list them; run nothing."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Run points that failed before again."),
    reuse_from: Optional[list[Path]] = typer.Option(None, "--reuse-from", help="Another sweep directory (repeat "
                                                    "for more): its finished runs of a point's exact configuration "
                                                    "are copied in after they verify, instead of run again."),
    only: Optional[list[str]] = typer.Option(None, "--only", metavar="KEY=VALUE", help="Run only the points with "
                                             "this value (repeat: the same key means or, different keys and; e.g. "
                                             "--only seed=0, --only clients=30, --only variant=NAME); results and "
                                             "summary still cover every point."),
) -> None:
    """Run a grid of ordinary runs (each with its own signed ledger), skipping finished points and resuming
    interrupted ones; writes results.csv, results.json and summary.html (figures, intervals over seeds)."""
    from privfed.sweep.command import sweep_command

    raise typer.Exit(sweep_command(sweep_file, out, dry_run=dry_run, retry_failed=retry_failed, console=console,
                                   reuse_from=tuple(reuse_from or ()), only=tuple(only or ())))


@app.command()
def rescore(
    run_dirs: list[Path] = typer.Argument(..., metavar="RUN_DIR...", help="Finished or interrupted run directories "
                                          "(e.g. sweeps/NAME/runs/*)."),
    rounds: str = typer.Option("ends", "--rounds", help="ends (round 0 and the last evaluated round) | evaluated "
                               "(every evaluated round)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Also write the table as CSV here."),
) -> None:
    """Re-measure the FID of runs in the dataset's shared feature space: regenerate each checkpoint's evaluation
    samples as the run did and score them with the run's own FID feature extractor (reproduces the recorded FID)
    and with the shared one, so runs made before the extractor was shared compare. Changes nothing in the runs."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
    from rich.table import Table

    from privfed.rescore import COLUMNS, rescore_runs, write_csv

    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=console) as progress:
        task = progress.add_task("rescoring", total=None)
        rows = rescore_runs(run_dirs, rounds=rounds, on_start=lambda n: progress.update(task, total=n),
                            on_item=lambda row: progress.advance(task))
    table = Table("run", "round", "recorded", "own extractor", "shared extractor [95 %]")
    for r in rows:
        own = "–" if r["own_extractor_fid"] is None else f"{r['own_extractor_fid']:.1f} ({r['own_extractor'][:8]})"
        table.add_row(Path(r["run"]).name, str(r["round"]), f"{r['recorded_fid']:.1f}", own,
                      f"{r['shared_extractor_fid']:.1f} [{r['shared_fid_lo']:.1f}, {r['shared_fid_hi']:.1f}] "
                      f"({r['shared_extractor'][:8]})")
    console.print(table)
    if out is not None:
        write_csv(rows, out)
        console.print(f"{len(rows)} rows ({', '.join(COLUMNS)}) → {out}")


site_app = typer.Typer(no_args_is_help=True, help="A site's own setup: its long-term identity.")
app.add_typer(site_app, name="site")


@site_app.command("init")
def site_init(
    site_dir: Path = typer.Argument(..., help="The site's directory (created if missing)."),
    site_id: Optional[int] = typer.Option(None, "--site-id", help="The site's id on the roster (a non-negative "
                                          "integer); also writes a default site.toml policy."),
) -> None:
    """Create the site's long-term Ed25519 identity (private key mode 0600) and print its fingerprint.

    Refuses to overwrite an existing key (SiteKeyError): a site's identity is pinned on every roster.
    """
    from privfed.parties.identity import KEY_FILE, init_site

    identity = init_site(site_dir, site_id=site_id)
    key_path = identity.site_dir / KEY_FILE
    typer.echo(f"fingerprint: {identity.fingerprint}")
    typer.echo(f"private key: {key_path} (mode 0600)")


@site_app.command("serve")
def site_serve(
    site_dir: Path = typer.Argument(..., help="The site's directory (identity.key, site.toml, receipt.jsonl)."),
    run_dir: Path = typer.Option(..., "--run-dir", help="The run's shared files: config.toml, roster.json and "
                                 "keys/ledger.pub (the server's public key)."),
    site_id: int = typer.Option(..., "--site-id", help="This site's id on the roster."),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda"),
) -> None:
    """Run this site's long-lived process for the Flower engine: it answers the messages its SuperNode's ClientApp
    relays over SITE_DIR/site.sock (mode 0600) until stopped (SIGTERM / Ctrl-C)."""
    from privfed.flower import SOCKET_NAME
    from privfed.flower.site_daemon import build_site, serve

    site = build_site(run_dir, site_id, site_dir=site_dir, device=device)
    serve(site, site_dir, ready=lambda: typer.echo(f"site {site_id} ({site.identity.fingerprint}) ready on "
                                                   f"{Path(site_dir) / SOCKET_NAME}"))


flower_app = typer.Typer(no_args_is_help=True, help="The Flower engine across machines (README: Deploying across "
                                                    "sites).")
app.add_typer(flower_app, name="flower")


@flower_app.command("prepare")
def flower_prepare(
    out: Path = typer.Option(..., "--out", help="The new run directory (on the server's machine)."),
    config: Optional[Path] = typer.Option(None, "--config", help="TOML file with the run's config."),
    site_key: list[str] = typer.Option([], "--site-key", metavar="ID=PUBFILE",
                                       help="A site's identity.pub (from privfed site init), once per site; "
                                            "without any, all sites are enrolled locally under RUN_DIR/sites/."),
    loopback_credentials: bool = typer.Option(False, "--loopback-credentials", help="Also write a one-run CA and a "
                                              "SuperLink certificate for 127.0.0.1 (RUN_DIR/flower/tls/) and a Flower "
                                              "node key per site (RUN_DIR/flower/nodes/), for one-machine trials."),
) -> None:
    """Create a run directory for a Flower deployment: config, ledger key, roster. Prints what to send to the
    sites (config.toml, roster.json, keys/ledger.pub) and the fingerprints to compare out of band."""
    from privfed.flower.launcher import prepare_run
    from privfed.parties.identity import fingerprint

    cfg = RunConfig.from_toml(config) if config else RunConfig()
    keys = {}
    for item in site_key:
        sid, sep, path = item.partition("=")
        if not sep or not sid.strip().isdigit():
            raise PrivfedError(f"--site-key takes ID=PUBFILE, e.g. 0=site0/identity.pub; got {item!r}")
        keys[int(sid)] = Path(path)
    fr = prepare_run(cfg, out, site_keys=keys)
    from privfed.parties.identity import Roster

    roster = Roster.load(fr.dir.root / "roster.json")
    typer.echo(f"run directory: {fr.dir.root}")
    typer.echo(f"ledger (server) key: {fingerprint(fr.server_key().public_key())}")
    typer.echo(f"roster: {roster.fingerprint} ({len(roster.raw())} sites)")
    typer.echo(f"send to every site: {fr.dir.config}, {fr.dir.root / 'roster.json'}, "
               f"{fr.dir.root / 'keys' / 'ledger.pub'}")
    if loopback_credentials:
        from privfed.flower.tls import make_loopback_tls, make_node_key

        tls = make_loopback_tls(fr.dir.root / "flower" / "tls")
        typer.echo(f"loopback TLS: CA {tls.ca_cert}, SuperLink certificate {tls.cert}, key {tls.key} (0600)")
        for sid in sorted(roster.raw()):
            make_node_key(fr.dir.root / "flower" / "nodes", str(sid))
        typer.echo(f"Flower node keys: {fr.dir.root / 'flower' / 'nodes'}/<site>.key (0600) and .pub "
                   "(register each with flwr supernode register)")


@flower_app.command("app-dir")
def flower_app_dir() -> None:
    """Print the directory of privfed's Flower App (the argument of flwr run)."""
    from privfed.flower import APP_DIR

    typer.echo(str(APP_DIR))


@flower_app.command("wait")
def flower_wait(
    run_dir: Path = typer.Argument(..., help="The run directory given to flwr run as run-dir."),
    timeout: Optional[float] = typer.Option(None, "--timeout", help="Give up after this many seconds."),
) -> None:
    """Wait until the run's ServerApp has finished (exit 0) or failed (exit 2), and print its closing lines."""
    from privfed.flower.launcher import FlowerError, wait_for_run

    status = wait_for_run(run_dir, timeout_s=timeout)
    if status.get("state") != "finished":
        raise FlowerError(f"the run failed ({status.get('error')}: {status.get('reason')})")
    typer.echo(f"done: {status['rounds_completed']} rounds → {run_dir}")
    for line in status.get("closing_lines", []):
        typer.echo(line)


# The project's named errors besides privfed.errors.PrivfedError (ConfigError, DataError, RunDirError, the SiteError
# family): module -> class names. Only these become one-line messages; a plain ValueError/KeyError/... is a bug.
PROJECT_ERRORS = {
    "secure_agg.errors": ("SecAggError",),
    "audits.errors": ("AuditError",),
    "dp.budget": ("BudgetExceeded",),
    "dp.calibrate": ("CalibrationError",),
}


def project_error_types() -> tuple[type[BaseException], ...]:
    """PrivfedError plus the other packages' named errors whose modules are loaded (an error from a module that
    was never imported cannot have been raised, so nothing is imported here)."""
    types_: list[type[BaseException]] = [PrivfedError]
    for module, names in PROJECT_ERRORS.items():
        if module in sys.modules:
            types_.extend(getattr(sys.modules[module], name) for name in names)
    return tuple(types_)


def _one_line(e: BaseException) -> str:
    text = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
    return text or type(e).__name__


def main(argv: list[str] | None = None) -> int:
    """Console entry point: the project's errors become one line on stderr and exit code 2; bugs keep tracebacks."""
    _STATE["debug"] = False
    try:
        rc = app(args=argv, standalone_mode=False)
        if isinstance(rc, int):     # click returns typer.Exit codes instead of raising when not standalone
            return rc
    except KeyboardInterrupt:
        print("privfed: interrupted; resume with privfed run --resume RUN_DIR", file=sys.stderr)
        return 130
    except Exception as e:
        if isinstance(e, project_error_types()):
            if _STATE["debug"]:
                traceback.print_exc()
            print(f"privfed: error: {_one_line(e)}", file=sys.stderr)
            return 2
        # typer vendors click: recognise its usage errors and exits by shape, not by import path
        if hasattr(e, "show") and hasattr(e, "exit_code"):
            e.show()
            return int(e.exit_code)
        if type(e).__name__ == "Exit":
            return int(getattr(e, "exit_code", 0))
        if type(e).__name__ == "Abort":
            return 1
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
