"""The roster: which sites (id → raw Ed25519 public key) a run enrolled, and the check of the ledger's roster record.

``roster_fingerprint(sites)`` = hex SHA-256 of the canonical JSON (privfed-cjson/1, :mod:`audits.canonical`) of the
``sites`` object ``{"<id>": "<64 lowercase hex>"}``. The ledger's ``roster`` record carries it together with the
sites and ``server_key`` (the fingerprint of the ledger key); each site's receipt records the fingerprint of the
roster it pinned, so one hash binds a receipt to the enrolment the ledger states.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from audits.canonical import canonical_bytes, sha256_hex
from audits.errors import RecordSchemaError, RosterError


def roster_fingerprint(sites: Mapping[str, str]) -> str:
    """Hex SHA-256 of canonical JSON of ``{site id: raw public key hex}`` (keys must already be lowercase hex)."""
    if not isinstance(sites, Mapping) or not sites:
        raise ValueError("sites must be a non-empty mapping of site id to public key hex")
    return sha256_hex(canonical_bytes(dict(sites)))


@dataclass(frozen=True)
class Roster:
    record_index: int
    fingerprint: str
    sites: dict[str, str]          # site id -> raw public key hex
    server_key: str                # fingerprint of the ledger key


def roster_from_records(records: tuple[dict[str, Any], ...], *,
                        ledger_key_fingerprint: str | None) -> Roster | None:
    """The run's roster (None when the ledger has none), checked: it comes right after run_start (repairs aside),
    once; its fingerprint hashes its sites; its server_key is the key that signed the ledger (not checked when
    ``ledger_key_fingerprint`` is None)."""
    found = [(i, r) for i, r in enumerate(records) if r["kind"] == "roster"]
    if not found:
        return None
    if len(found) > 1:
        raise RecordSchemaError(found[1][0], "second roster record (one roster per run)", kind="roster")
    i, rec = found[0]
    before = [r["kind"] for r in records[:i] if r["kind"] != "ledger_repair"]
    if not before or before[-1] != "run_start":
        raise RecordSchemaError(i, "roster must come right after run_start", kind="roster")
    p = rec["payload"]
    want = roster_fingerprint(p["sites"])
    if p["fingerprint"] != want:
        raise RosterError(i, f"roster fingerprint {p['fingerprint']} is not the SHA-256 of its sites ({want})",
                          kind="roster")
    if ledger_key_fingerprint is not None and p["server_key"] != ledger_key_fingerprint:
        raise RosterError(i, f"roster names server key {p['server_key']} but the ledger is signed by "
                             f"{ledger_key_fingerprint}", kind="roster")
    return Roster(i, p["fingerprint"], dict(p["sites"]), p["server_key"])
