"""The server's public-subspace projection (distributed DP-SGD's default post-processing): time and peak memory of one
shrunk projection on the default UNet, float32 gradients with float64 products in column blocks (what privfed runs)
against a float64 copy of the gradients with dense products (the layout before 2026-12-07), side by side.

    python benchmarks/bench_public_subspace.py [--ks 64 512] [--rounds 2] [--repeats 2] [--out ...]

Each (k, layout) runs in fresh child processes, the two layouts alternating `--repeats` times (one child's time
varies by ±0.5 s at k = 512 on this 2-core machine, whichever layout runs). A child builds the default RunConfig's
UNet and public images at the default data's size (digits, 8×8), then projects a Gaussian vector `--rounds` times
(one basis a round: the public per-example gradients are recomputed each time, as in a run). Time: median seconds a
projection over a layout's children. Memory: peak RSS growth (ru_maxrss) over the RSS with the model built, the
largest of a layout's children. The two layouts' outputs are compared (relative L2 difference).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LAYOUTS = ("float32, blocked float64 products", "float64 copy, dense products")


def _dense(ps_module):
    """Swap in the earlier layout: the gradients held as float64, products on the whole matrix."""
    real = ps_module.PublicSubspace.gradients
    ps_module.PublicSubspace.gradients = lambda self, r: real(self, r).double()
    ps_module.gram = lambda G: G @ G.T
    ps_module.matvec = lambda G, v: G @ v
    ps_module.rmatvec = lambda G, c: G.T @ c


def _child(k: int, layout: str, rounds: int, save: str) -> None:
    import torch

    from privfed.config import RunConfig
    from privfed.data import load_dataset
    from privfed.data.typeset import typeset_digits
    from privfed.federation import public_subspace as PS
    from privfed.models import build_scheduler, build_unet, trainable_parameters

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    if layout == LAYOUTS[1]:
        _dense(PS)
    cfg = RunConfig()
    train = load_dataset(cfg.data, seed=cfg.seed).train
    torch.manual_seed(0)
    model = build_unet(cfg.model, channels=train.channels, image_size=train.size)
    params = trainable_parameters(model, cfg.model.trainable)
    public = typeset_digits(cfg.model.pretrain_set_size, image_size=train.size, channels=train.channels, seed=1)
    ps = PS.PublicSubspace(model, build_scheduler(cfg.model), public, k=k, params=params, seed=0)
    g = torch.randn(sum(p.numel() for p in params), generator=torch.Generator().manual_seed(0))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times, out = [], None
    for r in range(rounds):
        t0 = time.perf_counter()
        out = ps.project(g, r, noise_std=0.5)
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    torch.save(out, save)
    print(json.dumps({"seconds": statistics.median(times), "peak_growth_mib": (peak - base) / 1024,
                      "dimension": g.numel()}))


def _run(k: int, layout: str, rounds: int, save: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", str(k), layout, str(rounds), save], check=True,
                         capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ks", type=int, nargs="+", default=[64, 512])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "public_subspace.json"))
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        k, layout, rounds, save = a.child
        return _child(int(k), layout, int(rounds), save)
    import tempfile

    import torch

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in a.ks:
            runs: dict[str, list[dict]] = {layout: [] for layout in LAYOUTS}
            for _ in range(a.repeats):
                for i, layout in enumerate(LAYOUTS):
                    runs[layout].append(r := _run(k, layout, a.rounds, f"{tmp}/{k}-{i}.pt"))
                    print(f"  k={k} {layout}: {r['seconds']:.2f} s, +{r['peak_growth_mib']:.0f} MiB", flush=True)
            new, old = (torch.load(f"{tmp}/{k}-{i}.pt") for i in range(2))
            now, before = ({"seconds": statistics.median(r["seconds"] for r in runs[layout]),
                            "peak_growth_mib": max(r["peak_growth_mib"] for r in runs[layout]),
                            "dimension": runs[layout][0]["dimension"]} for layout in LAYOUTS)
            rows.append({"k": k, "dimension": now["dimension"], "seconds": now["seconds"],
                         "seconds_before": before["seconds"], "peak_mib": now["peak_growth_mib"],
                         "peak_mib_before": before["peak_growth_mib"],
                         "time_ratio": now["seconds"] / before["seconds"],
                         "memory_ratio": now["peak_growth_mib"] / before["peak_growth_mib"],
                         "relative_difference": float((new - old).norm() / old.norm())})
    print(f"\nshrunk projection, default UNet (d = {rows[0]['dimension']:,}), {a.repeats} × {a.rounds} rounds a "
          "layout, alternating; this machine")
    print("| k | s a projection (float64 dense) | s (float32 blocked) | time ratio | peak MiB (float64 dense) | "
          "peak MiB (float32 blocked) | memory ratio | output rel. difference |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['k']} | {r['seconds_before']:.2f} | {r['seconds']:.2f} | {r['time_ratio']:.2f}× | "
              f"{r['peak_mib_before']:.0f} | {r['peak_mib']:.0f} | {r['memory_ratio']:.2f}× | "
              f"{r['relative_difference']:.1e} |")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
