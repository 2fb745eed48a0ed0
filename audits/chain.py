"""Hash-chain and signature verification of a signed log's bytes (no file system, no ε): shared by writer and
verifier, for the run ledger and for site receipts alike (a :class:`~audits.log_spec.LogSpec` says which).

For line i (0-based), in this order, the first failing check raises with ``record_index = i``:
UTF-8 + JSON + canonical form → envelope has a signature → seq == i → prev_hash == SHA-256(line i-1) (genesis:
64 zeros) → Ed25519 signature over SIGNING_CONTEXT + canonical(record without "signature") → schema_version known →
envelope schema → DP event type known (UnknownEventType) → payload schema of its kind. The integrity checks come
before the schema ones, so a tampered record is always reported as a LedgerIntegrityError (ReceiptIntegrityError for
a receipt), while a validly signed record of a newer schema version is reported as UnknownSchemaVersion.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from audits.canonical import canonical_bytes, parse_canonical, sha256_hex
from audits.errors import (LedgerIntegrityError, ReceiptIntegrityError, RecordSchemaError, UnknownEventType,
                           UnknownSchemaVersion, UnsignedReceiptRecordError, UnsignedRecordError)
from audits.keys import verify_signature
from audits.ledger_schema import LEDGER
from audits.log_spec import GENESIS_PREV_HASH, LogSpec


@dataclass(frozen=True)
class ChainState:
    """The verified prefix of a ledger."""

    records: tuple[dict[str, Any], ...]
    line_hashes: tuple[str, ...]     # SHA-256 hex of each line without its newline
    verified_length: int             # bytes of complete, verified lines
    torn_tail: bytes                 # bytes after the last newline (a crash mid-write), empty if none

    @property
    def head_hash(self) -> str:
        return self.line_hashes[-1] if self.line_hashes else GENESIS_PREV_HASH


def signed_message(record: dict[str, Any], spec: LogSpec = LEDGER) -> bytes:
    """The bytes a record's signature covers: the log's signing context + canonical(record without "signature")."""
    body = {k: v for k, v in record.items() if k != "signature"}
    return spec.signing_context + canonical_bytes(body)


def _kind(record: Any) -> str | None:
    k = record.get("kind") if isinstance(record, dict) else None
    return k if isinstance(k, str) else None


def verify_chain(data: bytes, public_key: Ed25519PublicKey, *, allow_torn_tail: bool = False,
                 spec: LogSpec = LEDGER, source: str | None = None) -> ChainState:
    """Verify every complete line of ``data`` (the log's bytes). A final line without '\\n' is a torn write:
    an error unless ``allow_torn_tail`` (the writer's repair path), in which case it is returned, unparsed.
    ``source`` names the log in errors (default: ``spec.name``)."""
    src = source or spec.name
    integrity = LedgerIntegrityError if spec.name == "ledger" else ReceiptIntegrityError
    unsigned = UnsignedRecordError if spec.name == "ledger" else UnsignedReceiptRecordError
    key_name = "keys/ledger.pub" if spec.name == "ledger" else f"the {spec.name}'s public key"

    def fail(cls, i, reason, kind=None):
        return cls(i, reason, kind=kind, source=src)

    lines = data.split(b"\n")
    tail = lines.pop()  # b"" when data ends with a newline
    if tail and not allow_torn_tail:
        raise fail(integrity, len(lines), f"torn final line ({len(tail)} bytes without a newline): the {spec.name} "
                                          "was truncated mid-write; reopen it with its writer to repair")
    records: list[dict[str, Any]] = []
    hashes: list[str] = []
    prev = GENESIS_PREV_HASH
    for i, line in enumerate(lines):
        try:
            rec = parse_canonical(line)
        except ValueError as e:
            raise fail(integrity, i, f"unreadable record: {e}") from None
        if not isinstance(rec, dict):
            raise fail(integrity, i, "record is not a JSON object")
        kind = _kind(rec)
        if "signature" not in rec:
            raise fail(unsigned, i, "record has no signature", kind)
        sig = rec["signature"]
        if not (isinstance(sig, str) and len(sig) == 128 and all(c in "0123456789abcdef" for c in sig)):
            raise fail(integrity, i, "signature is not 128 lowercase hex characters", kind)
        if rec.get("seq") != i or type(rec.get("seq")) is not int:
            raise fail(integrity, i, f"seq is {rec.get('seq')!r}, expected {i} (record deleted, inserted or "
                                     "reordered)", kind)
        if rec.get("prev_hash") != prev:
            raise fail(integrity, i, "prev_hash does not match the SHA-256 of the previous record (chain "
                                     "broken: a record before it was changed, deleted or reordered)", kind)
        if not verify_signature(public_key, bytes.fromhex(sig), signed_message(rec, spec)):
            raise fail(integrity, i, f"Ed25519 signature does not verify against {key_name}", kind)
        version = rec.get("schema_version")
        if version not in spec.known_schema_versions or type(version) is not int:
            raise fail(UnknownSchemaVersion, i, f"schema_version {version!r} is not known to this verifier (known: "
                                                f"{sorted(spec.known_schema_versions)})", kind)
        err = spec.envelope_error(rec)
        if err:
            raise fail(RecordSchemaError, i, f"envelope: {err}", kind)
        err = spec.event_type_error(rec["kind"], rec["payload"])
        if err:
            raise fail(UnknownEventType, i, err, kind)
        err = spec.payload_error(rec["kind"], rec["payload"])
        if err:
            raise fail(RecordSchemaError, i, f"payload: {err}", kind)
        prev = sha256_hex(line)
        records.append(rec)
        hashes.append(prev)
    return ChainState(tuple(records), tuple(hashes), len(data) - len(tail), tail)
