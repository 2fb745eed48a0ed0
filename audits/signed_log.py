"""The single writer of a signed, hash-chained log (the run ledger, a site receipt): open, verify, repair, append.

Each line is one record in canonical JSON (:mod:`audits.canonical`) with the envelope
``{schema_version, seq, kind, utc, payload, prev_hash, signature}``. ``prev_hash`` is the SHA-256 of the previous
line's bytes (64 zeros for the first record); ``signature`` is Ed25519 over the log's signing context +
canonical(record without "signature") (:func:`audits.chain.signed_message`).

Discipline (the same for every log): one writer per file (``flock``); opening an existing log verifies its whole
chain under the writer's key; a torn final line (a crash mid-write) is truncated and a signed repair record with
the size and SHA-256 of the discarded bytes is appended; any other damage makes ``open`` raise (nothing is silently
corrected); every append validates the payload (denylisted keys, DP event type, schema of its kind, record order),
writes one line and fsyncs it.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audits.canonical import canonical_bytes, sha256_hex
from audits.chain import ChainState, signed_message, verify_chain
from audits.errors import LedgerBusyError, RecordSchemaError, UnknownEventType
from audits.keys import key_fingerprint
from audits.log_spec import LogSpec
from audits.payload_guard import check_payload

try:
    import fcntl
except ImportError:  # pragma: no cover - non-POSIX
    fcntl = None  # type: ignore[assignment]


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_all(fd: int) -> bytes:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while True:
        b = os.read(fd, 1 << 20)
        if not b:
            return b"".join(chunks)
        chunks.append(b)


class SignedLogWriter:
    """Appends to one signed log. Subclasses set ``SPEC`` and provide an ``open`` classmethod that finds the file
    and key and calls :meth:`_open_path`. Not thread-safe; one writer per file (flock)."""

    SPEC: LogSpec

    def __init__(self, *, _fd: int, _path: Path, _key: Ed25519PrivateKey, _state: ChainState) -> None:
        self._fd = _fd
        self.path = _path
        self._key = _key
        self._seq = len(_state.records)
        self._head = _state.head_hash
        kinds = [r["kind"] for r in _state.records]
        self._started = self.SPEC.start_kind in kinds
        self._ended = self.SPEC.end_kind is not None and self.SPEC.end_kind in kinds
        self._records = _state.records
        self.repaired: dict[str, Any] | None = None

    @classmethod
    def _open_path(cls, path: Path, key: Ed25519PrivateKey, *, create: bool):
        """Open ``path`` (created exclusively when ``create``), lock it, verify it under ``key``, repair a torn tail."""
        spec = cls.SPEC
        if create:
            fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o644)
            fsync_dir(path.parent)
        else:
            fd = os.open(path, os.O_RDWR | os.O_APPEND)
        try:
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise LedgerBusyError(f"{path}: another writer holds the {spec.name}") from None
            data = b"" if create else read_all(fd)
            state = verify_chain(data, key.public_key(), allow_torn_tail=True, spec=spec)
            writer = cls(_fd=fd, _path=path, _key=key, _state=state)
            if state.torn_tail:
                os.ftruncate(fd, state.verified_length)
                os.fsync(fd)
                writer.repaired = writer.append(spec.repair_kind, {
                    "truncated_bytes": len(state.torn_tail),
                    "truncated_sha256": sha256_hex(state.torn_tail),
                    "reason": "torn final line (incomplete write, e.g. a crash) truncated on reopen",
                })
            return writer
        except BaseException:
            os.close(fd)
            raise

    # ------------------------------------------------------------------ writing
    @property
    def head_hash(self) -> str:
        """SHA-256 (hex) of the last record's line: publish or pin it to detect later truncation."""
        return self._head

    @property
    def next_seq(self) -> int:
        return self._seq

    @property
    def key_fingerprint(self) -> str:
        return key_fingerprint(self._key.public_key())

    @property
    def records(self) -> tuple[dict[str, Any], ...]:
        """The records verified when the log was opened (not those appended since)."""
        return self._records

    def _check_extra(self, kind: str, payload: dict[str, Any]) -> None:
        """Log-specific checks on a validated payload (raise a named error)."""

    def append(self, kind: str, payload: Mapping[str, Any]) -> dict[str, Any]:
        """Validate, sign, append and fsync one record; return it (as written, parsed back from canonical JSON).

        Raises ForbiddenPayloadError (denylisted key), UnknownEventType (DP event without a known type),
        RecordSchemaError (schema or order), SmallCellError (ledger: unsuppressed count below k),
        TypeError/ValueError (not JSON-serializable, NaN/inf).
        """
        spec = self.SPEC
        if self._fd < 0:
            raise ValueError(f"{spec.name} writer is closed")
        if not isinstance(payload, Mapping):
            raise TypeError(f"payload must be a mapping, got {type(payload).__name__}")
        payload = dict(payload)
        check_payload(kind, payload)
        payload = json.loads(canonical_bytes(payload))  # plain JSON types (numpy scalars converted), no NaN
        src = spec.name if spec.name == "ledger" else f"{spec.name} {self.path}"
        err = spec.event_type_error(kind, payload)
        if err:
            raise UnknownEventType(self._seq, err, kind=kind, source=src)
        err = spec.payload_error(kind, payload)
        if err:
            raise RecordSchemaError(self._seq, f"payload: {err}", kind=kind, source=src)
        self._check_extra(kind, payload)
        if self._ended and kind not in spec.after_end_kinds + (spec.repair_kind,):
            after = f" but {', '.join(spec.after_end_kinds)}" if spec.after_end_kinds else ""
            raise RecordSchemaError(self._seq, f"the {spec.name} has ended ({spec.end_kind} recorded); nothing{after} "
                                               "may follow", kind=kind, source=src)
        if kind in spec.after_end_kinds and not self._ended:
            raise RecordSchemaError(self._seq, f"{kind} may only follow {spec.end_kind} (a finished run)", kind=kind,
                                    source=src)
        if kind == spec.start_kind and self._started:
            raise RecordSchemaError(self._seq, f"{spec.start_kind} already recorded; use '{spec.resume_kind}'",
                                    kind=kind, source=src)
        if not self._started and kind not in (spec.start_kind, spec.repair_kind):
            raise RecordSchemaError(self._seq, f"the first record must be {spec.start_kind}", kind=kind, source=src)
        record: dict[str, Any] = {"schema_version": spec.schema_version, "seq": self._seq, "kind": kind,
                                  "utc": utc_now(), "payload": payload, "prev_hash": self._head}
        record["signature"] = self._key.sign(signed_message(record, spec)).hex()
        line = canonical_bytes(record)
        buf = memoryview(line + b"\n")
        while buf:
            n = os.write(self._fd, buf)
            buf = buf[n:]
        os.fsync(self._fd)
        self._seq += 1
        self._head = sha256_hex(line)
        self._started |= kind == spec.start_kind
        self._ended |= spec.end_kind is not None and kind == spec.end_kind
        self._after_append(kind, payload)
        return record

    def _after_append(self, kind: str, payload: dict[str, Any]) -> None:
        """Hook for log-specific state after a record was written."""

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # releases the flock
            self._fd = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass
