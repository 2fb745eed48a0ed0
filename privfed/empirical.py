"""Empirical privacy audits of a trained run (`privfed audit --empirical`).

1. Loss-based membership inference (Carlini et al. 2022 style, without shadow models): the score of an image is
   minus its diffusion loss averaged over fixed (noise, timestep) draws; members are training images, non-members
   the held-out split. Run on the audited model and on a non-private control trained with the same configuration.
2. The one-run canary audit of Steinke, Nasr & Jagielski (NeurIPS 2023): m out-of-distribution canaries are each
   inserted with probability ½ into a random client's data, a run with the same DP configuration is trained, and
   the canaries' losses give a 95 %-confidence lower bound on ε. A lower bound above the accountant's ε is a bug:
   the command fails loudly.

Results go to RUN_DIR/report/empirical.json (not signed; the report says so) and the helper runs to
RUN_DIR/report/empirical_runs/.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import UNet2DModel

from audits.empirical import assert_consistent, best_lower_bound, canary_inclusion, membership_inference
from privfed.config import RunConfig
from privfed.data import load_dataset
from privfed.data.dataset import ImageDataset
from privfed.federation.runner import FederatedRun
from privfed.federation.seeding import derive_seed, numpy_generator, torch_generator
from privfed.models import build_scheduler
from privfed.rundir import RunDir, atomic_write_text

CONFIDENCE = 0.95
CANARIES = 256


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
    return UNet2DModel.from_pretrained(latest[1] / "unet")


def _mia(model, scheduler, members: torch.Tensor, nonmembers: torch.Tensor, *, seed: int) -> dict[str, Any]:
    m = per_example_loss(model, scheduler, members, draws=8, seed=seed)
    nm = per_example_loss(model, scheduler, nonmembers, draws=8, seed=seed)
    return membership_inference(-m, -nm, higher_is_member=True, rng=numpy_generator(seed, "mia-bootstrap"))


def make_canaries(m: int, *, channels: int, size: int, seed: int) -> torch.Tensor:
    """Out-of-distribution canaries: random ±1 pixel patterns (maximally memorable, never real data)."""
    rng = numpy_generator(seed, "canaries")
    return torch.from_numpy(rng.choice([-1.0, 1.0], size=(m, channels, size, size)).astype(np.float32))


def _with_canaries(canaries: torch.Tensor, included: np.ndarray, seed: int):
    rng = numpy_generator(seed, "canary-clients")

    def augment(client_data: list[ImageDataset]) -> list[ImageDataset]:
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


def _train(cfg: RunConfig, out: Path, console, augment, label: str) -> FederatedRun:
    if out.exists():
        shutil.rmtree(out)
    console.print(f"empirical audit: training the {label} ({cfg.fed.rounds} rounds) …")
    run = FederatedRun.create(cfg, out, augment=augment)
    run.run()
    return run


def run_empirical(run_dir: Path, *, console, canaries: int | None = None) -> dict[str, Any]:
    """Run both audits for `run_dir`, write report/empirical.json, and fail if a lower bound exceeds ε."""
    canaries = CANARIES if canaries is None else canaries
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
        "membership_inference": "loss-based (score = −mean diffusion loss over 8 fixed draws); members: random "
                                "training images, non-members: the held-out test split",
        "canary": "Steinke, Nasr & Jagielski 2023 one-run audit; random ±1 canaries, each inserted with "
                  "probability 1/2 into a random client; Bonferroni-corrected search over k",
        "confidence": CONFIDENCE, "canaries": canaries}}

    result["membership_inference"] = {"audited_model": _mia(_final_model(run_dir), scheduler, members, nonmembers,
                                                            seed=seed)}
    included = canary_inclusion(canaries, rng=numpy_generator(seed, "canary-bits"))
    canary_imgs = make_canaries(canaries, channels=splits.train.channels, size=splits.train.size, seed=seed)
    control_cfg = cfg.replace(dp={"mode": "off"}, secure_agg={"mode": "off"})
    control = _train(control_cfg, work / "control", console, _with_canaries(canary_imgs, included, seed),
                     "non-private control")
    control_model = control.model
    result["membership_inference"]["non_private_control"] = _mia(control_model, scheduler, members, nonmembers,
                                                                 seed=seed)
    k_grid = [k for k in (8, 16, 32, 64) if 2 * k <= canaries]
    canary_results = {}
    audited = {"non_private_control": (control_model, None, None)}
    if cfg.dp.mode != "off":
        dp_run = _train(cfg, work / "dp", console, _with_canaries(canary_imgs, included, seed),
                        "DP model with canaries")
        eps = dp_run.privacy.epsilons()
        audited["dp_model"] = (dp_run.model, max(eps.values()) if eps else None, dp_run.privacy.delta)
    for name, (model, claimed, delta) in audited.items():
        scores = -per_example_loss(model, scheduler, canary_imgs, draws=8, seed=seed)
        bound = best_lower_bound(scores, included, delta=delta or 1e-5, confidence=CONFIDENCE, k_grid=k_grid)
        bound["claimed_epsilon"] = claimed
        bound["unit"] = "one image (canary)"
        canary_results[name] = bound
    result["canary"] = canary_results
    out = run_dir / "report" / "empirical.json"
    atomic_write_text(out, json.dumps(result, indent=1, sort_keys=True, default=float))
    dp_bound = canary_results.get("dp_model")
    if dp_bound is not None and dp_bound["claimed_epsilon"] is not None:
        assert_consistent(dp_bound["epsilon_lower_bound"], dp_bound["claimed_epsilon"])
    _print(console, result)
    return result


def _print(console, result: dict[str, Any]) -> None:
    for name, r in result["membership_inference"].items():
        console.print(f"MIA {name}: AUC {r['auc']:.3f}, TPR@1%FPR {r['tpr_at_1pct_fpr']:.3f}")
    for name, r in result["canary"].items():
        claimed = r.get("claimed_epsilon")
        console.print(f"canary audit {name}: ε ≥ {r['epsilon_lower_bound']:.3f} at {CONFIDENCE:.0%} "
                      f"(max certifiable {r['max_certifiable_epsilon']:.2f}"
                      + (f", accountant ε {claimed:.2f})" if claimed is not None else ")"))
