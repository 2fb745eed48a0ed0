"""What an audit of a finished run spent on the sites' data: the signed ``audit_spend`` ledger records.

``privfed audit --empirical`` trains helper runs (a non-private control, a DP run, and the attacker's replays of
each) and publishes attack results computed from them (report/empirical.json). When they train on the sites' data
that is a further use of it, so the audit appends one ``audit_spend`` record after ``run_end``, signed with the run's
key, listing every helper run with its own ε per site, its δ, its accountant and its typed DP events (from which
:func:`check_audit_spend` recomputes ε independently, as the verifier does for the run's own ``dp_event``s).

The total a site has spent (:func:`spending`) is the run's ε plus the ε of every DP helper run trained on the sites'
data, by basic composition (ε and δ add up: an upper bound; composing the events jointly would be tighter). A helper
run trained on the sites' data without DP (the non-private control, its replay) makes the total infinite: what the
audit publishes from it (membership-inference AUC/TPR, ε lower bounds) is a non-private release of aggregate
statistics of the sites' data. Helper runs on synthetic data only (``data: synthetic``) spend nothing.

Pure: reads verified records only (no privfed import).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from audits.accounting import IndependentAccountant, parse_event, within_tolerance
from audits.errors import EpsilonMismatchError, RecordSchemaError

KIND = "audit_spend"
INFINITE = "infinite"      # how an unbounded ε is written in JSON (report.json)


def check_audit_spend(index: int, payload: Mapping[str, Any], *, tolerance: float) -> None:
    """Recompute each private helper run's ε per site from its recorded DP events with dp_accounting (never the
    project's ``dp/``) and compare it with the ε its own accountant reported; raise on any disagreement."""
    for run in payload["helper_runs"]:
        label = run["label"]
        if not run["private"]:
            continue
        eps, events = run["epsilon"], run["dp_events"]
        if set(eps) != set(events):
            raise EpsilonMismatchError(index, f"audit helper run {label}: ε is reported for sites {sorted(eps)} but "
                                              f"DP events are recorded for {sorted(events)}", kind=KIND)
        for site, evs in events.items():
            if not evs:
                raise RecordSchemaError(index, f"audit helper run {label}: site {site} has no DP event", kind=KIND)
            acc = IndependentAccountant(accountant=run["accountant"])
            for e in evs:
                acc.compose(parse_event(e))
            recomputed = acc.epsilon(delta=run["delta"])
            if not within_tolerance(eps[site], recomputed, rel=tolerance):
                raise EpsilonMismatchError(index, f"audit helper run {label}, site {site}: reported ε="
                                                  f"{eps[site]:.6g} but recomputed ε={recomputed:.6g} at "
                                                  f"δ={run['delta']:g} ({run['accountant']})", kind=KIND)


def _fmt(e: float) -> str | float:
    return INFINITE if math.isinf(e) else e


def spending(records: Sequence[Mapping[str, Any]], final_epsilon: Mapping[str, float],
             final_delta: Mapping[str, float]) -> dict[str, Any] | None:
    """The run's ε plus what its recorded audits spent, per site (None when no audit_spend record exists).

    ``final_epsilon``/``final_delta``: the run's own ε per site, recomputed by the verifier."""
    audits = [(i, r) for i, r in enumerate(records) if r["kind"] == KIND]
    if not audits:
        return None
    helper_eps: dict[str, float] = {}
    helper_delta: dict[str, float] = {}
    unaccounted: list[str] = []
    rows = []
    for i, r in audits:
        p = r["payload"]
        for h in p["helper_runs"]:
            charged = h["data"] == "sites"
            rows.append({"record": i, "utc": r["utc"], "label": h["label"], "role": h["role"], "data": h["data"],
                         "dp_mode": h["dp_mode"], "rounds": h["rounds"], "private": h["private"],
                         "epsilon_max": max(h["epsilon"].values()) if h["private"] and h["epsilon"] else None,
                         "delta": h["delta"], "config_hash": h["config_hash"],
                         "charged": "ε = ∞ (not private)" if charged and not h["private"] else
                                    "its ε adds to the run's" if charged else
                                    "nothing (synthetic data only)"})
            if not charged:
                continue
            if not h["private"]:
                unaccounted.append(h["label"])
                continue
            for site, e in h["epsilon"].items():
                helper_eps[site] = helper_eps.get(site, 0.0) + e
                helper_delta[site] = helper_delta.get(site, 0.0) + h["delta"]
    infinite = bool(unaccounted)
    sites = sorted(set(final_epsilon) | set(helper_eps), key=lambda s: (len(s), s))
    per_site = []
    for s in sites:
        run_e = final_epsilon.get(s)
        audit_e = math.inf if infinite else helper_eps.get(s, 0.0)
        total = math.inf if run_e is None or infinite else run_e + audit_e
        per_site.append({"site": s, "run_epsilon": run_e, "run_delta": final_delta.get(s),
                         "audit_epsilon": _fmt(audit_e), "audit_delta": helper_delta.get(s, 0.0),
                         # the DP helper runs alone (what the total would be without the non-private ones)
                         "audit_dp_epsilon": helper_eps.get(s, 0.0),
                         "total_without_non_private": None if run_e is None else run_e + helper_eps.get(s, 0.0),
                         "total_epsilon": _fmt(total),
                         "total_delta": (final_delta.get(s) or 0.0) + helper_delta.get(s, 0.0)})
    finite = [x["total_epsilon"] for x in per_site if x["total_epsilon"] != INFINITE]
    synthetic = all(r["payload"]["data"] == "synthetic" for _, r in audits)
    if infinite:
        statement = (f"The audit trained {', '.join(sorted(set(unaccounted)))} on the sites' data without "
                     "differential privacy: what it publishes from them (report/empirical.json: membership-inference "
                     "AUC and TPR, ε lower bounds) is an unaccounted (ε = ∞) release of aggregate statistics of the "
                     "sites' data, and no finite ε bounds the run together with its audit. Re-run as privfed audit "
                     "--empirical --synthetic-only to spend nothing.")
    elif synthetic:
        statement = ("The audit's helper runs trained on synthetic data only: they spent nothing of the sites' "
                     "privacy; the total is the run's ε.")
    else:
        statement = ("The audit's DP helper runs trained on the sites' data: their ε adds to the run's (basic "
                     "composition: ε and δ add up).")
    return {"source": "signed ledger (audit_spend records)", "records": [i for i, _ in audits],
            "helper_runs": rows, "per_site": per_site, "infinite": infinite, "synthetic_only": synthetic,
            "non_private_release": unaccounted,
            "total_epsilon_max": INFINITE if infinite or len(finite) < len(per_site) else
                                 (max(finite) if finite else None),
            "composition": "basic (sequential) composition: ε_total = ε_run + Σ ε_helper, δ_total = δ_run + "
                           "Σ δ_helper per site; an upper bound",
            "statement": statement}


__all__ = ["KIND", "INFINITE", "check_audit_spend", "spending"]
