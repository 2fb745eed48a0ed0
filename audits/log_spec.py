"""What distinguishes one signed, hash-chained log from another: the run ledger and a site's receipt.

Both share the envelope ``{schema_version, seq, kind, utc, payload, prev_hash, signature}``, canonical JSON, the
hash chain and Ed25519 signatures (:mod:`audits.chain`, :mod:`audits.signed_log`). A :class:`LogSpec` names what
differs: the file name, the signing context (domain separation: a ledger signature never verifies as a receipt
signature and vice versa), the JSON schema in ``audits/schemas/`` and its record kinds, and the record order rules.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any, Mapping

import jsonschema

GENESIS_PREV_HASH = "0" * 64
# DP event types this verifier can account (see audits.accounting)
EVENT_TYPES = ("gaussian", "distributed_discrete_gaussian")


@lru_cache(maxsize=None)
def load_schema(name: str) -> dict[str, Any]:
    """Load a JSON schema shipped in ``audits/schemas/`` (e.g. ``"ledger-v1"``, ``"receipt-v1"``, ``"report-v1"``)."""
    text = resources.files("audits").joinpath("schemas", f"{name}.schema.json").read_text("utf-8")
    return json.loads(text)


@lru_cache(maxsize=None)
def _validator(schema_name: str, kind: str | None) -> jsonschema.protocols.Validator:
    full = load_schema(schema_name)
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


@dataclass(frozen=True)
class LogSpec:
    """One kind of signed log. ``start_kind`` must be the first record (a repair record may precede it) and occur
    once; nothing may follow ``end_kind`` (None: the log has no end record) but the kinds in ``after_end_kinds``
    (and a repair record); those may only come after it."""

    name: str                       # "ledger" | "receipt"
    filename: str                   # "ledger.jsonl" | "receipt.jsonl"
    signing_context: bytes          # prefix of every signed message
    schema_name: str                # audits/schemas/<schema_name>.schema.json
    kinds: tuple[str, ...]
    start_kind: str
    end_kind: str | None
    resume_kind: str
    repair_kind: str
    event_kinds: tuple[str, ...]    # kinds whose payload carries a typed DP "event"
    after_end_kinds: tuple[str, ...] = ()   # kinds written after end_kind (and only then): e.g. an audit's spending
    schema_version: int = 1
    known_schema_versions: frozenset[int] = frozenset({1})

    def envelope_error(self, record: Mapping[str, Any]) -> str | None:
        """None if the record envelope is valid, else a one-line reason."""
        return _first_error(_validator(self.schema_name, None), record)

    def payload_error(self, kind: str, payload: Mapping[str, Any]) -> str | None:
        """None if ``payload`` satisfies the schema of ``kind``, else a one-line reason."""
        if kind not in self.kinds:
            return f"unknown record kind {kind!r} (known: {', '.join(self.kinds)})"
        return _first_error(_validator(self.schema_name, kind), payload)

    def event_type_error(self, kind: str, payload: Any) -> str | None:
        """For a kind carrying a DP event: a reason when ``event.type`` is missing or not one of EVENT_TYPES.

        Checked before the payload schema so that an unknown type is reported as such (UnknownEventType)."""
        if kind not in self.event_kinds or not isinstance(payload, Mapping):
            return None
        event = payload.get("event")
        if not isinstance(event, Mapping):
            return None  # the payload schema reports it
        t = event.get("type")
        if t not in EVENT_TYPES:
            what = "has no 'type'" if "type" not in event else f"has type {t!r}"
            return (f"event {what}; this verifier accounts only {', '.join(EVENT_TYPES)} events "
                    "(Poisson-subsampled Gaussian; distributed discrete Gaussian)")
        return None
