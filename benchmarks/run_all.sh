#!/usr/bin/env bash
# All benchmarks, one command: python benchmarks are run one after another (never in parallel: they time CPU work).
#   bash benchmarks/run_all.sh            # quick settings (~10 min on 2 cores)
# Flower's SecAgg+ peer needs `pip install 'privfed[bench]'` (or point PRIVFED_FLWR_PATH at a pip --target dir); without it the
# Flower column reads n/a and the reason is printed.
set -euo pipefail
cd "$(dirname "$0")/.."
python benchmarks/bench_round.py --rounds 3
python benchmarks/bench_dp.py --quick
python benchmarks/bench_secure_agg.py --quick 
python benchmarks/bench_he.py --quick
