"""Homomorphic vs pairwise-mask aggregation, side by side in one run: privfed CKKS, NVFlare-style CKKS and privfed
pairwise masking (SecAgg+), 10 sites, d = 1e5 and 1e6.

    python benchmarks/bench_he.py --quick     # one repetition per cell (< 2 min on 2 cores)
    python benchmarks/bench_he.py             # best of 3

Rows:
  privfed CKKS   N = 8192, primes [60, 40, 60] (128-bit), scale 2^80; sites encrypt under the key holder's *public*
                 context; the server adds; the key holder decrypts, range-checks, floods (σ = 2^-30) and rounds
  NVFlare CKKS   N = 8192, primes [60, 40, 40], scale 2^40, as NVFlare's TenSEAL integration configures it: every
                 client holds the full context with the secret key (plain decrypt, no flooding)
  privfed SecAgg+ one full in-process round (secure_agg.secure_sum_in_process): 10 sites' key agreement, shares,
                 masking, the server's unmasking; params/s = 10·d / round time (everything included)
Columns: encrypt (or mask) throughput per site in parameters/s, bytes uploaded per parameter, server aggregation
time (parse + check + add 10 ciphertexts; privfed also serializes the sum for the key holder), decryption time,
max abs error of the released sum vs the float64 sum (inputs uniform in ±0.25/10 per site: weighted, clipped
updates). TenSEAL runs with one thread (n_threads=1) in every row.
Absolute times count only on a dedicated machine; compare the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import tenseal as ts  # noqa: E402

from secure_agg import SecAggParams, secure_sum_in_process  # noqa: E402
from secure_agg.he import CkksParams, PublicContext, SecretContext  # noqa: E402

SITES = 10


def _inputs(d: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.uniform(-0.25, 0.25, d) / SITES for _ in range(SITES)]


def bench_privfed_ckks(xs, reps):
    d = xs[0].size
    kh = SecretContext.create(CkksParams(), n_threads=1)
    pub = PublicContext(kh.public_bytes(), params=kh.params, n_threads=1)
    enc, cts = float("inf"), []
    for _ in range(reps):
        t0 = time.perf_counter()
        cts = [pub.encrypt(x) for x in xs]
        enc = min(enc, (time.perf_counter() - t0) / SITES)
    t0 = time.perf_counter()
    acc = pub.load(cts[0], dim=d)
    for c in cts[1:]:
        acc.add_(pub.load(c, dim=d))      # as the aggregator does: parse, check, accumulate
    summed = acc.serialize()              # what the server sends to the key holder
    add = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = kh.decrypt_flooded(summed, dim=d, bound=0.25)
    dec = time.perf_counter() - t0
    return {"row": "privfed CKKS", "params": "N=8192 [60,40,60] 2^80, 128-bit", "encrypt_params_per_s": d / enc,
            "bytes_per_param": float(np.mean([len(c) for c in cts])) / d, "server_add_s": add, "decrypt_s": dec,
            "max_abs_error": float(np.max(np.abs(out - np.sum(xs, axis=0))))}


def bench_nvflare_ckks(xs, reps):
    d = xs[0].size
    ctx = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=8192, coeff_mod_bit_sizes=[60, 40, 40], n_threads=1)
    ctx.global_scale = 2.0 ** 40
    enc, cts = float("inf"), []
    for _ in range(reps):
        t0 = time.perf_counter()
        cts = [ts.ckks_vector(ctx, x.tolist()).serialize() for x in xs]
        enc = min(enc, (time.perf_counter() - t0) / SITES)
    t0 = time.perf_counter()
    acc = ts.ckks_vector_from(ctx, cts[0])
    for c in cts[1:]:
        acc.add_(ts.ckks_vector_from(ctx, c))
    add = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = np.asarray(acc.decrypt())
    dec = time.perf_counter() - t0
    return {"row": "NVFlare-style CKKS", "params": "N=8192 [60,40,40] 2^40, secret key at every site",
            "encrypt_params_per_s": d / enc, "bytes_per_param": float(np.mean([len(c) for c in cts])) / d,
            "server_add_s": add, "decrypt_s": dec, "max_abs_error": float(np.max(np.abs(out - np.sum(xs, axis=0))))}


def bench_secagg(xs, reps):
    d = xs[0].size
    params = SecAggParams(mode="secagg+", clip_range=0.25)
    best, res = float("inf"), None
    for _ in range(reps):
        t0 = time.perf_counter()
        res = secure_sum_in_process({c: x for c, x in enumerate(xs)}, params=params, run_id="bench", round_index=1)
        best = min(best, time.perf_counter() - t0)
    return {"row": "privfed SecAgg+ (pairwise masks)", "params": f"Z_2^{params.modulus_bits or 32}, clip 0.25",
            "encrypt_params_per_s": SITES * d / best, "bytes_per_param": (params.modulus_bits or 32) / 8,
            "server_add_s": None, "decrypt_s": None, "round_s": best,
            "max_abs_error": float(np.max(np.abs(np.asarray(res.sum, dtype=np.float64) - np.sum(xs, axis=0))))}


def _fmt(v, spec):
    return "n/a" if v is None else format(v, spec)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one repetition per cell")
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bench_he.json"))
    a = ap.parse_args(argv)
    reps = 1 if a.quick else 3
    rows = []
    for d in (int(s) for s in a.sizes.split(",")):
        xs = _inputs(d)
        for fn in (bench_privfed_ckks, bench_nvflare_ckks, bench_secagg):
            r = fn(xs, reps)
            r["d"] = d
            rows.append(r)
            print(f"d={d:>8}  {r['row']:<34} {_fmt(r['encrypt_params_per_s'], '10.3g')} params/s  "
                  f"{r['bytes_per_param']:6.2f} B/param  add {_fmt(r['server_add_s'], '7.3f')} s  "
                  f"decrypt {_fmt(r['decrypt_s'], '7.3f')} s  max err {r['max_abs_error']:.2e}", flush=True)
    print("\n| d | backend | parameters | encrypt/mask params/s (per site) | bytes/param | server add (s) | "
          "decrypt (s) | max abs error |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        add = _fmt(r["server_add_s"], ".3f") if r["server_add_s"] is not None else f"round {r['round_s']:.2f} s"
        print(f"| {r['d']:.0e} | {r['row']} | {r['params']} | {r['encrypt_params_per_s']:.3g} | "
              f"{r['bytes_per_param']:.2f} | {add} | {_fmt(r['decrypt_s'], '.3f')} | {r['max_abs_error']:.2e} |")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"sites": SITES, "reps": reps, "machine": platform.platform(),
                               "cpus": os.cpu_count(), "tenseal": ts.__version__, "rows": rows}, indent=2))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
