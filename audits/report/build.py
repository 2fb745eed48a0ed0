"""``build_report(run_dir) -> ReportPaths``: verify the run, then write RUN_DIR/report/report.{html,json}.

The HTML is self-contained (inline CSS, figures and sample grids embedded as base64 PNG) and print-friendly.
report.json is validated against ``audits/schemas/report-v1.schema.json`` before it is written. Anything the run did
not record is written as "not recorded".
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import platform
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import jsonschema

from audits.accounting import ABS_TOLERANCE, parse_event, replace_one_epsilon
from audits.audit_spend import INFINITE, spending
from audits.chain import verify_chain
from audits.errors import AuditError, VerificationError
from audits.keys import PUBLIC_KEY_RELPATH, load_public_key
from audits.ledger import LEDGER_FILENAME
from audits.ledger_schema import load_schema
from audits.report import figures, text
from audits.report.text import NOT_RECORDED as NR
from audits.verify import VerificationReport, pinning_verdict, verify_run

MAX_SAMPLE_IMAGES = 8
STATEMENT_MAX_LISTED_SITES = 4   # the privacy statement lists ε per site up to this many sites, else a range
REPORT_SCHEMA = "privfed.report/1"


@dataclass(frozen=True)
class ReportPaths:
    html: Path
    json: Path
    figures: tuple[Path, ...]
    pdf: Path | None = None


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _nr(v: Any) -> Any:
    return NR if v is None or v == {} or v == [] else v


def _best_effort_records(run_dir: Path, err: VerificationError) -> tuple[dict[str, Any], ...]:
    """Records that passed the integrity checks, for an explicitly unverified report."""
    data = (run_dir / LEDGER_FILENAME).read_bytes()
    pub = load_public_key(run_dir / PUBLIC_KEY_RELPATH)
    try:
        return verify_chain(data, pub).records  # the chain holds; a later (semantic) check failed
    except AuditError:
        pass
    lines = data.split(b"\n")
    n = err.record_index if err.record_index is not None else len(lines)
    for k in range(min(n, len(lines) - 1), -1, -1):
        try:
            return verify_chain(b"".join(x + b"\n" for x in lines[:k]), pub).records
        except AuditError:
            continue
    return ()


# ---------------------------------------------------------------------------------------------------- sections
def _by_kind(records, kind):
    return [(i, r["payload"]) for i, r in enumerate(records) if r["kind"] == kind]


def _integrity(rep: VerificationReport | None, err: Exception | None, records, *, key_pinned: bool,
               head_pinned: bool) -> dict[str, Any]:
    if rep is None:
        verdict = "FAILED: the ledger did not verify; nothing in this report should be relied upon."
    else:
        verdict = "PASSED. " + pinning_verdict(key_pinned=key_pinned, head_pinned=head_pinned,
                                               receipts_checked=sum(r.receipt_verified for r in rep.receipts))
    return {
        "pinned": {"key_fingerprint": key_pinned, "head_hash": head_pinned},
        "verdict": verdict,
        "verified": rep is not None,
        "error": None if err is None else f"{type(err).__name__}: {err}",
        "records": len(records),
        "head_hash": rep.head_hash if rep else NR,
        "key_fingerprint": rep.key_fingerprint if rep else NR,
        "complete": rep.complete if rep else False,
        "schema_versions": list(rep.schema_versions) if rep else [],
        "kinds": rep.kinds if rep else {},
        "artifacts": [{"record": a.record_index, "what": a.what, "path": a.path, "sha256": a.sha256,
                       "status": a.status} for a in rep.artifacts] if rep else [],
        "repairs": list(rep.repairs) if rep else [],
        "warnings": list(rep.warnings) if rep else [],
        "pinning": "Compare key_fingerprint and head_hash with values obtained from the operator out of band "
                   "(e.g. at run start and run end); a matching signature alone does not exclude a re-signed "
                   "ledger.",
    }


def _caps(records) -> dict[str, float]:
    caps: dict[str, float] = {}
    for _, p in _by_kind(records, "budget_check"):
        caps[p["client"]] = p["max_epsilon"]
    return caps


def _privacy_loss(rep, records, fig_dir: Path, figs: dict[str, bytes]) -> dict[str, Any]:
    caps = _caps(records)
    cfg_cap = None
    starts = _by_kind(records, "run_start")
    if starts:
        dpc = starts[0][1].get("config", {}).get("dp", {})
        cfg_cap = dpc.get("max_epsilon") or dpc.get("target_epsilon")
    if rep is None or not rep.epsilon_checks:
        return {"rows": [], "final": NR, "figure": NR, "caps": caps or NR, "receipts": _receipts(rep, records)}
    rows = []
    series: dict[str, list[tuple[int, float]]] = {}
    for c in rep.epsilon_checks:
        cap = c.cap if c.cap is not None else cfg_cap
        rows.append({"record": c.record_index, "round": c.round, "client": c.client, "unit": c.unit,
                     "accountant": c.accountant, "delta": c.delta, "reported_epsilon": c.reported,
                     "recomputed_epsilon": c.recomputed, "cap": cap if cap is not None else NR,
                     "within_cap": NR if cap is None else bool(c.recomputed <= cap)})
        series.setdefault(c.client, [(0, 0.0)]).append((c.round, c.recomputed))
    deltas = sorted(set(rep.final_delta.values()))
    figs["epsilon.png"] = figures.epsilon_figure(
        series, {c: caps.get(c, cfg_cap) for c in series}, "δ=" + ", ".join(f"{d:g}" for d in deltas))
    sites = sorted(series, key=_site_key)
    by_round: dict[int, dict[str, float]] = {}
    for c in rep.epsilon_checks:
        by_round.setdefault(c.round, {})[c.client] = c.recomputed
    pivot = {"sites": sites, "rows": [{"round": r, "epsilon": [by_round[r].get(c) for c in sites]}
                                      for r in sorted(by_round)]}
    diff = max(abs(c.reported - c.recomputed) for c in rep.epsilon_checks)
    final = {c: {"epsilon": rep.final_epsilon[c], "delta": rep.final_delta[c],
                 "cap": caps.get(c, cfg_cap) if caps.get(c, cfg_cap) is not None else NR}
             for c in sorted(rep.final_epsilon)}
    return {"rows": rows, "final": final, "figure": "figures/epsilon.png", "caps": caps or NR,
            "receipts": _receipts(rep, records), "by_round": pivot, "max_reported_difference": diff,
            "all_within_cap": all(r["within_cap"] is not False for r in rows)}


def _site_key(c: str):
    return (0, int(c), c) if str(c).isdigit() else (1, 0, str(c))


PLAINTEXT_LABEL = "aggregated in plaintext: the server saw every site's update"


def _receipts(rep: VerificationReport | None, records) -> dict[str, Any]:
    """Each site's receipt ε next to the ledger's ε (one row per roster site)."""
    if rep is None:
        return {"roster_fingerprint": NR, "rows": NR, "note": "the ledger did not verify; receipts were not checked"}
    if rep.roster_fingerprint is None:
        return {"roster_fingerprint": NR, "rows": NR,
                "note": "the ledger records no roster: no site receipt could be bound to it"}
    rows = [{"site": r.site, "ledger_epsilon": _nr(r.ledger_epsilon), "ledger_delta": _nr(r.ledger_delta),
             "receipt_epsilon": _nr(r.receipt_epsilon), "receipt_delta": _nr(r.receipt_delta),
             "receipt_verified": r.receipt_verified, "key_fingerprint": r.key_fingerprint, "status": r.status,
             "rounds": list(r.rounds)} for r in rep.receipts]
    return {"roster_fingerprint": rep.roster_fingerprint, "rows": rows or NR,
            "note": "Each site signs its own receipt of its DP events with its own key; the audit verified every "
                    "receipt present in sites/<id>/ under the roster's key for that site and found its events equal "
                    "to the ledger's, round by round (a mismatch fails the audit). Both ε are recomputed by this "
                    "audit from the respective events. A site without a receipt here was not cross-checked. Compare "
                    "each key fingerprint with the one the site itself holds: the roster is in the server's ledger."}


def _privacy_statement(rep, records) -> dict[str, Any]:
    starts = _by_kind(records, "run_start")
    dp_mode = starts[0][1]["dp_mode"] if starts else NR
    sa_mode = starts[0][1]["secure_agg_mode"] if starts else NR
    noise_rng = starts[0][1].get("dp_noise_rng", NR) if starts else NR
    events = [p for _, p in _by_kind(records, "dp_event")]
    if rep is None:
        txt = ("No privacy statement can be made: the ledger did not verify (section 1). Nothing in this report "
               "should be relied upon.")
        return {"text": txt, "dp_mode": dp_mode, "unit": NR, "per_site": NR, "accountant": NR}
    if dp_mode == "off" or not events:
        txt = (f"This run recorded no differential-privacy events (dp_mode: {dp_mode}), so it carries no formal "
               f"guarantee about what its checkpoints and samples reveal about the training data. Secure "
               f"aggregation mode '{sa_mode}' only keeps individual site updates from the server (section 4)."
               + _audit_spend_sentence(rep).replace(" This ε covers the run only.", ""))
        return {"text": txt, "dp_mode": dp_mode, "unit": NR, "per_site": NR, "accountant": NR}
    units = sorted({p["unit"] for p in events})
    accs = sorted({p["accountant"] for p in events})
    unit_txt = {"example": text.ADJACENCY_IMAGE, "image": text.ADJACENCY_IMAGE, "client": text.ADJACENCY_SITE}
    per_site = "; ".join(f"{c}: ε = {rep.final_epsilon[c]:.3g} at δ = {rep.final_delta[c]:g}"
                         for c in sorted(rep.final_epsilon))
    replace_one = {c: replace_one_epsilon([parse_event(p["event"]) for p in events if p["client"] == c],
                                          delta=rep.final_delta[c]) for c in sorted(rep.final_epsilon)}
    per_site_replace = "; ".join(f"{c}: ε = {e:.3g} at δ = {rep.final_delta[c]:g}" for c, e in replace_one.items())
    if len(replace_one) > STATEMENT_MAX_LISTED_SITES:  # a range; every site on page 1 and in section 5
        ds = ", ".join(f"{d:g}" for d in sorted(set(rep.final_delta.values())))
        per_site = (f"ε from {min(rep.final_epsilon.values()):.3g} to {max(rep.final_epsilon.values()):.3g} at "
                    f"δ = {ds} across the {len(replace_one)} sites (each site on page 1 and in section 5)")
        per_site_replace = (f"ε from {min(replace_one.values()):.3g} to {max(replace_one.values()):.3g} at δ = {ds} "
                            "(each site on page 1)")
    clip = sorted({p["max_grad_norm"] for p in events})
    txt = (f"The released model is (ε, δ)-differentially private with respect to "
           f"{' / '.join(unit_txt.get(u, u) for u in units)}, per site: {per_site}. These values were recomputed by "
           f"this audit from the {len(events)} DP events in "
           f"the signed ledger (composition over all rounds of each site) with the {', '.join(accs).upper()} "
           f"accountant ({rep.accountant_backend}); they agree with what the run reported to within "
           f"{rep.tolerance:.0%} + {ABS_TOLERANCE:g}. They assume Poisson sampling (each example independently in "
           f"each step's batch with the recorded rate q), L2 clipping to {', '.join(f'{c:g}' for c in clip)} and "
           f"Gaussian noise whose values nobody else saw (noise generator as recorded: {noise_rng}). "
           f"{text.epsilon_covers(units)} Replacing one unit by another (replace-one, same dataset size) is a "
           f"different neighbouring relation, not the one the run accounted; computed by this audit from the same "
           f"events with dp_accounting's PLD accountant under REPLACE_ONE it is, per site: {per_site_replace}.")
    no_amp = _without_site_sampling(events, rep) if "client" in units else {}
    if no_amp:
        txt += (" Site sampling: this ε uses amplification by sampling of sites (rate q < 1), which holds only "
                "against those who see the model alone; the participant lists in this ledger and report (section 9) "
                "cancel it for their readers, against whom ε is at most, per site (an upper bound: every recorded "
                "event at q = 1, at its accounted sensitivity; the run's own closing line counts only the rounds "
                "each site took part in): " + "; ".join(f"{c}: ε = {e:.3g}" for c, e in no_amp.items()) + ".")
    if any(u in ("example", "image") for u in units):
        txt += " " + text.UNIT_NOT_PATIENT
    txt += " " + text.EPSILON_MEANING
    placement = starts[0][1].get("noise_placement", "server") if starts else "server"
    if "client" in units and placement == "server":
        txt += (" Client-level DP noise is added by the server after aggregation, so the server sees the clean sum "
                "of the sites' updates: this guarantee holds against recipients of the model, not against the "
                "server, which is trusted here.")
    dp_cfg = ((starts[0][1].get("config") or {}).get("dp") or {}) if starts else {}
    subspace = dp_cfg.get("public_subspace") or 0
    if subspace and starts and _placement(starts[0][1])[0] == "distributed":
        shrink = (", each principal direction weighted by its estimated signal share against the noise level the "
                  "noise plan fixes" if dp_cfg.get("public_subspace_shrink") else "")
        txt += (f" Before each optimizer step the server projected the noisy mean gradient onto the span of "
                f"{subspace} public per-example gradients at the current model{shrink}: post-processing of the "
                f"noisy sum with public images, so it changes no ε.")
    plain = sorted({p["round"] for _, p in _by_kind(records, "secure_agg") if p["transcript"].get("plaintext")})
    local = ("protected from the server only by the noise each site's DP-SGD added itself" if units == ["example"]
             else "with no noise on it")
    if sa_mode == "off" or plain:
        which = "every round" if sa_mode == "off" else f"rounds {', '.join(map(str, plain))}"
        txt += (f" No input privacy against the server: {which} {PLAINTEXT_LABEL.replace(': ', ' (', 1)}), "
                f"{local}.")
    else:
        txt += f" Input privacy against the server is provided separately by secure aggregation ('{sa_mode}')."
    if rep.receipts and any(r.receipt_verified for r in rep.receipts):
        n = sum(r.receipt_verified for r in rep.receipts)
        txt += (f" {n} site(s) hold their own signed receipt of these events, which this audit cross-checked "
                "against the ledger (section 5).")
    txt += _audit_spend_sentence(rep)
    return {"text": txt, "dp_mode": dp_mode, "unit": units, "per_site": per_site, "accountant": accs,
            "adjacency": "add/remove one unit",
            "site_sizes": ("public: the unit is a whole site" if "client" in units else
                           "public (treated as known by the adjacency; n = batch/q is in every DP event)"),
            "without_site_sampling": no_amp or NR,
            "replace_one": {c: {"epsilon": e, "delta": rep.final_delta[c]} for c, e in replace_one.items()}}


def _spending(rep) -> dict[str, Any] | None:
    """The run's ε plus what its audits spent, from the verified ledger's signed audit_spend records."""
    return None if rep is None else spending(rep.records, rep.final_epsilon, rep.final_delta)


def _eps_txt(e: Any) -> str:
    return "∞" if e == INFINITE else f"{e:.3g}"


def _audit_spend_sentence(rep) -> str:
    sp = _spending(rep)
    if sp is None:
        return ""
    totals = "; ".join(f"{x['site']}: ε = {_eps_txt(x['total_epsilon'])} at δ = {x['total_delta']:g}"
                       for x in sp["per_site"])
    return (f" This ε covers the run only. An empirical privacy audit of it is recorded in the signed ledger "
            f"(audit_spend, section 11): {sp['statement']} Run and audit together, per site ({sp['composition']}): "
            f"{totals}.")


def _without_site_sampling(events, rep) -> dict[str, float]:
    """Client-level ε against a reader of the participant lists: the site-sampled Gaussian events at q = 1 (no
    amplification by site sampling), an upper bound; {} when no event was amplified."""
    from dataclasses import replace as _replace

    from audits.accounting import GaussianEvent, epsilon_for_events

    out: dict[str, float] = {}
    for c in sorted(rep.final_epsilon):
        evs = [parse_event(p["event"]) for p in events if p["client"] == c and p.get("unit") == "client"]
        if not evs or not all(isinstance(e, GaussianEvent) for e in evs) or all(e.sample_rate >= 1 for e in evs):
            continue
        out[c] = epsilon_for_events([_replace(e, sample_rate=1.0) for e in evs], delta=rep.final_delta[c])
    return out


def _system(records) -> dict[str, Any]:
    starts = _by_kind(records, "run_start")
    p = starts[0][1] if starts else {}
    cfg = p.get("config", {})
    return {
        "description": "Federated training of an image diffusion model (privfed): sites train locally, the server "
                       "aggregates updates with FedAvg; DP-SGD (Opacus) and secure aggregation optional.",
        "intended_use": p.get("intended_use", NR),
        "model": _nr(cfg.get("model")),
        "data": _nr(cfg.get("data")),
        "federation": _nr(cfg.get("fed")),
        "config_hash": p.get("config_hash", NR),
    }


def _threat_model(records) -> dict[str, Any]:
    starts = _by_kind(records, "run_start")
    return {"parties": text.PARTIES, "statements": text.THREAT_MODEL,
            "secure_agg_mode": starts[0][1]["secure_agg_mode"] if starts else NR,
            "dp_mode": starts[0][1]["dp_mode"] if starts else NR}


def _dp_impl(records) -> dict[str, Any]:
    events = _by_kind(records, "dp_event")
    starts = _by_kind(records, "run_start")
    sp = starts[0][1] if starts else {}
    per_client: dict[str, dict[str, Any]] = {}
    for _, p in events:
        d = per_client.setdefault(p["client"], {"noise_multiplier": set(), "sample_rate": set(), "steps": 0,
                                                "max_grad_norm": set(), "delta": set(), "unit": set()})
        d["noise_multiplier"].add(p["event"].get("noise_multiplier"))   # informational for some event types
        d["sample_rate"].add(p["event"].get("sample_rate"))
        d["steps"] += p["event"]["steps"]
        d["max_grad_norm"].add(p["max_grad_norm"])
        d["delta"].add(p["delta"])
        d["unit"].add(p["unit"])
    table = [{"client": c, **{k: (sorted(x for x in v if x is not None) if isinstance(v, set) else v)
                              for k, v in d.items()}}
             for c, d in sorted(per_client.items())]
    return {
        "dp_mode": sp.get("dp_mode", NR),
        "noise_rng": sp.get("dp_noise_rng", NR),
        "sampling": "Poisson (assumed by the accountant; the ledger records the rate q per event)" if events else NR,
        "per_client": table or NR,
        "hazards": [{"hazard": h, "detail": d} for h, d in text.dp_hazards(
            {p["event"].get("type") for _, p in events}, {p.get("accountant") for _, p in events})],
    }


def _ids(v: Any) -> list[str]:
    if isinstance(v, dict):
        return sorted({str(x) for lst in v.values() if isinstance(lst, list) for x in lst}, key=_site_key)
    if isinstance(v, list):
        return [str(x) for x in v]
    return []


def _secure_agg(records) -> dict[str, Any]:
    """Per round: one summary row (what a reader needs: who took part, who dropped at which stage, whose masks were
    removed by reconstruction); the protocol parameters once; every transcript field kept in report.json."""
    rows = []
    params: dict[str, Any] = {}
    varying: set[str] = set()
    for i, p in _by_kind(records, "secure_agg"):
        t = p["transcript"]
        known = ("mode", "n", "threshold", "survivors", "dropped", "reconstructed")
        plaintext = t.get("plaintext") is True
        rec = t.get("reconstructed")
        pairwise = _ids(rec.get("pairwise_reconstructed_for")) if isinstance(rec, dict) else _ids(rec)
        self_mask = _ids(rec.get("self_mask_reconstructed_for")) if isinstance(rec, dict) else []
        dropped = t.get("dropped")
        stages = ({str(k).replace("_stage", "").replace("_", " "): _ids(v) for k, v in dropped.items() if v}
                  if isinstance(dropped, dict) else {})
        excluded = t.get("excluded")
        rows.append({"record": i, "round": p["round"], **{k: t.get(k, NR) for k in known},
                     "plaintext": plaintext, "label": PLAINTEXT_LABEL if plaintext else "secure aggregation",
                     "summary": {"n": t.get("n", NR), "threshold": t.get("threshold", NR),
                                 "degree": t.get("neighbours", t.get("degree", NR)),
                                 "survivors": len(t["survivors"]) if isinstance(t.get("survivors"), list) else NR,
                                 "dropped": _ids(dropped), "dropped_at": stages,
                                 "pairwise_reconstructed_for": pairwise, "self_mask_reconstructed_for": self_mask,
                                 "excluded": _ids(excluded.get("sites")) if isinstance(excluded, dict) else []},
                     "other": {k: v for k, v in t.items() if k not in known and k != "plaintext"}})
        for k in SECAGG_PARAMETERS:
            if k in t:
                if k in params and params[k] != t[k]:
                    varying.add(k)
                params.setdefault(k, t[k])
    groups: list[dict[str, Any]] = []
    for r in rows:
        key = (json.dumps(r["summary"], sort_keys=True, default=str), r["plaintext"], str(r["mode"]))
        if groups and groups[-1]["_key"] == key and groups[-1]["last"] == r["round"] - 1:
            groups[-1]["last"] = r["round"]
        else:
            groups.append({"_key": key, "first": r["round"], "last": r["round"], "mode": r["mode"],
                           "plaintext": r["plaintext"], "label": r["label"], "summary": r["summary"]})
    for g in groups:
        g.pop("_key")
        g["rounds"] = str(g["first"]) if g["first"] == g["last"] else f"{g['first']}–{g['last']}"
    starts = _by_kind(records, "run_start")
    return {"mode": starts[0][1]["secure_agg_mode"] if starts else NR, "rounds": rows or NR,
            "round_groups": groups or NR,
            "parameters": [{"name": k, "value": params[k], "meaning": text.SECAGG_PARAMETER_MEANING.get(k, ""),
                            "varies": k in varying} for k in SECAGG_PARAMETERS if k in params] or NR,
            "columns": [{"column": c, "meaning": m} for c, m in text.SECAGG_COLUMNS],
            "he": _he_decryptions(records)}


SECAGG_PARAMETERS = ("protocol", "protocol_version", "identities", "modulus_bits", "quantization_step", "clip_range",
                     "sum_error_bound", "dimension", "degree_rule")


HE_DECRYPTION_LABEL = b"privfed-ckks-decryption/v1\n"


def _he_decryptions(records) -> dict[str, Any] | str:
    """CKKS: the HE parameters, who holds the key, and each decryption the key holder signed (signature checked
    here, independently of the code that made it: Ed25519 over the label and the statement's canonical JSON)."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    decs = _by_kind(records, "he_decryption")
    ckks = [p["transcript"] for _, p in _by_kind(records, "secure_agg") if p["transcript"].get("mode") == "ckks"]
    if not decs and not ckks:
        return NR
    rows, last_round = [], None
    for i, p in decs:
        st = p["statement"]
        try:
            Ed25519PublicKey.from_public_bytes(bytes.fromhex(p["key_holder_public_key"])).verify(
                bytes.fromhex(p["signature"]),
                HE_DECRYPTION_LABEL + json.dumps(st, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                                                 allow_nan=False).encode())
            status = "signature verifies"
        except (InvalidSignature, ValueError):
            status = "SIGNATURE DOES NOT VERIFY"
        # the key holder releases one decryption per round, rounds increasing: a second one is a protocol breach
        if last_round is not None and int(p["round"]) <= last_round:
            status += f"; SECOND RELEASE (round {p['round']} after round {last_round})"
        last_round = int(p["round"]) if last_round is None else max(last_round, int(p["round"]))
        rows.append({"record": i, "round": p["round"], "contributors": st.get("contributors", NR),
                     "min_contributors": st.get("min_contributors", NR), "flood_sigma": st.get("flood_sigma", NR),
                     "key_holder": "sha256:" + hashlib.sha256(bytes.fromhex(p["key_holder_public_key"])).hexdigest(),
                     "status": status})
    first = ckks[0] if ckks else {}
    return {"params": first.get("params", NR), "key_holder": first.get("key_holder", NR),
            "trust": first.get("trust", NR), "decryptions": rows or NR}


def _data_gov(records) -> dict[str, Any]:
    ds = _by_kind(records, "data_summary")
    if not ds:
        return {"suppression_threshold": NR, "clients": NR}
    p = ds[-1][1]
    k = p["suppression_threshold"]
    labels = sorted({lab for c in p["clients"].values() for lab in c["label_counts"]}, key=_site_key)
    undoable, exposed = [], []
    for cid, c in sorted(p["clients"].items(), key=lambda x: _site_key(x[0])):
        hidden = [lab for lab, v in c["label_counts"].items() if isinstance(v, str)]
        shown = sum(v for v in c["label_counts"].values() if isinstance(v, int))
        if len(hidden) == 1 and isinstance(c["n"], int):
            undoable.append({"client": cid, "label": hidden[0],
                             "why": f"n = {c['n']} is published exactly and the other labels add up to {shown}: "
                                    f"label {hidden[0]} = {c['n']} − {shown} = {c['n'] - shown}"})
        elif hidden and not any(isinstance(v, int) and v >= k for v in c["label_counts"].values()):
            exposed.append(cid)
    complementary = p.get("suppression") == "complementary"
    note = (f"Counts only. A count of 1–{k - 1} and, in the same row, complementary cells (the smallest counts of at "
            f"least {k}, until the hidden cells hold at least {2 * k} images) are published as 'suppressed', so that a "
            "reader who knows a site's n cannot subtract the published cells to recover a small count, nor tell "
            "which label is the rare one. n is published: the DP sample rate q = batch/n in every DP event (section "
            "6) reveals it anyway. Counts are not differentially private."
            if complementary else
            f"Counts only; counts between 1 and {k - 1} are published as '<{k}' (this ledger predates complementary "
            "suppression).")
    return {"suppression_threshold": k, "labels": labels, "suppression": p.get("suppression", "primary only"),
            "clients": [{"client": cid, "n": c["n"], "label_counts": c["label_counts"]}
                        for cid, c in sorted(p["clients"].items(), key=lambda x: _site_key(x[0]))],
            "undoable": undoable, "exposed": exposed, "note": note}


def _training(rep, records) -> dict[str, Any]:
    status = {a.record_index: a.status for a in rep.artifacts} if rep else {}
    selected = {p["round"]: p["selected"] for _, p in _by_kind(records, "round_start")}
    rows = []
    for i, p in _by_kind(records, "round_end"):
        ck = p["checkpoint"]
        m = p["metrics"] or {}
        rows.append({"record": i, "round": p["round"], "utc": records[i].get("utc", NR),
                     "selected": selected.get(p["round"], NR),
                     "checkpoint": ck["path"] if ck else NR, "sha256": ck["sha256"] if ck else NR,
                     "hash_status": status.get(i, NR) if ck else NR, "metrics": m or NR,
                     "loss": m.get("loss", NR), "eval_loss": m.get("eval_loss", NR),
                     "fid": m.get("fid", NR), "epsilon_max": m.get("epsilon_max", NR),
                     "seconds": m.get("train_seconds", NR)})
    ends = _by_kind(records, "run_end")
    starts = _by_kind(records, "run_start")
    return {
        "initial_model": starts[0][1].get("public_pretrain", NR) if starts else NR,
        "rounds": rows or NR,
        "aborts": [{"record": i, **p} for i, p in _by_kind(records, "abort")] or NR,
        "resumes": [{"record": i, **p} for i, p in _by_kind(records, "resume")] or NR,
        "site_events": [{"record": i, **p} for i, p in _by_kind(records, "site_event")] or NR,
        "rounds_completed": ends[0][1]["rounds_completed"] if ends else NR,
    }


UTILITY_METRICS = ("fid", "eval_loss", "loss")   # loss: the sites' training loss, in ledgers before issue 15


def _same(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-9 * max(abs(a), abs(b)) + 1e-9


def _utility(run_dir: Path, records, figs: dict[str, bytes]) -> dict[str, Any]:
    """FID and loss per round from the signed round_end records; metrics.jsonl (unsigned) only when the ledger
    carries none, and every disagreement between the two is listed (the signed value is the one shown)."""
    out: dict[str, Any] = {"metrics_source": "metrics.jsonl (not signed)", "fid": NR, "loss": NR,
                           "figures": [], "samples": [], "notes": [], "mismatches": []}
    signed: dict[str, dict[int, float]] = {m: {} for m in UTILITY_METRICS}
    for _, p in _by_kind(records, "round_end"):
        for m in UTILITY_METRICS:
            v = (p.get("metrics") or {}).get(m)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                signed[m][p["round"]] = float(v)
    unsigned: dict[str, dict[int, float]] = {m: {} for m in UTILITY_METRICS}
    mpath = run_dir / "metrics.jsonl"
    fid, loss, eval_loss = [], [], []
    if mpath.is_file():
        for n, line in enumerate(mpath.read_text("utf-8", errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                m = json.loads(line)
                r = m["round"]
            except (ValueError, KeyError, TypeError):
                out["notes"].append(f"metrics.jsonl line {n} is not a JSON object with a round; skipped")
                continue
            if isinstance(m.get("fid"), (int, float)):
                fid.append((r, float(m["fid"])))
            if isinstance(m.get("loss"), (int, float)):
                loss.append((r, float(m["loss"])))
            if isinstance(m.get("eval_loss"), (int, float)):
                eval_loss.append((r, float(m["eval_loss"])))
    else:
        out["notes"].append("metrics.jsonl not present")
    for m, pairs in (("fid", fid), ("loss", loss), ("eval_loss", eval_loss)):
        unsigned[m] = dict(pairs)
    if any(signed.values()):
        out["metrics_source"] = "round_end records of the signed ledger (metrics.jsonl, not signed, cross-checked)"
        for m in UTILITY_METRICS:
            for r, v in sorted(unsigned[m].items()):
                if r in signed[m] and not _same(signed[m][r], v):
                    out["mismatches"].append({"round": r, "metric": m, "signed": signed[m][r], "unsigned": v})
                elif r not in signed[m]:
                    out["notes"].append(f"metrics.jsonl has {m} for round {r}, which the signed ledger does not "
                                        "record; not shown")
        fid, loss = sorted(signed["fid"].items()), sorted(signed["loss"].items())
        eval_loss = sorted(signed["eval_loss"].items())
        for x in out["mismatches"]:
            out["notes"].append(f"MISMATCH: metrics.jsonl (not signed) says {x['metric']} = {x['unsigned']:g} for "
                                f"round {x['round']}, the signed ledger {x['signed']:g}; the signed value is shown")
    if fid:
        out["fid"] = [{"round": r, "fid": v} for r, v in fid]
        figs["fid.png"] = figures.metric_figure(fid, ylabel="FID (lower is better)", title="FID per round")
        out["figures"].append("figures/fid.png")
    out["eval_loss"] = [{"round": r, "eval_loss": v} for r, v in eval_loss] or NR
    if loss:  # a ledger written before issue 15: the sites' plain training loss, no ε covers it
        out["loss"] = [{"round": r, "loss": v} for r, v in loss]
        out["notes"].append("This ledger records the sites' training loss (a plain mean over private batches, not "
                            "covered by ε; privfed no longer releases it); it is not plotted.")
    if eval_loss:
        figs["loss.png"] = figures.metric_figure(eval_loss, ylabel="loss on the evaluation split",
                                                 title="Eval loss per round (declared split)")
        out["figures"].append("figures/loss.png")
    out["evaluation"] = _evaluation(records)
    pngs = sorted((run_dir / "samples").glob("*.png")) if (run_dir / "samples").is_dir() else []
    for p in pngs[-MAX_SAMPLE_IMAGES:]:
        data = p.read_bytes()
        if not data.startswith(b"\x89PNG\r\n\x1a\n"):
            out["notes"].append(f"samples/{p.name} is not a PNG; skipped")
            continue
        out["samples"].append({"file": f"samples/{p.name}", "sha256": hashlib.sha256(data).hexdigest(),
                               "_b64": base64.b64encode(data).decode("ascii")})
    if len(pngs) > MAX_SAMPLE_IMAGES:
        out["notes"].append(f"{len(pngs)} sample grids; the last {MAX_SAMPLE_IMAGES} are shown")
    if not pngs:
        out["samples"] = NR
    return out


def _evaluation(records) -> Any:
    """run_start.evaluation: what the FID feature extractor was trained on and which split the metrics use."""
    starts = _by_kind(records, "run_start")
    ev = starts[0][1].get("evaluation") if starts else None
    if not isinstance(ev, dict):
        return NR
    fx, sp = ev.get("feature_extractor") or {}, ev.get("evaluation_split") or {}
    return {"feature_extractor": {k: fx.get(k, NR) for k in ("class", "source", "image_count", "sha256", "key",
                                                               "weights_sha256")},
            "evaluation_split": {k: sp.get(k, NR) for k in ("class", "source", "image_count", "sha256")},
            "validation_split": ({k: vs.get(k, NR) for k in ("class", "source", "image_count", "sha256")}
                                 if isinstance(vs := ev.get("validation_split"), dict) else None),
            "released": ev.get("released", NR)}


def _releases(run_dir: Path, records) -> dict[str, Any]:
    """Section 15: every file and field this run wrote, by class (audits.releases), and what ε covers."""
    from audits import releases as R

    starts = _by_kind(records, "run_start")
    dp_mode = starts[0][1].get("dp_mode", "sample") if starts else "sample"
    rows = R.release_rows(run_dir, dp_mode=dp_mode)
    counts = {c: sum(r["items"] for r in rows if r["class"] == c) for c in R.CLASSES}
    return {"rows": rows, "counts": counts, "messages": R.message_rows(),
            "unaccounted": [r["release"] for r in rows if r["class"] == R.UNACCOUNTED],
            "classes": [{"class": c, "meaning": m} for c, m in text.RELEASE_CLASSES],
            "adjacency": text.ADJACENCY_COUNTS, "evaluation": _evaluation(records)}


def _empirical(run_dir: Path, figs: dict[str, bytes], rep) -> Any:
    """Section 11: the attack results (report/empirical.json, unsigned) and what the audit spent (the signed ledger's
    audit_spend records, never empirical.json's copy)."""
    p = run_dir / "report" / "empirical.json"
    sp = _spending(rep)
    spend = {"spending": sp} if sp is not None else {}
    if not p.is_file():
        return NR if sp is None else {"source": "signed ledger (audit_spend); report/empirical.json is missing",
                                      "results": NR, **spend}
    try:
        results = json.loads(p.read_text("utf-8"))
    except ValueError as e:
        return {"source": "report/empirical.json (not signed)", "results": NR, "error": f"unreadable: {e}", **spend}
    mia = results.get("membership_inference") if isinstance(results, dict) else None
    curves = {k.replace("_", " "): r["roc"] for k, r in (mia or {}).items()
              if isinstance(r, dict) and isinstance(r.get("roc"), dict) and r["roc"].get("fpr")}
    if curves:
        figs["mia_roc.png"] = figures.roc_figure(curves)
    return {"source": "report/empirical.json (not signed)", "results": results, **spend}


def _environment(rep, records) -> dict[str, Any]:
    import importlib.metadata as md

    starts = _by_kind(records, "run_start")
    p = starts[0][1] if starts else {}

    def v(name):
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return NR
    import audits
    return {"run_versions": _nr(p.get("versions")), "run_hardware": _nr(p.get("hardware")),
            "audit_tool": {"audits": audits.__version__, "python": platform.python_version(),
                           "platform": platform.platform(), "dp-accounting": v("dp-accounting"),
                           "cryptography": v("cryptography"), "accountant_backend":
                           rep.accountant_backend if rep else NR}}


def _limitations(rep, records) -> list[str]:
    out = list(text.STATIC_LIMITATIONS)
    if rep is None:
        out.insert(0, "The ledger did not verify: the content of this report is unverified.")
        return out
    if not rep.complete:
        out.insert(0, "The ledger has no run_end record: the run was in progress, aborted, or the ledger was "
                      "truncated.")
    if rep.repairs:
        out.insert(0, f"The ledger was repaired after torn writes at records {list(rep.repairs)}.")
    if rep.roster_fingerprint is not None:
        missing = [r.site for r in rep.receipts if not r.receipt_verified and r.rounds]
        if missing:
            out.append(f"No receipt was available for site(s) {', '.join(missing)}: their DP events rest on the "
                       "server's ledger alone (on a multi-machine run each site keeps its receipt).")
        out.append("Site receipts are verified under the keys the roster in the server's ledger names; a site (or "
                   "auditor) must compare its key fingerprint (section 5) with the one it holds, otherwise a server "
                   "that forged the roster and the receipts together would go unnoticed.")
    plain = sorted({p["round"] for _, p in _by_kind(records, "secure_agg") if p["transcript"].get("plaintext")})
    if plain:
        out.insert(0, f"Rounds {plain} were {PLAINTEXT_LABEL}.")
    if _by_kind(records, "abort"):
        out.append("The run recorded aborts (section 9); DP events recorded before an abort still count.")
    return out


def _placement(start: dict[str, Any]) -> tuple[str, str]:
    """DP noise placement as recorded in run_start's config ([dp] placement), defaulting by mode when absent."""
    dp = (start.get("config") or {}).get("dp") or {}
    mode = start.get("dp_mode", dp.get("mode"))
    if mode == "off":
        return NR, "no differential privacy: no noise anywhere"
    placement = start.get("noise_placement") or dp.get("placement")
    if placement in (None, "auto") or placement not in text.PLACEMENT_TRUST:  # auto: the mode's default
        placement = {"sample": "local", "client": "server"}.get(mode, NR)
    return placement, text.PLACEMENT_TRUST.get(placement, NR)


def _utc(records, kind: str, last: bool = False) -> str:
    found = [r.get("utc") for r in records if r["kind"] == kind and r.get("utc")]
    return (found[-1] if last else found[0]) if found else NR


def _verdict(rep, err, records, sec: dict[str, Any], *, key_pinned: bool, head_pinned: bool) -> dict[str, Any]:
    """Page 1: what a compliance officer signs. Everything here is read from the verified ledger (or says so)."""
    starts = _by_kind(records, "run_start")
    st = starts[0][1] if starts else {}
    cfg = st.get("config") or {}
    op = st.get("operator") or cfg.get("operator") or {}
    src = st.get("source") or {}
    versions = st.get("versions") or {}
    run_id = st.get("run_id") or next((p["transcript"].get("run_id") for _, p in _by_kind(records, "secure_agg")
                                       if p["transcript"].get("run_id")), None)
    placement, trust = _placement(st)
    pl, ps, sa, ut, dg = (sec["privacy_loss"], sec["privacy_statement"], sec["secure_aggregation"], sec["utility"],
                          sec["data_governance"])
    events = _by_kind(records, "dp_event")
    units = sorted({p["unit"] for _, p in events})
    final = pl["final"] if isinstance(pl["final"], dict) else {}
    replace_one = ps.get("replace_one") or {}
    sites = [{"site": c, "epsilon": f["epsilon"], "delta": f["delta"], "cap": f["cap"],
              "replace_one_epsilon": replace_one.get(c, {}).get("epsilon", NR),
              "within_cap": NR if f["cap"] == NR else bool(f["epsilon"] <= f["cap"])}
             for c, f in sorted(final.items(), key=lambda x: _site_key(x[0]))]
    plain = [r["round"] for r in (sa["rounds"] if isinstance(sa["rounds"], list) else []) if r["plaintext"]]
    sa_mode = st.get("secure_agg_mode", NR)
    sa_on = sa_mode not in ("off", NR) and not plain
    issues: list[str] = []
    if rep is None:
        issues.append(f"The ledger did not verify ({sec['integrity']['error']}): nothing in this report can be "
                      "relied upon.")
    elif not key_pinned and not head_pinned:
        issues.append("Nothing was pinned: integrity is only relative to the operator's own key. Re-run the audit "
                      "with the key fingerprint and head hash the operator sent out of band (pins.txt).")
    elif not head_pinned:
        issues.append("The head hash was not pinned: a re-signed ledger would still pass.")
    if rep is not None and not rep.complete:
        issues.append("The run has no run_end record: it is unfinished, aborted or truncated.")
    if st.get("dp_mode") == "off" or (rep is not None and not events):
        issues.append("No differential privacy: the released model carries no formal guarantee about its "
                      "training data.")
    if not pl.get("all_within_cap", True):
        issues.append("At least one site's ε exceeds its cap (section 5).")
    if sa_mode == "off":
        issues.append("Secure aggregation was off: the server saw every site's update.")
    elif plain:
        issues.append(f"Rounds {plain} were {PLAINTEXT_LABEL}.")
    if placement == "server":
        issues.append("DP noise is added by the server: the server sees the clean sum and must be trusted.")
    he = sa.get("he")
    if isinstance(he, dict) and isinstance(he.get("decryptions"), list):
        bad = [d["round"] for d in he["decryptions"] if d["status"] != "signature verifies"]
        if bad:
            issues.append(f"CKKS decryption record(s) of round(s) {bad} fail the check: a key-holder signature does "
                          "not verify or a round's sum was released twice (section 4).")
    rng = str(st.get("dp_noise_rng", ""))
    if "not a CSPRNG" in rng or "seeded from the experiment" in rng or "default generator" in rng:
        issues.append(f"Noise generator: {rng}.")
    if ut["mismatches"]:
        issues.append(f"metrics.jsonl (not signed) disagrees with the signed ledger in {len(ut['mismatches'])} "
                      "value(s) (section 10).")
    if isinstance(dg.get("undoable"), list) and dg["undoable"]:
        issues.append(f"The data summary's small-cell suppression can be undone by subtraction for "
                      f"{len(dg['undoable'])} site(s) (section 8).")
    if dg.get("exposed"):
        issues.append(f"Site(s) {', '.join(dg['exposed'])} have no count of at least k: which labels are rare there "
                      "is apparent (section 8).")
    if rep is not None:
        issues.extend(rep.warnings)
        if rep.roster_fingerprint is not None:
            missing = [r.site for r in rep.receipts if not r.receipt_verified and r.rounds]
            if missing:
                issues.append(f"No site receipt cross-checked for site(s) {', '.join(missing)}.")
        elif events:
            issues.append("No roster and no site receipts: the DP events rest on the server's ledger alone.")
    if not op:
        issues.append("The operator (name, organisation) was not recorded ([operator] in the run's config).")
    if src.get("modified"):
        issues.append("The code ran from a source tree with uncommitted changes to tracked files.")
    if "commit" not in src:
        issues.append("The source commit was not recorded.")
    if _by_kind(records, "abort"):
        issues.append("The run recorded aborts (section 9).")
    rel = sec.get("releases") or {}
    if rel.get("unaccounted"):
        issues.append(f"Releases outside ε without a documented choice (unaccounted): "
                      f"{', '.join(rel['unaccounted'])} (section 15).")
    if sec["empirical_audit"] == NR:
        issues.append("No empirical privacy audit was run (section 11; privfed audit --empirical).")
    sp = _spending(rep)
    if sp is not None and sp["infinite"]:
        issues.append(f"The empirical audit trained {', '.join(sorted(set(sp['non_private_release'])))} on the "
                      "sites' data without DP: its published results are an unaccounted (ε = ∞) release of aggregate "
                      "statistics of the sites' data (section 11; privfed audit --empirical --synthetic-only spends "
                      "nothing).")
    verified = rep is not None
    return {
        "verdict": sec["integrity"]["verdict"],
        "verified": verified,
        "run_id": run_id or NR,
        "config_hash": st.get("config_hash", NR),
        "operator": {k: op.get(k, NR) for k in ("name", "organisation", "contact")},
        "started_utc": _utc(records, "run_start"),
        "ended_utc": _utc(records, "run_end", last=True),
        "rounds_completed": sec["training"]["rounds_completed"],
        "code": {"package": src.get("package", "privfed"),
                 "version": src.get("version", versions.get("privfed", NR)),
                 "commit": src.get("commit", NR), "modified": src.get("modified", NR)},
        "dataset": {"name": (cfg.get("data") or {}).get("dataset", NR),
                    "source": (st.get("dataset_fingerprint") or {}).get("source", NR),
                    "sha256": (st.get("dataset_fingerprint") or {}).get("sha256", NR),
                    "sites": len(dg["clients"]) if isinstance(dg.get("clients"), list) else NR,
                    "images": (sum(c["n"] for c in dg["clients"] if isinstance(c["n"], int))
                               if isinstance(dg.get("clients"), list) else NR)},
        "pinned": {"key_fingerprint": key_pinned, "head_hash": head_pinned},
        "key_fingerprint": sec["integrity"]["key_fingerprint"],
        "head_hash": sec["integrity"]["head_hash"],
        "dp_mode": st.get("dp_mode", NR),
        "unit": ("one image (not one patient)" if set(units) <= {"example", "image"} and units else
                 "one site (its whole dataset)" if units == ["client"] else NR),
        "adjacency": "add/remove one unit" if units else NR,
        "placement": placement, "trust": trust,
        "epsilon": sites or NR,
        "epsilon_range": ([min(x["epsilon"] for x in sites), max(x["epsilon"] for x in sites)] if sites else NR),
        "caps_met": NR if not sites else all(x["within_cap"] is not False for x in sites),
        "epsilon_meaning": text.EPSILON_MEANING_SHORT if sites else text.NO_DP_MEANING,
        "secure_aggregation": {"mode": sa_mode, "on": sa_on, "plaintext_rounds": plain},
        "receipts_cross_checked": sum(r.receipt_verified for r in rep.receipts) if rep else 0,
        "total_spending": NR if sp is None else {
            "source": sp["source"], "per_site": sp["per_site"], "infinite": sp["infinite"],
            "synthetic_only": sp["synthetic_only"], "total_epsilon_max": sp["total_epsilon_max"],
            "composition": sp["composition"], "statement": sp["statement"]},
        "open_issues": issues,
        "sign_off": text.SIGN_OFF,
    }


# ---------------------------------------------------------------------------------------------------- entry
def build_report(run_dir: str | Path, *, pdf: bool = False, allow_unverified: bool = False,
                 expected_key_fingerprint: str | None = None,
                 expected_head_hash: str | None = None, site_dirs: tuple[str | Path, ...] = ()) -> ReportPaths:
    """Verify ``run_dir`` and write ``report/report.html``, ``report/report.json`` and ``report/figures/*.png``.

    Raises the verification error unless ``allow_unverified`` (then the report is written with a FAILED integrity
    section and a banner). ``pdf=True`` also writes report.pdf with headless Chromium or weasyprint
    (:mod:`audits.report.pdf`; ReportDependencyMissing when neither is installed).
    ``site_dirs``: standalone SITE_DIRs whose receipts are cross-checked too (see :func:`audits.verify.verify_run`).
    """
    run_dir = Path(run_dir)
    if pdf:
        from audits.report.pdf import pdf_renderer

        pdf_renderer()  # ReportDependencyMissing before any work when neither Chromium nor weasyprint is there
    err: VerificationError | None = None
    rep: VerificationReport | None = None
    try:
        rep = verify_run(run_dir, expected_key_fingerprint=expected_key_fingerprint,
                         expected_head_hash=expected_head_hash, site_dirs=tuple(site_dirs))
        records = rep.records
    except VerificationError as e:
        if not allow_unverified:
            raise
        err, records = e, _best_effort_records(run_dir, e)
    figs: dict[str, bytes] = {}
    report_dir = run_dir / "report"
    fig_dir = report_dir / "figures"
    sections = {
        "integrity": _integrity(rep, err, records, key_pinned=expected_key_fingerprint is not None,
                                head_pinned=expected_head_hash is not None),
        "privacy_statement": _privacy_statement(rep, records),
        "system": _system(records),
        "threat_model": _threat_model(records),
        "privacy_loss": _privacy_loss(rep, records, fig_dir, figs),
        "dp_implementation": _dp_impl(records),
        "secure_aggregation": _secure_agg(records),
        "data_governance": _data_gov(records),
        "training": _training(rep, records),
        "utility": _utility(run_dir, records, figs),
        "empirical_audit": _empirical(run_dir, figs, rep),
        "environment": _environment(rep, records),
        "limitations": _limitations(rep, records),
    }
    sections["releases"] = _releases(run_dir, records)
    sections["crosswalk"] = {"rows": text.crosswalk_rows(_facts(sections, records, rep)),
                             "disclaimer": text.DISCLAIMER}
    sections = {"verdict": _verdict(rep, err, records, sections, key_pinned=expected_key_fingerprint is not None,
                                    head_pinned=expected_head_hash is not None), **sections}
    doc = {"schema": REPORT_SCHEMA, "generated_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
           "run_dir": str(run_dir), "verified": rep is not None,
           "section_titles": {k: t for k, t in text.SECTIONS}, "sections": sections}
    public = json.loads(json.dumps(doc, default=str))
    for s in (public["sections"]["utility"]["samples"] if isinstance(sections["utility"]["samples"], list) else []):
        s.pop("_b64", None)
    public["report_sha256"] = doc["report_sha256"] = report_digest(public)
    jsonschema.validate(public, load_schema("report-v1"), format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    fig_paths = []
    for name, png in sorted(figs.items()):
        _write_atomic(fig_dir / name, png)
        fig_paths.append(fig_dir / name)
    html = render_html(doc, {name: base64.b64encode(png).decode("ascii") for name, png in figs.items()})
    html_path, json_path = report_dir / "report.html", report_dir / "report.json"
    _write_atomic(json_path, (json.dumps(public, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode())
    _write_atomic(html_path, html.encode("utf-8"))
    pdf_path = None
    if pdf:
        from audits.report.pdf import html_to_pdf

        pdf_path = report_dir / "report.pdf"
        html_to_pdf(html_path, pdf_path)
    return ReportPaths(html=html_path, json=json_path, figures=tuple(fig_paths), pdf=pdf_path)


def report_digest(doc: dict[str, Any]) -> str:
    """SHA-256 of report.json's canonical JSON (privfed-cjson/1) without its own ``report_sha256`` field: printed
    on page 1, so a signed printout can be matched to report.json (``audits.report.verify_report_digest``)."""
    from audits.canonical import canonical_bytes

    return hashlib.sha256(canonical_bytes({k: v for k, v in doc.items() if k != "report_sha256"})).hexdigest()


def verify_report_digest(path: str | Path) -> bool:
    """True when report.json's ``report_sha256`` matches its content."""
    doc = json.loads(Path(path).read_text("utf-8"))
    return doc.get("report_sha256") == report_digest(doc)


def _facts(sec: dict[str, Any], records, rep) -> dict[str, Any]:
    """What the crosswalk rows are generated from (this run's records, never fixed text)."""
    st = (_by_kind(records, "run_start") or [(0, {})])[0][1]
    sa = sec["secure_aggregation"]
    plain = [r["round"] for r in (sa["rounds"] if isinstance(sa["rounds"], list) else []) if r["plaintext"]]
    placement, _ = _placement(st)
    return {"verified": rep is not None, "pinned": bool(rep and (rep.key_pinned or rep.head_pinned)),
            "dp": bool(_by_kind(records, "dp_event")) and st.get("dp_mode") not in ("off", None),
            "dp_mode": st.get("dp_mode", NR), "placement": placement,
            "epsilon_range": (min(rep.final_epsilon.values()), max(rep.final_epsilon.values()))
            if rep and rep.final_epsilon else None,
            "secure_agg": st.get("secure_agg_mode", "off") not in ("off", NR) and not plain,
            "secure_agg_mode": st.get("secure_agg_mode", NR), "plaintext_rounds": plain,
            "operator": bool(st.get("operator") or (st.get("config") or {}).get("operator")),
            "intended_use": "intended_use" in st, "dataset_fingerprint": "dataset_fingerprint" in st,
            "receipts": sum(r.receipt_verified for r in rep.receipts) if rep else 0,
            "empirical": sec["empirical_audit"] != NR, "complete": bool(rep and rep.complete),
            "suppression": sec["data_governance"].get("suppression", NR),
            "undoable": bool(sec["data_governance"].get("undoable"))}


def render_html(doc: dict[str, Any], figures_b64: dict[str, str]) -> str:
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("audits.report", "templates"),
                             autoescape=jinja2.select_autoescape(["html", "j2"]), undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True)

    def fmt(v: Any) -> str:
        if v is None or v == NR:
            return NR
        if isinstance(v, float):
            return f"{v:.4g}"
        if isinstance(v, (list, tuple)):
            return ", ".join(fmt(x) for x in v) if v else NR
        if isinstance(v, dict):
            return json.dumps(v, sort_keys=True, default=str) if v else NR
        return str(v)

    env.filters["fmt"] = fmt
    env.tests["recorded"] = lambda v: not (v is None or v == NR or v == [] or v == {})
    return env.get_template("report.html.j2").render(doc=doc, s=doc["sections"], sections=text.SECTIONS,
                                                     figs=figures_b64, NR=NR, python=sys.version.split()[0])
