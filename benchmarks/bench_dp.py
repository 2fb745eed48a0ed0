"""DP benchmarks: DP-SGD step cost vs non-private per grad-sample mode; accountant update vs from-scratch.

    python benchmarks/bench_dp.py [--quick] [--steps N] [--out benchmarks/results/dp.json]

Model: UNet2DModel(sample_size=8, in_channels=1, block_out_channels=(32, 64), layers_per_block=1,
down (DownBlock2D, AttnDownBlock2D), up (AttnUpBlock2D, UpBlock2D), norm_num_groups=8, attention_head_dim=8),
batch 32, float32, CPU. Step time: non-private and private steps interleaved in the same process (median).
Peak memory: each configuration in a fresh child process, peak RSS growth (sampled from /proc/self/statm
every 0.5 ms) while it runs its steps, over the RSS with the model built.
Accountant: per-round time of PrivacyAccountant.add_event + epsilon() around rounds 10/100/1000, vs
dp_accounting PLDAccountant (same grid) recomputing all R rounds from scratch.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BATCH = 32
MODES = ("functorch", "ghost", "hooks")


def _unet():
    import torch
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    return UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(32, 64), layers_per_block=1,
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8, attention_head_dim=8)


def _steppers(mode):
    """(non_private_step, private_step) closures over the same data."""
    import copy

    import torch

    from dp.dpsgd import EpsilonModel, make_private

    g = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, 1, 8, 8, generator=g)
    t = torch.randint(0, 1000, (BATCH,), generator=g)
    nz = torch.randn(x.shape, generator=g)
    plain = EpsilonModel(_unet()).train()
    popt = torch.optim.Adam(plain.parameters(), 1e-4)

    def np_step():
        popt.zero_grad(set_to_none=True)
        (plain(x, t) - nz).pow(2).flatten(1).mean(1).mean().backward()
        popt.step()

    priv = copy.deepcopy(plain)
    pt = make_private(module=priv, optimizer=torch.optim.Adam(priv.parameters(), 1e-4), dataset_size=BATCH * 10,
                      batch_size=BATCH, noise_multiplier=1.0, max_grad_norm=1.0, grad_sample_mode=mode,
                      generator=g, allow_unverified_mode=True)

    def dp_step():
        pt.optimizer.zero_grad(set_to_none=True)
        pt.backward((pt.module(x, t) - nz).pow(2).flatten(1).mean(1))
        pt.step()

    return np_step, dp_step


def _child(which, mode, steps):
    np_step, dp_step = _steppers(mode)
    fn = np_step if which == "np" else dp_step
    import gc
    import threading

    page = os.sysconf("SC_PAGE_SIZE")

    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * page

    gc.collect()
    base = rss()
    peak = [base]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], rss())
            time.sleep(0.0005)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    for _ in range(steps):
        fn()
    stop.set()
    th.join()
    print(json.dumps({"peak_rss_growth_mib": (peak[0] - base) / 2**20}))


def _peak_mem(which, mode, steps):
    out = subprocess.run([sys.executable, __file__, "--child", which, mode, str(steps)], capture_output=True,
                         text=True, check=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_rss_growth_mib"]


def bench_steps(modes, steps):
    import torch

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    rows = []
    for mode in modes:
        np_step, dp_step = _steppers(mode)
        np_step()  # warm-up
        dp_step()
        tn, td = [], []
        for _ in range(steps):
            s = time.perf_counter()
            np_step()
            tn.append(time.perf_counter() - s)
            s = time.perf_counter()
            dp_step()
            td.append(time.perf_counter() - s)
        mn, md = statistics.median(tn), statistics.median(td)
        mem_np, mem_dp = _peak_mem("np", mode, 3), _peak_mem("dp", mode, 3)
        rows.append({"mode": mode, "nonprivate_step_s": mn, "dp_step_s": md, "time_ratio": md / mn,
                     "nonprivate_peak_mib": mem_np, "dp_peak_mib": mem_dp,
                     "mem_ratio": mem_dp / mem_np if mem_np > 0 else None})
        print(f"  {mode}: np {mn*1e3:.1f} ms, dp {md*1e3:.1f} ms, x{md/mn:.2f}; mem {mem_np:.0f} -> {mem_dp:.0f} MiB",
              flush=True)
    return rows


def bench_accountant(rounds_list, scratch_max):
    import dp_accounting as dpa
    from dp_accounting.pld import pld_privacy_accountant as pa

    from dp import GaussianEvent, PrivacyAccountant

    events = [GaussianEvent(noise_multiplier=1.0 if r % 2 == 0 else 1.1, sample_rate=0.01, steps=50)
              for r in range(max(rounds_list))]
    acc = PrivacyAccountant()
    per_round, eps = [], []
    for e in events:
        s = time.perf_counter()
        acc.add_event(e)
        eps.append(acc.epsilon(delta=1e-5))
        per_round.append(time.perf_counter() - s)
    rows = []
    for R in rounds_list:
        window = per_round[max(0, R - 10):R]
        row = {"rounds": R, "incremental_round_s": statistics.mean(window), "epsilon": eps[R - 1],
               "scratch_s": None, "scratch_epsilon": None, "max_round_s_so_far": max(per_round[:R])}
        if R <= scratch_max:
            s = time.perf_counter()
            ref = pa.PLDAccountant(value_discretization_interval=acc._vdi)
            ref.compose(dpa.ComposedDpEvent([e.to_dp_accounting() for e in events[:R]]))
            row["scratch_epsilon"] = ref.get_epsilon(1e-5)
            row["scratch_s"] = time.perf_counter() - s
        rows.append(row)
        print(f"  R={R}: {row}", flush=True)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer steps/rounds (CI smoke run)")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "dp.json"))
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        import warnings

        warnings.simplefilter("ignore")
        _child(a.child[0], a.child[1], int(a.child[2]))
        return
    steps = a.steps or (3 if a.quick else 10)
    print("DP-SGD step cost:", flush=True)
    step_rows = bench_steps(MODES, steps)
    print("accountant:", flush=True)
    acc_rows = bench_accountant([10, 100, 1000], scratch_max=100 if a.quick else 1000)
    res = {"quick": a.quick, "steps": steps, "batch": BATCH, "torch_threads": None, "step": step_rows,
           "accountant": acc_rows}
    import torch

    res["torch_threads"] = torch.get_num_threads()
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2))
    lines = ["| mode | non-private step (ms) | DP step (ms) | time × | non-private peak (MiB) | DP peak (MiB) "
             "| mem × |",
             "|---|---|---|---|---|---|---|"]
    for r in step_rows:
        mr = f"{r['mem_ratio']:.2f}" if r["mem_ratio"] else "n/a"
        lines.append(f"| {r['mode']} | {r['nonprivate_step_s']*1e3:.1f} | {r['dp_step_s']*1e3:.1f} | "
                     f"{r['time_ratio']:.2f} | {r['nonprivate_peak_mib']:.0f} | {r['dp_peak_mib']:.0f} | {mr} |")
    lines += ["", "| rounds | incremental s/round | from-scratch s | ε (δ=1e-5) | from-scratch ε |",
              "|---|---|---|---|---|"]
    for r in acc_rows:
        sc = f"{r['scratch_s']:.2f}" if r["scratch_s"] is not None else "skipped"
        se = f"{r['scratch_epsilon']:.4f}" if r["scratch_epsilon"] is not None else "—"
        lines.append(f"| {r['rounds']} | {r['incremental_round_s']:.4f} | {sc} | {r['epsilon']:.4f} | {se} |")
    print("\n".join(lines))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
