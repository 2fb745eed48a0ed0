"""The Flower engine against the in-process engine, side by side in one run: start-up time, seconds per round and
the per-round overhead, and protocol bytes per site per round, at 3 and 10 sites on the default model
(public pretraining off, DP-SGD on, SecAgg+ on, 3 rounds, no evaluation between rounds).

Usage: python benchmarks/bench_flower.py [--sites 3 10] [--rounds 3]
Prints a markdown table and writes benchmarks/results/flower.json.

Round seconds are the server's own measure of a round (offer → training → aggregation → close), the same code in
both engines, best of the rounds (the first round also pays one-off warm-up); start-up is the wall time from the
command's start to the first round's start (Flower: SuperLink, SuperNodes and site processes started, sites
connected). Bytes: the privfed messages (signed config + arrays, as
encoded on the wire) to and from one site per round; Flower's own count of the run's network traffic is shown beside.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from privfed.config import RunConfig
from privfed.federation.runner import FederatedRun, SilentReporter
from privfed.flower import wire
from privfed.parties import messages as M


def config(sites: int, rounds: int) -> RunConfig:
    return RunConfig().replace(model={"public_pretrain": "none"}, eval_every=1000, eval_samples=16,
                               fed={"clients": sites, "rounds": rounds, "fraction": 1.0})


def message_bytes(m: M.Message) -> int:
    return len(wire.pack(*M.encode(m)))


class RoundClock(SilentReporter):
    def __init__(self):
        self.first_round_at = None

    def round_start(self, round_index, selected):
        if self.first_round_at is None:
            self.first_round_at = time.perf_counter()


def in_process(sites: int, rounds: int, root: Path) -> dict:
    t0 = time.perf_counter()
    clock = RoundClock()
    fr = FederatedRun.create(config(sites, rounds), root / f"inproc-{sites}", reporter=clock)
    sent = [0]
    fr.observer = lambda direction, m: sent.__setitem__(0, sent[0] + message_bytes(m))
    fr.run()
    rounds_s = [m["train_seconds"] for m in fr.dir.read_metrics() if m["round"] > 0]
    return {"startup_s": clock.first_round_at - t0, "round_s": min(rounds_s), "rounds_s": rounds_s,
            "bytes_per_site_round": sent[0] / sites / rounds}


def flower(sites: int, rounds: int, root: Path) -> dict:
    from privfed.flower.launcher import run_loopback

    t0 = time.perf_counter()
    fr = FederatedRun.create(config(sites, rounds), root / f"flower-{sites}")
    status = run_loopback(fr, note=lambda s: None)
    traffic = status.get("flower_traffic", {})
    metrics = fr.dir.read_metrics()
    rounds_s = [m["train_seconds"] for m in metrics if m["round"] > 0]
    # the ServerApp's clock is not ours: start-up = wall time until round 1 started, from its round-1 record
    wall = time.perf_counter() - t0
    startup = wall - sum(m.get("seconds", 0.0) for m in metrics if m["round"] > 0) - _eval_tail(metrics)
    return {"startup_s": startup, "round_s": min(rounds_s), "rounds_s": rounds_s,
            "flower_bytes_per_site_round": traffic.get("total-bytes", 0) / sites / rounds if traffic else None,
            "exchanges_per_round": len(status.get("timings", [])) / rounds}


def _eval_tail(metrics) -> float:
    return sum(m.get("eval_seconds", 0.0) for m in metrics if m["round"] == 0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sites", type=int, nargs="+", default=[3, 10])
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for n in args.sites:
            a = in_process(n, args.rounds, root)
            b = flower(n, args.rounds, root)
            rows.append({"sites": n, "in_process": a, "flower": b})
    print(f"\nFlower engine vs in-process, default model, DP-SGD + SecAgg+, {args.rounds} rounds "
          f"({platform.processor() or platform.machine()}, {os.cpu_count()} cores)\n")
    print("| sites | start-up in-process (s) | start-up Flower (s) | round in-process (s) | round Flower (s) "
          "| Flower overhead per round (s) | Flower ÷ in-process | privfed bytes / site / round "
          "| Flower-counted bytes / site / round |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        a, b = r["in_process"], r["flower"]
        fb = b["flower_bytes_per_site_round"]
        print(f"| {r['sites']} | {a['startup_s']:.1f} | {b['startup_s']:.1f} | {a['round_s']:.1f} | {b['round_s']:.1f} "
              f"| {b['round_s'] - a['round_s']:.1f} | {b['round_s'] / a['round_s']:.2f}× "
              f"| {a['bytes_per_site_round'] / 1e6:.2f} MB | {'n/a' if fb is None else f'{fb / 1e6:.2f} MB'} |")
    out = Path(__file__).parent / "results" / "flower.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
