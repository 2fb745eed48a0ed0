"""Empirical privacy audits of a trained run (`privfed audit --empirical`).

Helper runs are trained from the audited run's configuration, both with the same canaries: a non-private control
(DP and secure aggregation off) and, when the run is private, a DP run; plus, for each, the attacker's replay
without the gradient canaries (below). Each canary is inserted with probability ½ (Steinke, Nasr & Jagielski,
NeurIPS 2023), into a random client:

* image canaries: random ±1 pixel patterns added to the client's images (a black-box canary: the loss on the image
  is the score);
* gradient canaries (:mod:`privfed.federation.canaries`): examples whose clipped gradient is C on one random
  parameter coordinate — the strongest example the DP analysis allows. The attacker is the server (who sees every
  aggregate, hence the final model) knowing the published configuration and run seed: it replays the helper run
  without the gradient canaries and scores each canary by how far its coordinate moved against its sign relative
  to the replay. Without DP the replay is exact, so any inserted example shows; under DP the noise comes from the
  OS CSPRNG and cannot be replayed (with ``secure_rng = false`` it can, and the audit may then refute ε — rightly).

Reported:
1. Membership inference on the natural images (members: training images; non-members: the held-out split), with a
   difficulty-calibrated loss score (Watson et al. 2022): the loss of the run's round-0 model (public pretraining
   only, never saw site data) minus the loss of the audited model, over fixed (noise, timestep) draws. Run on the
   audited model and on the non-private control.
2. Membership inference on each canary kind (inserted vs not inserted) for the control and the DP run.
3. The one-run ε lower bound at 95 % for each canary kind. A lower bound above the accountant's ε is a bug: the
   command fails loudly (:class:`audits.empirical.EmpiricalBoundViolation`, exit 3).

Results go to RUN_DIR/report/empirical.json (not signed; the report says so) and the helper runs to
RUN_DIR/report/empirical_runs/ (deleted once scored unless ``keep_runs``).

What the audit spends goes into the audited run's signed ledger: once the helper runs are trained (before any result
is written) one ``audit_spend`` record is appended after ``run_end`` with the run's own key (RUN_DIR/keys/ledger.key;
without it the audit refuses to start), listing each helper run, its config hash, its ε per site, δ, accountant and
typed DP events as its own verified ledger recorded them (:mod:`audits.audit_spend`); RUN_DIR/pins.txt is rewritten
with the new head. With ``synthetic_only`` the helper runs train on synthetic data (typeset digits from public
fonts, :mod:`privfed.data.typeset`, at the sites' image size and counts) plus the canaries, never on the sites' data:
nothing is spent, the record says ``data: synthetic``, and the natural-image attack runs on the audited model only.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import UNet2DModel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch.nn.utils import parameters_to_vector

from audits.empirical import (EmpiricalBoundViolation, assert_consistent, best_lower_bound, canary_inclusion,
                              membership_inference)
from audits.errors import LedgerBusyError, LedgerKeyError
from audits.ledger import LedgerWriter, utc_now
from audits.verify import verify_run
from privfed.config import RunConfig
from privfed.data import load_dataset
from privfed.data.dataset import ImageDataset
from privfed.data.typeset import typeset_digits
from privfed.errors import PrivfedError
from privfed.federation.canaries import GradientCanaries
from privfed.federation.runner import FederatedRun, SilentReporter
from privfed.federation.seeding import derive_seed, numpy_generator, torch_generator
from privfed.models import build_scheduler, load_unet, trainable_parameters
from privfed.pins import PINS_FILENAME, read_pins, write_pins
from privfed.rundir import EMA_MODEL, RunDir, atomic_write_text

CONFIDENCE = 0.95
CANARIES = 256
#: gradient canaries: cheap (no forward pass), so many more; each takes one distinct parameter coordinate
GRADIENT_CANARIES = 1000
#: (noise, timestep) draws per image for the natural-data attack
MIA_DRAWS = 16


@torch.no_grad()
def per_example_loss(model: UNet2DModel, scheduler, images: torch.Tensor, *, draws: int, seed: int) -> np.ndarray:
    """Mean ε-prediction MSE of each image over `draws` (noise, timestep) pairs shared by all images."""
    model.eval()
    g = torch_generator(seed, "mia-draws")
    n = images.shape[0]
    total = torch.zeros(n, dtype=torch.float64)
    T = scheduler.config.num_train_timesteps
    for _ in range(draws):
        noise = torch.randn(images.shape[1:], generator=g).expand_as(images).contiguous()
        t = torch.randint(0, T, (1,), generator=g).expand(n).contiguous()
        for i in range(0, n, 512):
            x0, e, tt = images[i:i + 512], noise[i:i + 512], t[i:i + 512]
            pred = model(scheduler.add_noise(x0, e, tt), tt).sample
            total[i:i + 512] += (pred - e).pow(2).flatten(1).mean(1).double()
    return (total / draws).numpy()


def _final_model(run_dir: Path) -> UNet2DModel:
    latest = RunDir(run_dir).latest_checkpoint()
    if latest is None:
        raise FileNotFoundError(f"{run_dir} has no checkpoint")
    # the released model: the moving average when the run keeps one (fed.ema_decay > 0)
    ema = latest[1] / EMA_MODEL
    return load_unet(ema if ema.is_dir() else latest[1] / "unet")


def _initial_model(run_dir: Path) -> UNet2DModel:
    path = RunDir(run_dir).checkpoint_dir(0) / "unet"
    if not path.is_dir():
        raise FileNotFoundError(f"{run_dir} has no round-0 checkpoint (the initial model)")
    return load_unet(path)


def make_canaries(m: int, *, channels: int, size: int, seed: int) -> torch.Tensor:
    """Out-of-distribution canaries: random ±1 pixel patterns (maximally memorable, never real data)."""
    rng = numpy_generator(seed, "canaries")
    return torch.from_numpy(rng.choice([-1.0, 1.0], size=(m, channels, size, size)).astype(np.float32))


SYNTHETIC_SOURCE = ("typeset digits (privfed.data.typeset: glyphs of the fonts matplotlib ships, no person's data), "
                    "as many per helper site as the site has images, at the sites' image size, plus the canaries")


def _synthetic_sites(seed: int):
    """Replace each site's images by as many typeset digits (public fonts; labels -1: no class), drawn once."""
    def replace(client_data: list[ImageDataset]) -> list[ImageDataset]:
        sizes = [len(d) for d in client_data]
        ref = client_data[0]
        pool = typeset_digits(sum(sizes), image_size=ref.size, channels=ref.channels,
                              seed=derive_seed(seed, "synthetic-helper-data"))
        out, start = [], 0
        for ds, n in zip(client_data, sizes):
            out.append(ImageDataset(pool.images[start:start + n], torch.full((n,), -1, dtype=torch.int64),
                                    ds.class_names, "synthetic typeset digits"))
            start += n
        return out
    return replace


def _with_canaries(canaries: torch.Tensor, included: np.ndarray, seed: int, *, synthetic: bool = False):
    rng = numpy_generator(seed, "canary-clients")
    base = _synthetic_sites(seed) if synthetic else (lambda data: data)

    def augment(client_data: list[ImageDataset]) -> list[ImageDataset]:
        client_data = base(client_data)
        owners = rng.integers(0, len(client_data), size=len(canaries))
        out = []
        for c, ds in enumerate(client_data):
            pick = torch.as_tensor(np.flatnonzero((included > 0) & (owners == c)))
            if len(pick) == 0:
                out.append(ds)
                continue
            labels = torch.full((len(pick),), -1, dtype=torch.int64)   # canaries carry no class
            out.append(ImageDataset(torch.cat([ds.images, canaries[pick]]), torch.cat([ds.labels, labels]),
                                    ds.class_names, ds.name))
        return out
    return augment


class _RoundBar(SilentReporter):
    """One progress bar per helper run (rounds completed)."""

    def __init__(self, progress: Progress | None, label: str) -> None:
        self.progress, self.label, self.task = progress, label, None

    def run_start(self, *, total_rounds: int, done_rounds: int, info: dict[str, Any]) -> None:
        if self.progress is not None:
            self.task = self.progress.add_task(self.label, total=total_rounds, completed=done_rounds)

    def round_end(self, round_index: int, record: dict[str, Any]) -> None:
        if self.task is not None:
            self.progress.update(self.task, completed=round_index)


def _train(cfg: RunConfig, out: Path, progress: Progress | None, augment, gradient_canaries,
           label: str) -> FederatedRun:
    if out.exists():
        shutil.rmtree(out)
    run = FederatedRun.create(cfg, out, augment=augment, gradient_canaries=gradient_canaries,
                              reporter=_RoundBar(progress, f"audit: {label}"))
    run.run()
    return run


def _flat(model: torch.nn.Module, which: str) -> torch.Tensor:
    """The model's update coordinates (``model.trainable``): the gradient canaries' coordinates index into them."""
    return parameters_to_vector(trainable_parameters(model, which)).detach().cpu()


def _canary_audit(scores: np.ndarray, included: np.ndarray, *, kind: str, delta: float, claimed: float | None,
                  seed: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Membership inference (inserted vs left-out canaries) and the one-run ε lower bound for one canary kind."""
    mia = {"target": f"{kind.replace('_', ' ')}: inserted vs left out",
           **membership_inference(scores[included > 0], scores[included < 0],
                                  rng=numpy_generator(seed, "canary-mia-bootstrap", kind))}
    k_grid = [k for k in (8, 16, 32, 64, 128, 256) if 2 * k <= len(scores)]
    bound = best_lower_bound(scores, included, delta=delta, confidence=CONFIDENCE, k_grid=k_grid)
    bound.update({"claimed_epsilon": claimed, "canary_kind": kind, "unit": "one example (canary)"})
    return mia, bound


def _open_ledger(run_dir: Path) -> LedgerWriter:
    """The audited run's ledger, opened for the audit_spend record before anything is spent: it must verify, be
    finished (run_end) and its signing key must be here."""
    try:
        ledger = LedgerWriter.open(run_dir, create=False)
    except (LedgerKeyError, LedgerBusyError) as e:
        raise PrivfedError(f"privfed audit --empirical records what it spends in the run's signed ledger and needs "
                           f"the run's signing key and sole write access: {e}") from None
    if not any(r["kind"] == "run_end" for r in ledger.records):
        ledger.close()
        raise PrivfedError(f"{run_dir}: the ledger has no run_end record; the empirical audit audits a finished run")
    return ledger


def _helper_spend(label: str, role: str, run: FederatedRun, *, data: str) -> dict[str, Any]:
    """One helper run's entry of the audit_spend record, read from its own verified ledger (its ε as its accountant
    reported it, and the typed DP events a verifier recomputes it from)."""
    rep = verify_run(run.dir.root, require_complete=True)
    start = next(r["payload"] for r in rep.records if r["kind"] == "run_start")
    end = next(r["payload"] for r in rep.records if r["kind"] == "run_end")
    events: dict[str, list[dict[str, Any]]] = {}
    for r in rep.records:
        if r["kind"] == "dp_event":
            events.setdefault(r["payload"]["client"], []).append(r["payload"]["event"])
    private = bool(run.privacy.enabled)
    return {"label": label, "role": role, "dp_mode": run.cfg.dp.mode, "rounds": end["rounds_completed"],
            "sites": run.cfg.fed.clients, "config_hash": start["config_hash"], "data": data, "private": private,
            "epsilon": run.privacy.epsilons() if private else None,
            "delta": run.privacy.delta if private else None, "accountant": run.privacy.kind if private else None,
            "unit": run.privacy.unit if private else None, "dp_events": events, "ledger_head": rep.head_hash}


RELEASED = ("report/empirical.json: membership-inference AUC and TPR (with intervals and ROC curves) and one-run ε "
            "lower bounds computed from the helper runs' models, and the audited model's membership-inference "
            "scores on the sites' training images")


def _spend_statement(data: str, helpers: list[dict[str, Any]]) -> str:
    if data == "synthetic":
        return ("The helper runs trained on synthetic data only (no site's image): they spent nothing of the sites' "
                "privacy. Their ε is that of the synthetic data, shown for the audit's calibration.")
    control = [h["label"] for h in helpers if not h["private"]]
    return ("The helper runs trained on the sites' training images. The DP helper runs' ε adds to the run's. "
            + (f"{', '.join(control)} trained without differential privacy: the results published from them "
               "(membership-inference AUC/TPR, ε lower bounds in report/empirical.json) are a non-private release "
               "of aggregate statistics of the sites' data (ε = ∞)." if control else ""))


def _record_spend(ledger: LedgerWriter, run_dir: Path, payload: dict[str, Any], console) -> dict[str, Any]:
    """Append the audit_spend record, close the ledger and rewrite pins.txt with the new head (as the run does at
    run_end)."""
    try:
        rec = ledger.append("audit_spend", payload)
        head, fp = ledger.head_hash, ledger.key_fingerprint
    finally:
        ledger.close()
    old = read_pins(run_dir / PINS_FILENAME) if (run_dir / PINS_FILENAME).is_file() else {}
    run_id = old.get("run_id") or hashlib.sha256((run_dir / "config.toml").read_bytes()).hexdigest()[:32]
    write_pins(run_dir, run_id=run_id, key_fingerprint=fp, head_hash=head)
    console.print(f"audit spending recorded in the signed ledger (record {rec['seq']}, audit_spend); ledger head is "
                  f"now {head}: {PINS_FILENAME} rewritten, send the new head out of band (a head pinned before the "
                  f"audit still verifies, as a prefix that does not cover this record)")
    return rec


def run_empirical(run_dir: Path, *, console, canaries: int | None = None,
                  gradient_canaries: int | None = None, keep_runs: bool = False,
                  synthetic_only: bool = False) -> dict[str, Any]:
    """Run both audits for `run_dir`, record their spending in its signed ledger, write report/empirical.json, and
    fail if a lower bound exceeds ε.

    The helper runs retrain on the sites' data (a non-private control among them), or with `synthetic_only` on
    synthetic data only: they are deleted once scored unless `keep_runs` (their directories are then an
    unaccounted release, see audits.releases). What they spent (each one's ε, δ and DP events) is appended to the
    run's ledger as an ``audit_spend`` record after run_end (module docstring); empirical.json repeats it
    (``audit_cost``, unsigned)."""
    ledger = _open_ledger(run_dir)
    try:
        return _run_empirical(run_dir, ledger, console=console, canaries=canaries,
                              gradient_canaries=gradient_canaries, keep_runs=keep_runs, synthetic_only=synthetic_only)
    finally:
        ledger.close()


def _run_empirical(run_dir: Path, ledger: LedgerWriter, *, console, canaries: int | None,
                   gradient_canaries: int | None, keep_runs: bool, synthetic_only: bool) -> dict[str, Any]:
    started = utc_now()
    data = "synthetic" if synthetic_only else "sites"
    canaries = CANARIES if canaries is None else canaries
    n_grad = GRADIENT_CANARIES if gradient_canaries is None else gradient_canaries
    cfg = RunConfig.from_toml(run_dir / "config.toml")
    seed = derive_seed(cfg.seed, "empirical")
    splits = load_dataset(cfg.data, seed=cfg.seed)
    scheduler = build_scheduler(cfg.model)
    nonmembers = splits.test.images
    pick = numpy_generator(seed, "members").choice(len(splits.train), size=min(len(nonmembers), len(splits.train)),
                                                   replace=False)
    members = splits.train.images[torch.as_tensor(pick)]
    work = run_dir / "report" / "empirical_runs"
    result: dict[str, Any] = {"method": {
        "membership_inference": f"natural images: members are random training images, non-members the held-out "
                                f"test split; score = loss of the run's round-0 model (public pretraining only) "
                                f"minus loss of the attacked model, each the mean diffusion loss over {MIA_DRAWS} "
                                f"fixed (noise, timestep) draws (difficulty calibration, Watson et al. 2022). "
                                f"Canaries: members are the inserted canaries, non-members the ones left out; "
                                f"gradient canaries are scored by −sign × (final model − attacker's replay) at "
                                f"their coordinate, the replay being the same configuration and seed trained "
                                f"without them (exact without DP; fresh noise under DP); image canaries by the "
                                f"calibrated loss",
        "canary": f"Steinke, Nasr & Jagielski 2023 one-run audit; each canary inserted with probability 1/2 into a "
                  f"random client of a helper run trained with the audited configuration. Gradient canaries: "
                  f"{n_grad} Dirac gradients of L2 norm C (the clip norm) on distinct random parameter coordinates, "
                  f"Poisson-sampled like images and added between clipping and noise (white box: the server sees "
                  f"every aggregate). Image canaries: {canaries} random ±1 images (black box). Bonferroni-corrected "
                  f"search over k",
        "confidence": CONFIDENCE, "canaries": canaries, "gradient_canaries": n_grad}}

    reference = _initial_model(run_dir)

    def loss(model, images):
        return per_example_loss(model, scheduler, images, draws=MIA_DRAWS, seed=seed)

    ref_m, ref_nm = loss(reference, members), loss(reference, nonmembers)

    def mia(model) -> dict[str, Any]:
        r = membership_inference(ref_m - loss(model, members), ref_nm - loss(model, nonmembers),
                                 rng=numpy_generator(seed, "mia-bootstrap"))
        return {"target": "training images vs held-out images", **r}

    mias = {"audited_model": mia(_final_model(run_dir))}
    included = canary_inclusion(canaries, rng=numpy_generator(seed, "canary-bits"))
    canary_imgs = make_canaries(canaries, channels=splits.train.channels, size=splits.train.size, seed=seed)
    ref_canary = loss(reference, canary_imgs)
    n_params = int(_flat(reference, cfg.model.trainable).numel())
    grad_included = canary_inclusion(n_grad, rng=numpy_generator(seed, "gradient-canary-bits"))
    grad = GradientCanaries.draw(grad_included, n_params=n_params, n_clients=cfg.fed.clients,
                                 norm=cfg.dp.max_grad_norm, seed=seed)
    control = cfg.replace(dp={"mode": "off", "placement": None, "public_subspace": 0, "public_subspace_shrink": False},
                          secure_agg={"mode": "off"})
    helpers = [("non_private_control", control, "non-private control")]
    if cfg.dp.mode != "off":
        helpers.append(("dp_model", cfg, "DP model with canaries"))
    bounds: dict[str, Any] = {}
    violations = []
    cost: list[dict[str, Any]] = []
    spend: list[dict[str, Any]] = []
    trained_on = ("synthetic typeset digits plus canaries (no site data)" if synthetic_only else
                  "the sites' training images plus canaries")
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=False) as progress:
        for name, hcfg, label in helpers:
            run = _train(hcfg, work / name, progress,
                         _with_canaries(canary_imgs, included, seed, synthetic=synthetic_only), grad, label)
            # the attacker's reference: the published configuration and seed replayed without the gradient canaries
            # (same image canaries). Without DP the replay is exact; under DP its noise is fresh (OS CSPRNG).
            replay = _train(hcfg, work / f"{name}_replay", progress,
                            _with_canaries(canary_imgs, included, seed, synthetic=synthetic_only), None,
                            f"{label}: attacker's replay without gradient canaries")
            spend.append(_helper_spend(name, label, run, data=data))
            spend.append(_helper_spend(f"{name}_replay", f"{label}: attacker's replay without gradient canaries",
                                       replay, data=data))
            eps = run.privacy.epsilons()
            claimed = max(eps.values()) if eps else None
            delta = run.privacy.delta or 1e-5
            for h in spend[-2:]:
                cost.append({"run": h["label"], "dp_mode": h["dp_mode"], "rounds": h["rounds"], "sites": h["sites"],
                             "epsilon_max": max(h["epsilon"].values()) if h["epsilon"] else None,
                             "trained_on": trained_on})
            if name == "non_private_control" and not synthetic_only:   # a control that never saw the sites' data
                                                                        # says nothing about their membership
                mias[name] = mia(run.model)
            scores = {
                "gradient_canaries": grad.scores(_flat(replay.model, cfg.model.trainable),
                                                 _flat(run.model, cfg.model.trainable)),
                "image_canaries": ref_canary - loss(run.model, canary_imgs),
            }
            del replay
            for kind, sc in scores.items():
                inc = grad_included if kind == "gradient_canaries" else included
                key = f"{name}_{kind}"
                mias[key], bounds[key] = _canary_audit(sc, inc, kind=kind, delta=delta, claimed=claimed, seed=seed)
                bounds[key]["model"] = name
                if claimed is not None:
                    violations.append((bounds[key]["epsilon_lower_bound"], claimed))
    # natural images first, then per canary kind: control before DP model
    order = ["audited_model", "non_private_control"] + [f"{m}_{k}" for k in ("gradient_canaries", "image_canaries")
                                                         for m in ("non_private_control", "dp_model")]
    result["membership_inference"] = {k: mias[k] for k in order if k in mias}
    result["canary"] = {k: bounds[k] for k in order if k in bounds}
    payload = {"audit": "empirical", "data": data, "started_utc": started, "helper_runs": spend,
               "released": RELEASED, "statement": _spend_statement(data, spend)}
    if synthetic_only:
        payload["synthetic_source"] = SYNTHETIC_SOURCE
    rec = _record_spend(ledger, run_dir, payload, console)
    result["audit_cost"] = {
        "helper_runs": cost, "runs_kept": bool(keep_runs), "data": data, "ledger_record": rec["seq"],
        "statement": _spend_statement(data, spend) + f" Recorded, signed, in the ledger (record {rec['seq']}, "
                     "audit_spend): the report's totals are taken from there, not from this file. "
                     + ("Their checkpoints are kept in report/empirical_runs/ (an unaccounted release: delete it "
                        "before sharing the run directory)." if keep_runs else
                        "Their checkpoints were deleted once scored (privfed audit --keep-audit-runs keeps them).")}
    out = run_dir / "report" / "empirical.json"
    atomic_write_text(out, json.dumps(result, indent=1, default=float))
    if not keep_runs:
        shutil.rmtree(work, ignore_errors=True)
    _print(console, result)
    for lower, claimed in violations:
        try:
            assert_consistent(lower, claimed)
        except EmpiricalBoundViolation as e:
            if cfg.dp.mode != "off" and not cfg.dp.secure_rng:
                raise EmpiricalBoundViolation(f"{e}; note: this run has dp.secure_rng = false, so its noise is "
                                              f"reproducible from the published seed and the accountant's ε does "
                                              f"not hold against the server") from None
            raise
    return result


def _print(console, result: dict[str, Any]) -> None:
    for name, r in result["membership_inference"].items():
        console.print(f"MIA {name}: AUC {r['auc']:.3f}, TPR@1%FPR {r['tpr_at_1pct_fpr']:.3f}, "
                      f"TPR@0.1%FPR {r['tpr_at_0.1pct_fpr']:.3f}")
    for name, r in result["canary"].items():
        claimed = r.get("claimed_epsilon")
        console.print(f"canary audit {name}: ε ≥ {r['epsilon_lower_bound']:.3f} at {CONFIDENCE:.0%} "
                      f"(max certifiable {r['max_certifiable_epsilon']:.2f}"
                      + (f", accountant ε {claimed:.2f})" if claimed is not None else ")"))
