"""What a sweep found: one row per point read from its run directory, and per-group statistics across seeds.

Each point's figures come from its own run directory (``metrics.jsonl`` and the ledger's ``run_end``); the ledger's
signatures are not checked here (``privfed audit RUN_DIR`` does that for any point).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from audits.artifact_hash import sha256_path
from privfed.metrics.classifier import RUN_EXTRACTOR_PATH
from privfed.rundir import RunDir
from privfed.sweep.spec import Point

#: what a comparison is about: the data and its split across sites, the model and its public start; points that
#: share these compare with each other (the best of them, the non-private reference, the public-only start),
#: whatever their privacy, aggregation and training hyperparameters (rounds, batch, learning rate, local epochs)
_CONTEXT_MODEL = ("base_channels", "layers_per_block", "attention", "num_train_timesteps", "beta_schedule",
                  "public_pretrain", "pretrain_steps", "pretrain_lr", "pretrain_set_size")


def read_ledger_end(run_dir: Path) -> dict[str, Any] | None:
    """The payload of the ledger's run_end record, or None while the run has not finished."""
    path = run_dir / "ledger.jsonl"
    if not path.is_file():
        return None
    end = None
    for line in path.read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            if rec.get("kind") == "run_end":
                end = rec["payload"]
    return end


def context(point: Point) -> str:
    """The point's comparison context (see ``_CONTEXT_MODEL``): its data and split, its number of sites, its model
    and public start."""
    cfg = point.config
    d = {"data": cfg.to_dict()["data"], "clients": cfg.fed.clients,
         "model": {k: getattr(cfg.model, k) for k in _CONTEXT_MODEL}}
    return json.dumps(d, sort_keys=True)


def point_row(point: Point, run_dir: Path, *, status: str, error: str | None = None,
              reused_from: str | None = None) -> dict[str, Any]:
    """One results row (CSV-friendly scalars, plus curves kept for results.json and the plots). ``reused_from``:
    the run directory this point was copied from (its ``seconds`` were measured there)."""
    cfg = point.config
    metrics = RunDir(run_dir).read_metrics()
    end = read_ledger_end(run_dir) if status == "done" else None
    evals = [m for m in metrics if "fid" in m]
    final = evals[-1] if evals and evals[-1]["round"] > 0 else None
    r0 = next((m for m in metrics if m.get("round") == 0 and "fid" in m), None)
    eps = None
    if end is not None and end.get("final_epsilon"):
        vals = [v for v in end["final_epsilon"].values() if v is not None]
        eps = max(vals) if vals else None
    row = {
        "point": point.slug, "label": point.label, "group_label": point.group_label, "variant": point.variant,
        "status": status, "error": error,
        **{f"set:{k}": (("inf" if isinstance(v, float) and math.isinf(v) else v)) for k, v in point.settings.items()},
        "seed": cfg.seed, "dataset": cfg.data.dataset if cfg.data.dataset != "npz" else Path(cfg.data.path).stem,
        "clients": cfg.fed.clients, "alpha": cfg.data.alpha, "local_epochs": cfg.fed.local_epochs,
        "dp_mode": cfg.dp.mode, "placement": cfg.dp.effective_placement, "secure_agg": cfg.secure_agg.mode,
        "target_epsilon": cfg.dp.target_epsilon if cfg.dp.mode != "off" else math.inf,
        "rounds_planned": cfg.fed.rounds, "rounds_completed": end["rounds_completed"] if end else None,
        "epsilon": eps, "delta": end.get("delta") if end else None,
        "public_pretrain": cfg.public_pretrain,
        "fid_public_only": r0["fid"] if r0 else None,
        "fid": final["fid"] if final else None,
        "fid_lo": final.get("fid_interval", [None, None])[0] if final else None,
        "fid_hi": final.get("fid_interval", [None, None])[1] if final else None,
        "eval_loss": final.get("eval_loss") if final else None,
        "fid_val": final.get("fid_val") if final else None,
        "best_round_val": _best_round(evals, "fid_val"),
        "seconds": round(sum(_seconds(m) for m in metrics), 1), "reused_from": reused_from,
        "fid_extractor": _extractor_id(run_dir),
        "run_dir": str(run_dir), "config_hash": point.config_hash[:16], "also": "; ".join(point.also),
        "sample_grid": str(run_dir / final["sample_grid"]) if final and final.get("sample_grid") else None,
        "_curve_fid": [[m["round"], m["fid"]] for m in evals],
        "_curve_fid_val": [[m["round"], m["fid_val"]] for m in evals if m.get("fid_val") is not None],
        "_curve_epsilon": [[m["round"], m["epsilon_max"]] for m in metrics if m.get("epsilon_max") is not None],
        "_context": context(point), "_group": repr(point.group),
    }
    return row


def _best_round(evals: list[dict[str, Any]], key: str) -> int | None:
    """The evaluated round (> 0) with the lowest ``key`` (e.g. fid_val: pick a round count on validation, not
    test); None when no round after round 0 has it."""
    scored = [(m[key], m["round"]) for m in evals if m.get("round", 0) > 0 and m.get(key) is not None]
    return min(scored)[1] if scored else None


def _extractor_id(run_dir: Path) -> str | None:
    """The first 16 hex digits of the SHA-256 of the run's FID feature extractor: FIDs compare only within one."""
    path = run_dir / RUN_EXTRACTOR_PATH
    return sha256_path(path)[:16] if path.is_file() else None


def mixed_extractors(rows: list[dict[str, Any]]) -> dict[str, set[str]]:
    """Comparison contexts whose finished points measured FID with more than one feature extractor (runs from
    before the extractor was shared across seeds, or from another machine's cache): context → extractor ids."""
    seen: dict[str, set[str]] = {}
    for r in rows:
        if r["status"] == "done" and r.get("fid_extractor"):
            seen.setdefault(r["_context"], set()).add(r["fid_extractor"])
    return {c: ids for c, ids in seen.items() if len(ids) > 1}


def _seconds(record: dict[str, Any]) -> float:
    """Wall time of one metrics record: a round's `seconds` (training + evaluation); round 0 has none, only its
    pretraining and evaluation times."""
    if "seconds" in record:
        return record["seconds"]
    return record.get("pretrain_seconds", 0.0) + record.get("eval_seconds", 0.0)


def mean_interval(values: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): Student-t interval of the mean across seeds; (x, nan, nan) for a single value."""
    a = np.asarray(values, dtype=float)
    m = float(a.mean())
    if len(a) < 2:
        return m, math.nan, math.nan
    half = float(stats.t.ppf((1 + level) / 2, len(a) - 1) * a.std(ddof=1) / math.sqrt(len(a)))
    return m, m - half, m + half


def _clamp_fid(lo: float, hi: float) -> tuple[float, float]:
    """FID is never negative: a t-interval of few seeds can reach below 0; cut it there."""
    return (max(lo, 0.0) if not math.isnan(lo) else lo), hi


def group_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per group of repeats (same point apart from the seed): FID mean and interval across seeds (or the
    single run's bootstrap interval), the public-only start, ε, and — where the context has a non-private group —
    the share of the non-private gain the group recovers, (FID_public − FID) / (FID_public − FID_nonprivate), with
    its interval over seeds paired by seed; FID_public is the non-private reference's round 0 of the same seed."""
    done = [r for r in rows if r["status"] == "done" and r["fid"] is not None]
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in done:
        groups.setdefault(r["_group"], []).append(r)
    # the non-private reference of a context: its non-private group with the lowest mean FID (the gain DP could
    # at best recover there)
    nonpriv: dict[str, list[dict[str, Any]]] = {}
    for rs in groups.values():
        if rs[0]["dp_mode"] == "off":
            best = nonpriv.get(rs[0]["_context"])
            if best is None or np.mean([r["fid"] for r in rs]) < np.mean([r["fid"] for r in best]):
                nonpriv[rs[0]["_context"]] = rs
    out = []
    for key, rs in groups.items():
        first = rs[0]
        fids = [r["fid"] for r in rs]
        m, lo, hi = mean_interval(fids)
        lo, hi = _clamp_fid(lo, hi)
        how = f"t-interval over {len(rs)} seeds"
        if len(rs) == 1 and first["fid_lo"] is not None:
            lo, hi, how = first["fid_lo"], first["fid_hi"], "bootstrap over samples (1 seed)"
        pub = [r["fid_public_only"] for r in rs if r["fid_public_only"] is not None]
        pm, plo, phi = mean_interval(pub) if pub else (None, None, None)
        eps = [r["epsilon"] for r in rs if r["epsilon"] is not None]
        g = {"label": first["group_label"], "variant": first["variant"],
             "seeds": len(rs), "fid": m, "fid_lo": lo, "fid_hi": hi, "interval": how,
             "fid_public_only": pm, "fid_public_only_lo": plo, "fid_public_only_hi": phi,
             "epsilon": max(eps) if eps else None, "dp_mode": first["dp_mode"], "placement": first["placement"],
             "target_epsilon": first["target_epsilon"], "dataset": first["dataset"],
             "public_pretrain": first.get("public_pretrain"),
             "seconds": float(np.mean([r["seconds"] for r in rs])),
             "reused": sum(r.get("reused_from") is not None for r in rs), "_context": first["_context"],
             "_rows": rs, "share": None, "share_lo": None, "share_hi": None}
        ref = nonpriv.get(first["_context"])
        if ref and first["dp_mode"] != "off":
            # the gain is the reference's own, from its start to its end: a group that starts elsewhere (another
            # model width, another pretraining) is measured against the same start, not credited for a worse one
            by_seed = {r["seed"]: (r["fid_public_only"], r["fid"]) for r in ref if r["fid_public_only"] is not None}
            shares = [(by_seed[r["seed"]][0] - r["fid"]) / (by_seed[r["seed"]][0] - by_seed[r["seed"]][1])
                      for r in rs if r["seed"] in by_seed and by_seed[r["seed"]][0] != by_seed[r["seed"]][1]]
            if shares:
                g["share"], g["share_lo"], g["share_hi"] = mean_interval(shares)
        out.append(g)
    for g in out:
        peers = [h for h in out if h["_context"] == g["_context"]]
        best = min(peers, key=lambda h: h["fid"])
        g["best_in_context"] = g is best
        g["vs_best"] = None if g is best else paired_difference(g["_rows"], best["_rows"])
        if g["vs_best"] is not None:
            g["within_noise_of_best"] = g["vs_best"]["lo"] <= 0.0 <= g["vs_best"]["hi"]
        else:
            g["within_noise_of_best"] = g is not best and _overlap(g, best)
    return out


def paired_difference(rows: list[dict[str, Any]], ref_rows: list[dict[str, Any]],
                      level: float = 0.95) -> dict[str, Any] | None:
    """FID of `rows` minus FID of `ref_rows`, paired by seed (the same seed shares the data split and the public
    start, so the pairing removes their spread): {"pairs", "diff" (mean), "lo", "hi" (Student-t interval), "p"
    (two-sided paired t-test)}, or None with fewer than two seeds in common."""
    ref = {r["seed"]: r["fid"] for r in ref_rows}
    d = np.asarray([r["fid"] - ref[r["seed"]] for r in rows if r["seed"] in ref], dtype=float)
    if len(d) < 2:
        return None
    m, lo, hi = mean_interval(list(d), level)
    sd = float(d.std(ddof=1))
    if sd == 0.0:
        p = 1.0 if m == 0.0 else 0.0
    else:
        p = float(2 * stats.t.sf(abs(m) / (sd / math.sqrt(len(d))), len(d) - 1))
    return {"pairs": int(len(d)), "diff": m, "lo": lo, "hi": hi, "p": p}


def _overlap(a: dict[str, Any], b: dict[str, Any]) -> bool:
    if any(x is None or (isinstance(x, float) and math.isnan(x)) for x in (a["fid_lo"], a["fid_hi"], b["fid_lo"],
                                                                          b["fid_hi"])):
        return True            # no interval: nothing shows the difference is real
    return a["fid_lo"] <= b["fid_hi"] and b["fid_lo"] <= a["fid_hi"]


PUBLIC_COLUMNS = ("point", "variant", "status", "error", "seed", "dataset", "clients", "alpha", "local_epochs",
                  "dp_mode", "placement", "secure_agg", "target_epsilon", "rounds_planned", "rounds_completed",
                  "epsilon", "delta", "public_pretrain", "fid_public_only", "fid", "fid_lo", "fid_hi", "eval_loss",
                  "fid_val", "best_round_val", "seconds", "reused_from", "fid_extractor", "config_hash", "also",
                  "run_dir")


def csv_columns(rows: list[dict[str, Any]]) -> list[str]:
    settings = sorted({k for r in rows for k in r if k.startswith("set:")})
    return list(PUBLIC_COLUMNS[:4]) + settings + list(PUBLIC_COLUMNS[4:])


def start_label(groups: list[dict[str, Any]]) -> str:
    """What round 0 is for these groups: public pretraining, an untrained model (no public data for the dataset,
    e.g. the pneumonia subset), or a mix of both."""
    kinds = {g.get("public_pretrain") not in (None, "none") for g in groups}
    if kinds == {True}:
        return "public pretraining only"
    if kinds == {False}:
        return "untrained model"
    return "public pretraining or untrained"
