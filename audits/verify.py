"""Independent verification of a run directory: ``verify_run(run_dir) -> VerificationReport``.

Checks, in order (the first failure raises; nothing returns False):

1. the run directory and its contract files exist (ledger.jsonl, keys/ledger.pub, config.toml);
2. the public key matches ``expected_key_fingerprint`` when one is pinned (it should be: see :mod:`audits.keys`;
   ``[sha256:]<hex>``, any case; a mismatch is PinnedKeyMismatch, a VerificationError);
3. every record: canonical JSON, seq, hash chain, Ed25519 signature, known schema version, envelope and payload
   schemas (:mod:`audits.chain`); run order (run_start first, nothing after run_end but ``audit_spend`` records,
   which only come after it); small-cell suppression;
4. config.toml hashes to run_start.config_hash; the FID feature extractor (run_start.evaluation.feature_extractor),
   when its hash is recorded, hashes to it; every checkpoint that is present hashes to its recorded sha256
   (:func:`audits.artifact_hash.sha256_path`); a missing earlier checkpoint is a warning (it may have been pruned),
   a missing final one (the last round_end's) an ArtifactMismatchError;
5. ε: each client's typed dp_event events are composed in ledger order with dp_accounting's own accountant for the
   recorded kind (:mod:`audits.accounting`, never the project's ``dp/``); every dp_event's reported cumulative ε
   and run_end.final_epsilon must match the recomputation: ``|reported − recomputed| ≤ tolerance·recomputed +
   2e-3`` (``tolerance`` relative, default 1 %; 2e-3 absolute covers the PLD grid); budget checks must be consistent
   and obeyed; each ``audit_spend`` record's DP helper runs: their reported ε per site must match the
   recomputation from their recorded events (:mod:`audits.audit_spend`);
6. roster and receipts: when the ledger has a ``roster`` record it must hash to its fingerprint and name the ledger
   key as server key, every dp_event client must be on it, and every ``RUN_DIR/sites/<id>/receipt.jsonl`` is
   verified under the roster's key for ``<id>`` (:func:`audits.receipt.verify_receipt`) and cross-checked against
   the ledger (:func:`audits.cross_check.cross_check`): any disagreement in DP events, rounds, key or roster raises
   ReceiptMismatch (a refusal recorded by one side only is a warning);
7. optionally: the ledger has a run_end record (``require_complete``).

The pinned ``expected_head_hash`` is checked right after the chain (3), before any semantic check: the ledger
must contain it. A head pinned before records were appended (an audit's ``audit_spend`` after the run's pins were
sent) still verifies as a prefix: the records after it are counted (``records_after_pin``) and named in a warning.

A ledger cut at a record boundary is only detectable through (6) or a missing run_end: pin the head hash.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from audits.artifact_hash import sha256_path
from audits.audit_spend import check_audit_spend, spending
from audits.chain import verify_chain
from audits.accounting import IndependentAccountant, backend_description, parse_event, within_tolerance
from audits.cross_check import SiteCrossCheck, cross_check
from audits.errors import (ArtifactMismatchError, AuditError, BudgetViolationError, EpsilonMismatchError,
                           IncompleteRunDirectory, LedgerIntegrityError, MissingRunDirectory, PinnedKeyMismatch,
                           ReceiptMismatch, RecordSchemaError, RosterError, SmallCellError, VerificationError)
from audits.keys import PUBLIC_KEY_RELPATH, key_fingerprint, load_public_key, normalize_pin
from audits.ledger import LEDGER_FILENAME
from audits.ledger_schema import LEDGER, small_cell_error
from audits.receipt import RECEIPT_FILENAME, VerifiedReceipt, verify_receipt
from audits.roster import roster_from_records

DEFAULT_TOLERANCE = 0.01


@dataclass(frozen=True)
class EpsilonCheck:
    record_index: int
    round: int
    client: str
    unit: str
    accountant: str
    delta: float
    reported: float
    recomputed: float
    cap: float | None             # latest recorded max_epsilon for this client, if any


@dataclass(frozen=True)
class ArtifactCheck:
    record_index: int
    what: str                     # "config" | "checkpoint" | "feature_extractor"
    path: str
    sha256: str
    status: str                   # "verified" | "missing"


@dataclass(frozen=True)
class VerificationReport:
    """What was verified. ``records`` are the verified ledger records (for report building)."""

    run_dir: Path
    n_records: int
    head_hash: str
    key_fingerprint: str
    schema_versions: tuple[int, ...]
    kinds: dict[str, int]
    complete: bool
    accountant_backend: str
    tolerance: float
    epsilon_checks: tuple[EpsilonCheck, ...]
    final_epsilon: dict[str, float]       # recomputed, per client, at final_delta[client]
    final_delta: dict[str, float]
    artifacts: tuple[ArtifactCheck, ...]
    repairs: tuple[int, ...]
    warnings: tuple[str, ...]
    records: tuple[dict[str, Any], ...] = field(repr=False, default=())
    roster_fingerprint: str | None = None
    receipts: tuple[SiteCrossCheck, ...] = ()          # one row per roster site (cross-checked or not)
    key_pinned: bool = False                           # keys/ledger.pub matched a fingerprint given by the caller
    head_pinned: bool = False                          # the ledger contains a head hash given by the caller
    records_after_pin: int = 0                         # records appended after the pinned head (e.g. audit_spend)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("records")
        d["run_dir"] = str(self.run_dir)
        return d


def _load_inputs(run_dir: Path) -> tuple[bytes, Any]:
    if not run_dir.is_dir():
        raise MissingRunDirectory(run_dir)
    ledger = run_dir / LEDGER_FILENAME
    if not ledger.is_file():
        raise IncompleteRunDirectory(ledger, "ledger.jsonl is missing")
    data = ledger.read_bytes()
    if not data:
        raise IncompleteRunDirectory(ledger, "ledger.jsonl is empty")
    pub = run_dir / PUBLIC_KEY_RELPATH
    if not pub.is_file():
        raise IncompleteRunDirectory(pub, "keys/ledger.pub is missing")
    return data, load_public_key(pub)


def _check_order(records: tuple[dict[str, Any], ...]) -> None:
    started = ended = False
    for i, r in enumerate(records):
        kind = r["kind"]
        if ended and kind not in LEDGER.after_end_kinds + (LEDGER.repair_kind,):
            raise RecordSchemaError(i, f"record after run_end (only {', '.join(LEDGER.after_end_kinds)} may follow "
                                       "it)", kind=kind)
        if kind in LEDGER.after_end_kinds and not ended:
            raise RecordSchemaError(i, f"{kind} before run_end (an audit's spending follows the finished run)",
                                    kind=kind)
        if kind == "run_start":
            if started:
                raise RecordSchemaError(i, "second run_start", kind=kind)
            started = True
        elif kind != "ledger_repair" and not started:
            raise RecordSchemaError(i, "the first record must be run_start", kind=kind)
        ended |= kind == "run_end"
        if kind == "data_summary":
            err = small_cell_error(r["payload"])
            if err:
                raise SmallCellError(i, err, kind=kind)
    if not started:
        raise RecordSchemaError(len(records) - 1, "no run_start record")


def _inside(run_dir: Path, rel: str) -> Path | None:
    p = (run_dir / rel).resolve()
    root = run_dir.resolve()
    return p if p == root or root in p.parents else None


def _check_artifacts(run_dir: Path, records: tuple[dict[str, Any], ...]) -> tuple[list[ArtifactCheck], list[str]]:
    checks: list[ArtifactCheck] = []
    warnings: list[str] = []
    start_i = next(i for i, r in enumerate(records) if r["kind"] == "run_start")
    cfg = run_dir / "config.toml"
    if not cfg.is_file():
        raise IncompleteRunDirectory(cfg, "config.toml is missing")
    want = records[start_i]["payload"]["config_hash"]
    if sha256_path(cfg) != want:
        raise ArtifactMismatchError(start_i, "config.toml does not hash to run_start.config_hash", kind="run_start")
    checks.append(ArtifactCheck(start_i, "config", "config.toml", want, "verified"))
    _check_feature_extractor(run_dir, start_i, records[start_i]["payload"], checks, warnings)
    final_i = max((i for i, r in enumerate(records) if r["kind"] == "round_end" and r["payload"]["checkpoint"]),
                  default=None)
    for i, r in enumerate(records):
        if r["kind"] != "round_end" or r["payload"]["checkpoint"] is None:
            continue
        ck = r["payload"]["checkpoint"]
        p = _inside(run_dir, ck["path"])
        if p is None:
            raise RecordSchemaError(i, f"checkpoint path {ck['path']!r} leaves the run directory", kind="round_end")
        if not p.exists():
            if i == final_i:
                raise ArtifactMismatchError(i, f"the final checkpoint {ck['path']} is missing: the released model "
                                               "cannot be checked against the ledger", kind="round_end")
            warnings.append(f"record {i}: checkpoint {ck['path']} is not present (pruned?); its hash was not checked")
            checks.append(ArtifactCheck(i, "checkpoint", ck["path"], ck["sha256"], "missing"))
            continue
        if sha256_path(p) != ck["sha256"]:
            raise ArtifactMismatchError(i, f"checkpoint {ck['path']} does not hash to the recorded sha256",
                                        kind="round_end")
        checks.append(ArtifactCheck(i, "checkpoint", ck["path"], ck["sha256"], "verified"))
    return checks, warnings


def _check_feature_extractor(run_dir: Path, i: int, start: dict[str, Any], checks: list[ArtifactCheck],
                             warnings: list[str]) -> None:
    """The FID feature extractor the run measured with (run_start.evaluation.feature_extractor): its copy in the run
    directory must hash to the recorded ``weights_sha256``; every FID in the ledger was computed in that space."""
    fx = (start.get("evaluation") or {}).get("feature_extractor") or {}
    want, rel = fx.get("weights_sha256"), fx.get("path")
    if not want or not rel:
        return                    # runs from before the extractor's hash was recorded
    p = _inside(run_dir, rel)
    if p is None:
        raise RecordSchemaError(i, f"feature extractor path {rel!r} leaves the run directory", kind="run_start")
    if not p.is_file():
        warnings.append(f"record {i}: the FID feature extractor {rel} is not present; recompute it from its "
                        f"recorded material (key {fx.get('key', '?')[:16]}) to check the FIDs")
        checks.append(ArtifactCheck(i, "feature_extractor", rel, want, "missing"))
        return
    if sha256_path(p) != want:
        raise ArtifactMismatchError(i, f"the FID feature extractor {rel} does not hash to the recorded "
                                       "weights_sha256: the FIDs were not measured with this file", kind="run_start")
    checks.append(ArtifactCheck(i, "feature_extractor", rel, want, "verified"))


def _check_epsilon(records: tuple[dict[str, Any], ...], tolerance: float
                   ) -> tuple[list[EpsilonCheck], dict[str, float], dict[str, float]]:
    accountants: dict[str, IndependentAccountant] = {}
    caps: dict[str, float] = {}
    denied: set[tuple[int, str]] = set()
    last_delta: dict[str, float] = {}
    checks: list[EpsilonCheck] = []
    for i, r in enumerate(records):
        kind, p = r["kind"], r["payload"]
        if kind == "budget_check":
            if p["allowed"] != (p["projected_epsilon"] <= p["max_epsilon"]):
                raise BudgetViolationError(i, f"allowed={p['allowed']} but projected ε {p['projected_epsilon']} vs "
                                              f"max {p['max_epsilon']}", kind=kind)
            caps[p["client"]] = p["max_epsilon"]
            if not p["allowed"]:
                denied.add((p["round"], p["client"]))
        elif kind == "dp_event":
            client = p["client"]
            if (p["round"], client) in denied:
                raise BudgetViolationError(i, f"client {client} trained in round {p['round']} after its budget "
                                              "check refused it", kind=kind)
            acc = accountants.get(client)
            if acc is None:
                acc = accountants[client] = IndependentAccountant(accountant=p["accountant"])
            elif acc.accountant != p["accountant"]:
                raise RecordSchemaError(i, f"client {client}: accountant changed from {acc.accountant} to "
                                           f"{p['accountant']}", kind=kind)
            acc.compose(parse_event(p["event"]))
            eps = acc.epsilon(delta=p["delta"])
            last_delta[client] = p["delta"]
            cap = caps.get(client)
            checks.append(EpsilonCheck(i, p["round"], client, p["unit"], p["accountant"], p["delta"], p["epsilon"],
                                       eps, cap))
            if not within_tolerance(p["epsilon"], eps, rel=tolerance):
                raise EpsilonMismatchError(i, f"client {client} round {p['round']}: reported ε={p['epsilon']:.6g} "
                                              f"but recomputed ε={eps:.6g} at δ={p['delta']:g} ({p['accountant']})",
                                           kind=kind)
            if cap is not None and eps > cap * (1 + tolerance):
                raise BudgetViolationError(i, f"client {client}: recomputed ε={eps:.6g} exceeds the cap "
                                              f"max_epsilon={cap:g}", kind=kind)
        elif kind == "audit_spend":
            check_audit_spend(i, p, tolerance=tolerance)
        elif kind == "run_end":
            reported = p["final_epsilon"]
            if set(reported) != set(accountants):
                raise EpsilonMismatchError(i, f"final_epsilon lists clients {sorted(reported)} but dp_events exist "
                                              f"for {sorted(accountants)}", kind=kind)
            for client, acc in accountants.items():
                delta = p["delta"] if p["delta"] is not None else last_delta[client]
                eps = acc.epsilon(delta=delta)
                if not within_tolerance(reported[client], eps, rel=tolerance):
                    raise EpsilonMismatchError(i, f"client {client}: final ε={reported[client]:.6g} but recomputed "
                                                  f"ε={eps:.6g} at δ={delta:g}", kind=kind)
    final_delta = {}
    end = [r for r in records if r["kind"] == "run_end"]
    for c in accountants:
        final_delta[c] = end[0]["payload"]["delta"] if end and end[0]["payload"]["delta"] else last_delta[c]
    final = {c: acc.epsilon(delta=final_delta[c]) for c, acc in accountants.items()}
    return checks, final, final_delta


def _claimed_site(site_dir: Path) -> str:
    try:
        first = (site_dir / RECEIPT_FILENAME).read_bytes().split(b"\n", 1)[0]
        site = json.loads(first)["payload"]["site"]
    except (OSError, ValueError, KeyError, TypeError):
        return site_dir.name
    return site if isinstance(site, str) else site_dir.name


def _check_receipts(run_dir: Path, records: tuple[dict[str, Any], ...], fp: str, tolerance: float,
                    site_dirs: tuple[Path, ...]) -> tuple[str | None, list[SiteCrossCheck], list[str]]:
    roster = roster_from_records(records, ledger_key_fingerprint=fp)
    sites_dir = run_dir / "sites"
    found = sorted(p.parent for p in sites_dir.glob(f"*/{RECEIPT_FILENAME}")) if sites_dir.is_dir() else []
    found += [Path(d) for d in site_dirs]
    if roster is None:
        return None, [], ([f"{len(found)} site receipt(s) present but the ledger has no roster record: receipts were "
                           "not cross-checked"] if found else [])
    for i, r in enumerate(records):
        if r["kind"] == "dp_event" and r["payload"]["client"] not in roster.sites:
            raise RosterError(i, f"client {r['payload']['client']!r} is not on the roster", kind="dp_event")
    receipts: dict[str, VerifiedReceipt] = {}
    for d in found:
        # RUN_DIR/sites/<id>/: the directory names the site. A standalone SITE_DIR: its receipt_start names it
        # (unverified until verify_receipt checks it under the roster's key for that very site).
        site = d.name if d.parent == run_dir / "sites" else _claimed_site(d)
        if site not in roster.sites:
            raise ReceiptMismatch(f"{d} holds a receipt but the site is not on the ledger's roster", site=site,
                                  record_index=roster.record_index, kind="roster")
        if site in receipts:
            raise ReceiptMismatch(f"two receipts given ({receipts[site].path}, {d / RECEIPT_FILENAME})", site=site)
        receipts[site] = verify_receipt(d, public_key=roster.sites[site], expected_site=site, tolerance=tolerance)
    rows = cross_check(records, receipts, ledger_key_fingerprint=fp)
    warnings = [f"site {r.site}: no receipt in sites/{r.site}/ (kept by the site?): its DP events were not "
                "cross-checked" for r in rows if not r.receipt_verified and r.rounds]
    warnings += [n for r in rows for n in r.notes]
    return roster.fingerprint, rows, warnings


def verify_run(run_dir: str | Path, *, expected_key_fingerprint: str | None = None,
               expected_head_hash: str | None = None, require_complete: bool = False,
               tolerance: float = DEFAULT_TOLERANCE, check_epsilon: bool = True,
               check_artifacts: bool = True, check_receipts: bool = True,
               site_dirs: tuple[str | Path, ...] = ()) -> VerificationReport:
    """Verify ``run_dir`` (see module docstring). Returns a report on success; raises an AuditError otherwise.

    ``site_dirs``: standalone SITE_DIRs whose receipt.jsonl to cross-check as well (besides RUN_DIR/sites/*/)."""
    if not 0 < tolerance < 1:
        raise ValueError("tolerance must be in (0, 1)")
    run_dir = Path(run_dir)
    if expected_key_fingerprint is not None:
        expected_key_fingerprint = normalize_pin(expected_key_fingerprint, what="key fingerprint", prefix=True)
    if expected_head_hash is not None:
        expected_head_hash = normalize_pin(expected_head_hash, what="head hash", prefix=False)
    data, pub = _load_inputs(run_dir)
    fp = key_fingerprint(pub)
    if expected_key_fingerprint is not None and expected_key_fingerprint != fp:
        raise PinnedKeyMismatch(f"has fingerprint {fp}, not the pinned {expected_key_fingerprint}")
    state = verify_chain(data, pub)
    if expected_head_hash is not None and expected_head_hash not in state.line_hashes:
        raise LedgerIntegrityError(None, f"the pinned head hash {expected_head_hash} is not in the ledger "
                                         "(ledger truncated or rewritten)")
    records = state.records
    _check_order(records)
    warnings: list[str] = []
    artifacts: list[ArtifactCheck] = []
    if check_artifacts:
        artifacts, w = _check_artifacts(run_dir, records)
        warnings += w
    eps_checks, final, final_delta = _check_epsilon(records, tolerance) if check_epsilon else ([], {}, {})
    roster_fp, receipts = None, []
    if check_receipts:
        roster_fp, receipts, w = _check_receipts(run_dir, records, fp, tolerance, tuple(Path(d) for d in site_dirs))
        warnings += w
    complete = any(r["kind"] == "run_end" for r in records)   # only after-end kinds may follow it (_check_order)
    after_pin = 0
    if expected_head_hash is not None:
        after_pin = len(records) - 1 - state.line_hashes.index(expected_head_hash)
        if after_pin:
            later = Counter(r["kind"] for r in records[len(records) - after_pin:])
            kinds = ", ".join(f"{n} {k}" for k, n in later.items())
            warnings.append(f"the pinned head hash is record {len(records) - 1 - after_pin} of {len(records)}: "
                            f"{after_pin} record(s) appended after it ({kinds}) are signed with the run's key but "
                            "not covered by the pin; pin the new head (pins.txt is rewritten when privfed audit "
                            "--empirical appends its audit_spend record)")
    if not complete:
        msg = "no run_end record: the run is in progress, aborted, or the ledger was truncated"
        if require_complete:
            raise LedgerIntegrityError(len(records), msg)
        warnings.append(msg)
    repairs = tuple(i for i, r in enumerate(records) if r["kind"] == "ledger_repair")
    for i in repairs:
        warnings.append(f"record {i}: ledger repaired after a torn write ({records[i]['payload']['truncated_bytes']} "
                        "bytes discarded)")
    return VerificationReport(
        run_dir=run_dir, n_records=len(records), head_hash=state.head_hash, key_fingerprint=fp,
        schema_versions=tuple(sorted({r["schema_version"] for r in records})),
        kinds=dict(Counter(r["kind"] for r in records)), complete=complete,
        accountant_backend=backend_description() if check_epsilon else "not run", tolerance=tolerance,
        epsilon_checks=tuple(eps_checks), final_epsilon=final, final_delta=final_delta, artifacts=tuple(artifacts),
        repairs=repairs, warnings=tuple(warnings), records=records, roster_fingerprint=roster_fp,
        receipts=tuple(receipts), key_pinned=expected_key_fingerprint is not None,
        head_pinned=expected_head_hash is not None, records_after_pin=after_pin)


def pinning_verdict(*, key_pinned: bool, head_pinned: bool, receipts_checked: int) -> str:
    """One sentence on what a passed verification is relative to (the same words in the CLI and the report)."""
    if not key_pinned and not head_pinned:
        out = ("Nothing was pinned: integrity is only relative to the operator's own key (keys/ledger.pub in the run "
               "directory); whoever holds keys/ledger.key could have rewritten and re-signed the whole ledger.")
    elif not head_pinned:
        out = ("The key fingerprint was pinned but no head hash: the operator holds the private key "
               "(keys/ledger.key), so a rewritten, re-signed ledger would still pass; pin the head hash sent at "
               "run end.")
    elif not key_pinned:
        out = ("The head hash was pinned (the ledger contains it, so records up to it were not rewritten since it "
               "was sent) but not the key fingerprint.")
    else:
        out = ("The key fingerprint and the head hash were pinned: the ledger up to that head is the one the "
               "operator committed to out of band.")
    if receipts_checked:
        out += (f" {receipts_checked} site receipt(s), signed with the sites' own keys, agreed with the ledger: "
                "they are the stronger check.")
    else:
        out += " No site receipt was cross-checked; the sites' own signed receipts would be the stronger check."
    return out


def cli_verify(run_dir: str | Path, *, expected_key_fingerprint: str | None = None,
               expected_head_hash: str | None = None, require_complete: bool = False,
               site_dirs: tuple[str | Path, ...] = ()) -> int:
    """``privfed audit verify RUN_DIR``: print the outcome; return 0 (verified), 1 (a record or a receipt cross-check
    fails), 2 (bad input)."""
    try:
        rep = verify_run(run_dir, expected_key_fingerprint=expected_key_fingerprint,
                         expected_head_hash=expected_head_hash, require_complete=require_complete,
                         site_dirs=site_dirs)
    except VerificationError as e:
        print(f"FAILED {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    except AuditError as e:
        print(f"ERROR {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    print(f"OK: {rep.n_records} records verified; head {rep.head_hash}")
    print(f"ledger key {rep.key_fingerprint} (compare with the fingerprint you obtained out of band)")
    print(f"pinned: key fingerprint {'yes' if rep.key_pinned else 'no'}, head hash "
          f"{'yes' if rep.head_pinned else 'no'}")
    print(pinning_verdict(key_pinned=rep.key_pinned, head_pinned=rep.head_pinned,
                          receipts_checked=sum(r.receipt_verified for r in rep.receipts)))
    if rep.final_epsilon:
        print(f"ε recomputed from the ledger's DP events with {rep.accountant_backend}:")
    for c in sorted(rep.final_epsilon):
        print(f"client {c}: ε={rep.final_epsilon[c]:.4g} at δ={rep.final_delta[c]:g}")
    spend = spending(rep.records, rep.final_epsilon, rep.final_delta)
    if spend is not None:
        print(f"audit spending (signed audit_spend records {spend['records']}): {spend['statement']}")
        for x in spend["per_site"]:
            total = x["total_epsilon"]
            print(f"client {x['site']}: total ε={total if isinstance(total, str) else format(total, '.4g')} "
                  f"(run + audit) at δ={x['total_delta']:g}")
    if rep.roster_fingerprint is not None:
        print(f"roster {rep.roster_fingerprint}")
    for r in rep.receipts:
        if r.receipt_verified:
            eps = "nothing spent" if r.receipt_epsilon is None else \
                f"receipt ε={r.receipt_epsilon:.4g} at δ={r.receipt_delta:g}"
            print(f"site {r.site}: receipt verified and consistent with the ledger ({eps}; site key "
                  f"{r.key_fingerprint})")
        else:
            print(f"site {r.site}: no receipt to cross-check (site key {r.key_fingerprint})")
    for w in rep.warnings:
        print(f"warning: {w}")
    return 0
