"""Independent verification of a run directory: ``verify_run(run_dir) -> VerificationReport``.

Checks, in order (the first failure raises; nothing returns False):

1. the run directory and its contract files exist (ledger.jsonl, keys/ledger.pub, config.toml);
2. the public key matches ``expected_key_fingerprint`` when one is pinned (it should be: see :mod:`audits.keys`);
3. every record: canonical JSON, seq, hash chain, Ed25519 signature, known schema version, envelope and payload
   schemas (:mod:`audits.chain`); run order (run_start first, nothing after run_end); small-cell suppression;
4. config.toml hashes to run_start.config_hash; every checkpoint that is present hashes to its recorded sha256
   (:func:`audits.artifact_hash.sha256_path`); a missing checkpoint is a warning (it may have been pruned);
5. ε: each client's dp_event events are composed in ledger order with the recorded accountant, independently of
   what the run printed; every dp_event's reported cumulative ε and run_end.final_epsilon must match the
   recomputation within ``tolerance`` (relative, default 1 %); budget checks must be consistent and obeyed;
6. optionally: the ledger contains the pinned ``expected_head_hash`` and ends with run_end (``require_complete``).

A ledger cut at a record boundary is only detectable through (6) or a missing run_end: pin the head hash.
"""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from audits.artifact_hash import sha256_path
from audits.chain import verify_chain
from audits.errors import (ArtifactMismatchError, AuditError, BudgetViolationError, EpsilonMismatchError,
                           IncompleteRunDirectory, LedgerIntegrityError, LedgerKeyError, MissingRunDirectory,
                           RecordSchemaError, SmallCellError, VerificationError)
from audits.epsilon import ClientAccountant, GaussianEvent, backend_description
from audits.keys import PUBLIC_KEY_RELPATH, key_fingerprint, load_public_key
from audits.ledger import LEDGER_FILENAME
from audits.ledger_schema import small_cell_error

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
    what: str                     # "config" | "checkpoint"
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
        if ended:
            raise RecordSchemaError(i, "record after run_end", kind=kind)
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
    for i, r in enumerate(records):
        if r["kind"] != "round_end" or r["payload"]["checkpoint"] is None:
            continue
        ck = r["payload"]["checkpoint"]
        p = _inside(run_dir, ck["path"])
        if p is None:
            raise RecordSchemaError(i, f"checkpoint path {ck['path']!r} leaves the run directory", kind="round_end")
        if not p.exists():
            warnings.append(f"record {i}: checkpoint {ck['path']} is not present (pruned?); its hash was not checked")
            checks.append(ArtifactCheck(i, "checkpoint", ck["path"], ck["sha256"], "missing"))
            continue
        if sha256_path(p) != ck["sha256"]:
            raise ArtifactMismatchError(i, f"checkpoint {ck['path']} does not hash to the recorded sha256",
                                        kind="round_end")
        checks.append(ArtifactCheck(i, "checkpoint", ck["path"], ck["sha256"], "verified"))
    return checks, warnings


def _rel_diff(a: float, b: float) -> float:
    if a == b:
        return 0.0
    return abs(a - b) / max(abs(b), 1e-12)


def _check_epsilon(records: tuple[dict[str, Any], ...], tolerance: float
                   ) -> tuple[list[EpsilonCheck], dict[str, float], dict[str, float]]:
    accountants: dict[str, ClientAccountant] = {}
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
                acc = accountants[client] = ClientAccountant(accountant=p["accountant"])
            elif acc.accountant != p["accountant"]:
                raise RecordSchemaError(i, f"client {client}: accountant changed from {acc.accountant} to "
                                           f"{p['accountant']}", kind=kind)
            acc.compose(GaussianEvent.from_payload(p["event"]))
            eps = acc.epsilon(delta=p["delta"])
            last_delta[client] = p["delta"]
            cap = caps.get(client)
            checks.append(EpsilonCheck(i, p["round"], client, p["unit"], p["accountant"], p["delta"], p["epsilon"],
                                       eps, cap))
            if _rel_diff(p["epsilon"], eps) > tolerance:
                raise EpsilonMismatchError(i, f"client {client} round {p['round']}: reported ε={p['epsilon']:.6g} "
                                              f"but recomputed ε={eps:.6g} at δ={p['delta']:g} ({p['accountant']})",
                                           kind=kind)
            if cap is not None and eps > cap * (1 + tolerance):
                raise BudgetViolationError(i, f"client {client}: recomputed ε={eps:.6g} exceeds the cap "
                                              f"max_epsilon={cap:g}", kind=kind)
        elif kind == "run_end":
            reported = p["final_epsilon"]
            if set(reported) != set(accountants):
                raise EpsilonMismatchError(i, f"final_epsilon lists clients {sorted(reported)} but dp_events exist "
                                              f"for {sorted(accountants)}", kind=kind)
            for client, acc in accountants.items():
                delta = p["delta"] if p["delta"] is not None else last_delta[client]
                eps = acc.epsilon(delta=delta)
                if _rel_diff(reported[client], eps) > tolerance:
                    raise EpsilonMismatchError(i, f"client {client}: final ε={reported[client]:.6g} but recomputed "
                                                  f"ε={eps:.6g} at δ={delta:g}", kind=kind)
    final_delta = {}
    end = [r for r in records if r["kind"] == "run_end"]
    for c in accountants:
        final_delta[c] = end[0]["payload"]["delta"] if end and end[0]["payload"]["delta"] else last_delta[c]
    final = {c: acc.epsilon(delta=final_delta[c]) for c, acc in accountants.items()}
    return checks, final, final_delta


def verify_run(run_dir: str | Path, *, expected_key_fingerprint: str | None = None,
               expected_head_hash: str | None = None, require_complete: bool = False,
               tolerance: float = DEFAULT_TOLERANCE, check_epsilon: bool = True,
               check_artifacts: bool = True) -> VerificationReport:
    """Verify ``run_dir`` (see module docstring). Returns a report on success; raises an AuditError otherwise."""
    if not 0 < tolerance < 1:
        raise ValueError("tolerance must be in (0, 1)")
    run_dir = Path(run_dir)
    data, pub = _load_inputs(run_dir)
    fp = key_fingerprint(pub)
    if expected_key_fingerprint is not None and expected_key_fingerprint.lower() != fp:
        raise LedgerKeyError(f"keys/ledger.pub has fingerprint {fp}, not the pinned {expected_key_fingerprint}")
    state = verify_chain(data, pub)
    records = state.records
    _check_order(records)
    warnings: list[str] = []
    artifacts: list[ArtifactCheck] = []
    if check_artifacts:
        artifacts, w = _check_artifacts(run_dir, records)
        warnings += w
    eps_checks, final, final_delta = _check_epsilon(records, tolerance) if check_epsilon else ([], {}, {})
    complete = records[-1]["kind"] == "run_end"
    if expected_head_hash is not None and expected_head_hash.lower() not in state.line_hashes:
        raise LedgerIntegrityError(None, f"the pinned head hash {expected_head_hash} is not in the ledger "
                                         "(ledger truncated or rewritten)")
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
        repairs=repairs, warnings=tuple(warnings), records=records)


def cli_verify(run_dir: str | Path, *, expected_key_fingerprint: str | None = None,
               expected_head_hash: str | None = None, require_complete: bool = False) -> int:
    """``privfed audit verify RUN_DIR``: print the outcome; return 0 (verified), 1 (a record fails), 2 (bad input)."""
    try:
        rep = verify_run(run_dir, expected_key_fingerprint=expected_key_fingerprint,
                         expected_head_hash=expected_head_hash, require_complete=require_complete)
    except VerificationError as e:
        print(f"FAILED {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    except AuditError as e:
        print(f"ERROR {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    print(f"OK: {rep.n_records} records verified; head {rep.head_hash}")
    print(f"ledger key {rep.key_fingerprint} (compare with the fingerprint you obtained out of band)")
    for c in sorted(rep.final_epsilon):
        print(f"client {c}: ε={rep.final_epsilon[c]:.4g} at δ={rep.final_delta[c]:g} (recomputed, "
              f"{rep.accountant_backend})")
    for w in rep.warnings:
        print(f"warning: {w}")
    return 0
