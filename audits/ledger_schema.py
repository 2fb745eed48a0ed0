"""Ledger record schema (version 1): envelope and per-kind payloads, validated with jsonschema.

The JSON schema lives in ``audits/schemas/ledger-v1.schema.json`` (package data) so that auditors can use it
without Python. See that file for the exact envelope and the required fields of every record kind.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Any, Mapping

import jsonschema

SCHEMA_VERSION = 1
KNOWN_SCHEMA_VERSIONS = frozenset({1})
GENESIS_PREV_HASH = "0" * 64
SIGNING_CONTEXT = b"privfed-ledger/v1\n"   # domain separation prefix of every signed message
KINDS = ("run_start", "data_summary", "round_start", "secure_agg", "dp_event", "budget_check", "round_end",
         "abort", "resume", "run_end", "ledger_repair")
ENVELOPE_FIELDS = ("schema_version", "seq", "kind", "utc", "payload", "prev_hash", "signature")


@lru_cache(maxsize=None)
def load_schema(name: str) -> dict[str, Any]:
    """Load a JSON schema shipped in ``audits/schemas/`` (e.g. ``"ledger-v1"``, ``"report-v1"``)."""
    text = resources.files("audits").joinpath("schemas", f"{name}.schema.json").read_text("utf-8")
    return json.loads(text)


@lru_cache(maxsize=None)
def _validator(kind: str | None) -> jsonschema.protocols.Validator:
    full = load_schema("ledger-v1")
    if kind is None:
        schema = full
    else:
        schema = {"$schema": full["$schema"], "$ref": f"#/$defs/{kind}", "$defs": full["$defs"]}
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def _first_error(validator: jsonschema.protocols.Validator, value: Any) -> str | None:
    errors = sorted(validator.iter_errors(value), key=lambda e: list(e.absolute_path))
    if not errors:
        return None
    e = errors[0]
    where = "/".join(str(p) for p in e.absolute_path) or "(top level)"
    return f"{where}: {e.message}"


def envelope_error(record: Mapping[str, Any]) -> str | None:
    """None if the record envelope (schema_version 1) is valid, else a one-line reason."""
    return _first_error(_validator(None), record)


def payload_error(kind: str, payload: Mapping[str, Any]) -> str | None:
    """None if ``payload`` satisfies the schema of ``kind``, else a one-line reason."""
    if kind not in KINDS:
        return f"unknown record kind {kind!r} (known: {', '.join(KINDS)})"
    return _first_error(_validator(kind), payload)


def small_cell_error(payload: Mapping[str, Any]) -> str | None:
    """For a data_summary payload: a count in 1..k-1 must be published as the string "<k" (k = threshold)."""
    k = payload["suppression_threshold"]
    for cid, entry in payload["clients"].items():
        cells = [("n", entry["n"])] + [(f"label_counts/{lab}", c) for lab, c in entry["label_counts"].items()]
        for name, c in cells:
            if isinstance(c, str) and c != f"<{k}":
                return f"clients/{cid}/{name}: suppressed count must read '<{k}', got {c!r}"
            if isinstance(c, int) and 0 < c < k:
                return f"clients/{cid}/{name}: count {c} is below the suppression threshold {k}; write '<{k}'"
    return None
