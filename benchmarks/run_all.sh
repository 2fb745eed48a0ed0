#!/usr/bin/env bash
# All benchmarks, one command: python benchmarks are run one after another (never in parallel: they time CPU work).
#   bash benchmarks/run_all.sh            # quick settings (~10 min on 2 cores)
# Flower (a dependency) is the SecAgg+ peer and the engine benchmarked in bench_flower.py; without it the
# Flower column reads n/a and the reason is printed.
set -euo pipefail
cd "$(dirname "$0")/.."
python benchmarks/bench_round.py --rounds 3
python benchmarks/bench_public_subspace.py
python benchmarks/bench_dp.py --quick
python benchmarks/bench_secure_agg.py --quick 
python benchmarks/bench_he.py --quick
python benchmarks/bench_flower.py --sites 3 10 --rounds 3
