"""A synthetic, complete run directory written with audits.LedgerWriter (3 sites, 3 rounds, real σ/q/steps);
with ``sites=True`` also a roster and each site's own signed receipt (audits.ReceiptWriter, real site keys)."""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import zlib
from functools import lru_cache
from pathlib import Path

import pytest

from audits.artifact_hash import sha256_path
from audits.keys import generate_private_key, public_key_hex
from audits.ledger import LedgerWriter
from audits.receipt import ReceiptWriter
from audits.roster import roster_fingerprint

CLIENTS = {"site-a": (1.1, 0.05, 20), "site-b": (0.9, 0.04, 25), "site-c": (1.3, 0.08, 12)}  # σ, q, steps/round
ROUNDS = 3
DELTA = 1e-5
MAX_EPS = 8.0
CONFIG_TOML = b"""seed = 3
[fed]
clients = 3
rounds = 3
[dp]
mode = "sample"
max_grad_norm = 1.0
accountant = "pld"
max_epsilon = 8.0
[secure_agg]
mode = "pairwise"
threshold_fraction = 0.67
"""


@lru_cache(maxsize=None)
def _round_pld(sigma: float, q: float, steps: int):
    # The "run's" accountant: dp_accounting PLD at a finer discretisation (1e-4) than the verifier uses (1e-3).
    from dp_accounting.pld import privacy_loss_distribution as pld

    return pld.from_gaussian_mechanism(sigma, sampling_prob=q, use_connect_dots=True,
                                       value_discretization_interval=1e-4).self_compose(steps)


def run_epsilon(client: str, rounds: int) -> float:
    sigma, q, steps = CLIENTS[client]
    r = _round_pld(sigma, q, steps)
    total = r
    for _ in range(rounds - 1):
        total = total.compose(r)
    return float(total.get_epsilon_for_delta(DELTA))


def tiny_png(seed: int = 0) -> bytes:
    """An 8x8 greyscale PNG, written by hand (no imaging dependency)."""
    rows = b"".join(b"\x00" + bytes(((x * 31 + y * 17 + seed) % 256) for x in range(8)) for y in range(8))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


RUN_ID = "synthetic-run"


def gaussian(client: str) -> dict:
    sigma, q, steps = CLIENTS[client]
    return {"type": "gaussian", "noise_multiplier": sigma, "sample_rate": q, "steps": steps}


def write_run(run: Path, *, misreport: float = 1.0, sites: bool = False, start_extra: dict | None = None) -> Path:
    """Write the synthetic run. ``misreport`` scales the ε the run reports for site-b in the last round.
    ``sites``: also enrol the sites (RUN_DIR/sites/<id>/identity.{key,pub}), write the roster, and let each site
    keep its receipt (RUN_DIR/sites/<id>/receipt.jsonl) of the same DP events; site-c drops out of round 2's
    secure aggregation (a site_event). ``start_extra``: fields merged into the run_start payload."""
    run.mkdir(parents=True)
    (run / "config.toml").write_bytes(CONFIG_TOML)
    (run / "samples").mkdir()
    metrics = []
    receipts: dict[str, ReceiptWriter] = {}
    with LedgerWriter.open(run, create=True) as led:
        extra = {"run_id": RUN_ID} if sites else {}
        led.append("run_start", {**extra,
            "config_hash": hashlib.sha256(CONFIG_TOML).hexdigest(),
            "config": {"seed": 3, "fed": {"clients": 3, "rounds": ROUNDS},
                       "dp": {"mode": "sample", "max_grad_norm": 1.0, "accountant": "pld", "max_epsilon": MAX_EPS},
                       "data": {"dataset": "digits", "image_size": 8}, "secure_agg": {"mode": "pairwise"}},
            "versions": {"privfed": "0.1.0", "torch": "2.13.0+cpu", "opacus": "1.6.0"},
            "hardware": {"device": "cpu", "cpu_count": 2},
            "dp_mode": "sample", "secure_agg_mode": "pairwise",
            "intended_use": "research prototype: synthetic test run",
            "dp_noise_rng": "os-csprng (opacus secure_mode)",
            **(start_extra or {}),
        })
        if sites:
            keys = {c: generate_private_key(run / "sites" / c / "identity.key") for c in sorted(CLIENTS)}
            roster = {c: public_key_hex(k.public_key()) for c, k in keys.items()}
            fp = roster_fingerprint(roster)
            led.append("roster", {"fingerprint": fp, "sites": roster, "server_key": led.key_fingerprint})
            for c, k in keys.items():
                receipts[c] = ReceiptWriter.open(run / "sites" / c, create=True, key=k)
                receipts[c].append("receipt_start", {
                    "site": c, "run_id": RUN_ID, "roster_fingerprint": fp, "public_key": roster[c],
                    "policy": {"max_epsilon": MAX_EPS, "delta": DELTA, "min_threshold": 2,
                               "server_key": led.key_fingerprint}})
        led.append("data_summary", {"suppression_threshold": 5, "clients": {
            "site-a": {"n": 400, "label_counts": {"0": 210, "1": 190}},
            "site-b": {"n": 620, "label_counts": {"0": 616, "1": "<5"}},
            "site-c": {"n": 150, "label_counts": {"0": 75, "1": 75}},
        }})
        for rnd in range(1, ROUNDS + 1):
            ids = sorted(CLIENTS)
            led.append("round_start", {"round": rnd, "selected": ids})
            for c in ids:
                proj = run_epsilon(c, rnd)
                led.append("budget_check", {"round": rnd, "client": c, "projected_epsilon": proj,
                                            "max_epsilon": MAX_EPS, "allowed": proj <= MAX_EPS})
                eps = proj * (misreport if (c == "site-b" and rnd == ROUNDS) else 1.0)
                led.append("dp_event", {"round": rnd, "client": c, "unit": "example", "event": gaussian(c),
                                        "delta": DELTA, "max_grad_norm": 1.0, "accountant": "pld", "epsilon": eps})
                if sites:
                    receipts[c].append("dp_spend", {"round": rnd, "unit": "example", "event": gaussian(c),
                                                    "delta": DELTA, "accountant": "pld", "epsilon": proj})
            if sites and rnd == 2:
                led.append("site_event", {"round": rnd, "client": ids[2], "event": "dropped",
                                          "error": "DropoutError", "reason": "no masked input before the deadline"})
            led.append("secure_agg", {"round": rnd, "transcript": {
                "mode": "pairwise", "n": 3, "threshold": 2, "survivors": ids if rnd != 2 else ids[:2],
                "dropped": [] if rnd != 2 else ids[2:], "reconstructed": [] if rnd != 2 else ids[2:]}})
            ck = run / "checkpoints" / f"round_{rnd:04d}" / "unet"
            ck.mkdir(parents=True)
            (ck / "config.json").write_text(json.dumps({"round": rnd}))
            (ck / "model.safetensors").write_bytes(bytes([rnd]) * 64)
            m = {"round": rnd, "fid": 120.0 / rnd, "eval_loss": 0.5 / rnd}
            metrics.append(m)
            led.append("round_end", {"round": rnd, "checkpoint": {
                "path": ck.relative_to(run).as_posix(), "sha256": sha256_path(ck)}, "metrics": m})
            (run / "samples" / f"round_{rnd:04d}.png").write_bytes(tiny_png(rnd))
        led.append("run_end", {"rounds_completed": ROUNDS, "delta": DELTA,
                               "final_epsilon": {c: run_epsilon(c, ROUNDS) for c in CLIENTS}})
    for w in receipts.values():
        w.close()
    (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    return run


@pytest.fixture(scope="session")
def pristine_run(tmp_path_factory) -> Path:
    """Session-wide synthetic run: never modify it, copy it (``run_copy``)."""
    return write_run(tmp_path_factory.mktemp("pristine") / "run")


@pytest.fixture
def run_copy(pristine_run, tmp_path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(pristine_run, dst)
    return dst


@pytest.fixture(scope="session")
def pristine_site_run(tmp_path_factory) -> Path:
    """Session-wide synthetic run with a roster and per-site receipts: never modify it, copy it (``site_run``)."""
    return write_run(tmp_path_factory.mktemp("pristine_sites") / "run", sites=True)


@pytest.fixture
def site_run(pristine_site_run, tmp_path) -> Path:
    dst = tmp_path / "site_run"
    shutil.copytree(pristine_site_run, dst)
    return dst
