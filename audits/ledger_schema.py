"""Ledger record schema (version 1): envelope and per-kind payloads, validated with jsonschema.

The JSON schema lives in ``audits/schemas/ledger-v1.schema.json`` (package data) so that auditors can use it
without Python. See that file for the exact envelope and the required fields of every record kind.
"""

from __future__ import annotations

from typing import Any, Mapping

from audits.log_spec import EVENT_TYPES, GENESIS_PREV_HASH, LogSpec, load_schema

SCHEMA_VERSION = 1
KNOWN_SCHEMA_VERSIONS = frozenset({1})
SIGNING_CONTEXT = b"privfed-ledger/v1\n"   # domain separation prefix of every signed message
KINDS = ("run_start", "roster", "data_summary", "round_start", "site_event", "secure_agg", "he_decryption", "dp_event",
         "budget_check", "round_end", "abort", "resume", "run_end", "ledger_repair", "audit_spend")
#: written after run_end, and only then: what an audit of the finished run spent on the sites' data
AFTER_END_KINDS = ("audit_spend",)
ENVELOPE_FIELDS = ("schema_version", "seq", "kind", "utc", "payload", "prev_hash", "signature")

LEDGER = LogSpec(name="ledger", filename="ledger.jsonl", signing_context=SIGNING_CONTEXT, schema_name="ledger-v1",
                 kinds=KINDS, start_kind="run_start", end_kind="run_end", resume_kind="resume",
                 repair_kind="ledger_repair", event_kinds=("dp_event",), after_end_kinds=AFTER_END_KINDS,
                 schema_version=SCHEMA_VERSION,
                 known_schema_versions=KNOWN_SCHEMA_VERSIONS)

__all__ = ["SCHEMA_VERSION", "KNOWN_SCHEMA_VERSIONS", "GENESIS_PREV_HASH", "SIGNING_CONTEXT", "KINDS",
           "AFTER_END_KINDS", "ENVELOPE_FIELDS", "EVENT_TYPES", "LEDGER", "load_schema", "envelope_error",
           "payload_error", "small_cell_error"]


def envelope_error(record: Mapping[str, Any]) -> str | None:
    """None if the record envelope (schema_version 1) is valid, else a one-line reason."""
    return LEDGER.envelope_error(record)


def payload_error(kind: str, payload: Mapping[str, Any]) -> str | None:
    """None if ``payload`` satisfies the schema of ``kind``, else a one-line reason."""
    return LEDGER.payload_error(kind, payload)


def small_cell_error(payload: Mapping[str, Any]) -> str | None:
    """For a data_summary payload: a count in 1..k-1 must be published as the string "<k" (k = threshold), or as
    "suppressed" (a small cell or its complement, ``suppression: complementary``)."""
    k = payload["suppression_threshold"]
    for cid, entry in payload["clients"].items():
        cells = [("n", entry["n"])] + [(f"label_counts/{lab}", c) for lab, c in entry["label_counts"].items()]
        for name, c in cells:
            if isinstance(c, str) and c != f"<{k}" and not (c == "suppressed" and name != "n"):
                return f"clients/{cid}/{name}: suppressed count must read '<{k}', got {c!r}"
            if isinstance(c, int) and 0 < c < k:
                return f"clients/{cid}/{name}: count {c} is below the suppression threshold {k}; write '<{k}'"
    return None
