"""Time one federated round (10 clients) of the embedded default: seconds per round and samples/s, and the share
of the round spent moving messages between the parties (codec, signatures, array copies: the in-process engine's
overhead over calling the sites directly).

Usage: python benchmarks/bench_round.py [--rounds 3] [--variants off/off,sample/off,sample/secagg+/local,sample/secagg+]
Each variant is dp/secure_agg[/placement[/k]]; without a placement the run's default is used (for DP-SGD with SecAgg+
on the digits: distributed DP-SGD with the public subspace, one private step per round over the union batch); k sets
the public subspace's rank (a given k is projected onto whole, as the default until 2026-12-07 did with 64).
Prints a markdown table and writes benchmarks/results/round.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from privfed.config import RunConfig
from privfed.federation.runner import FederatedRun, SilentReporter
from privfed.parties import messages


class MessagingClock:
    """Wall time spent inside the message layer (make, sign, verify, encode, decode), per round."""

    NAMES = ("make", "sign", "verify", "encode", "decode")

    def __init__(self):
        self.seconds = 0.0
        self._orig = {n: getattr(messages, n) for n in self.NAMES}

    def __enter__(self):
        for name, fn in self._orig.items():
            setattr(messages, name, self._timed(fn))
        return self

    def __exit__(self, *exc):
        for name, fn in self._orig.items():
            setattr(messages, name, fn)

    def _timed(self, fn):
        def wrapper(*a, **kw):
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                self.seconds += time.perf_counter() - t
        return wrapper


class Timer(SilentReporter):
    def __init__(self):
        self.rows = []
        self.t0 = None

        self.clock = None
        self._mark = 0.0

    def round_start(self, r, selected):
        self.t0 = time.perf_counter()

    def round_end(self, r, record):
        spent = self.clock.seconds - self._mark
        self._mark = self.clock.seconds
        if r > 0:
            self.rows.append({"round": r, "seconds": record["train_seconds"], "examples": record["examples"],
                              "messaging_seconds": spent})


def measure(variant: dict, rounds: int) -> dict:
    dp = {"mode": variant["dp"], "placement": variant.get("placement") or None}
    if variant.get("k"):
        dp["public_subspace"] = int(variant["k"])
    cfg = RunConfig().replace(fed={"rounds": rounds}, eval_every=10_000, dp=dp,
                              secure_agg={"mode": variant["secure_agg"]})
    k = cfg.dp.public_subspace
    subspace = "—" if not k else f"{k}{' shrunk' if cfg.dp.public_subspace_shrink else ''}"
    variant = {**variant, "placement": cfg.dp.effective_placement, "public_subspace": subspace}
    with tempfile.TemporaryDirectory() as d:
        t = Timer()
        with MessagingClock() as clock:
            t.clock = clock
            FederatedRun.create(cfg, Path(d) / "run", reporter=t).run()
    secs = [r["seconds"] for r in t.rows]
    best = min(secs)
    examples = t.rows[0]["examples"]
    share = max(r["messaging_seconds"] / r["seconds"] for r in t.rows)
    return {**variant, "seconds_per_round": best, "median_seconds": sorted(secs)[len(secs) // 2],
            "samples_per_second": examples / best, "examples_per_round": examples,
            "messaging_share_max": share}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--variants", default="off/off,sample/off,sample/secagg+/local,sample/secagg+,"
                                          "sample/secagg+/distributed/64",
                    help="comma-separated dp/secure_agg[/placement[/k]] variants measured side by side in this run")
    args = ap.parse_args()
    variants = [dict(zip(("dp", "secure_agg", "placement", "k"), v.split("/"))) for v in args.variants.split(",")]
    rows = [measure(v, args.rounds) for v in variants]
    base = rows[0]["seconds_per_round"]
    print(f"\nOne federated round, 10 clients, digits 8×8, {platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads (best of {args.rounds} rounds)\n")
    print("| DP | noise placement | public subspace | secure agg | s/round | samples/s | × first row "
          "| messaging share of a round (max) |")
    print("|---|---|---|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['dp']} | {r['placement']} | {r['public_subspace']} | {r['secure_agg']} | "
              f"{r['seconds_per_round']:.2f} | "
              f"{r['samples_per_second']:.0f} | "
              f"{r['seconds_per_round'] / base:.2f} | {100 * r['messaging_share_max']:.1f} % |")
    out = Path(__file__).parent / "results" / "round.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "torch": torch.__version__, "threads": torch.get_num_threads()}, indent=1))


if __name__ == "__main__":
    main()
