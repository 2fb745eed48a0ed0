"""Append-only, hash-chained, Ed25519-signed privacy ledger: ``RUN_DIR/ledger.jsonl``.

Each line is one record in canonical JSON (see :mod:`audits.canonical`) with the envelope
``{schema_version, seq, kind, utc, payload, prev_hash, signature}`` (schema: ``audits/schemas/ledger-v1.schema.json``).
``prev_hash`` is the SHA-256 of the previous line's bytes (without the newline; 64 zeros for the first record) and
``signature`` is Ed25519 over ``b"privfed-ledger/v1\\n" + canonical(record without "signature")``.

Usage (privfed)::

    with LedgerWriter.open(run_dir, create=True) as ledger:        # a new run: generates keys/ledger.{key,pub}
        ledger.append("run_start", {...})
    with LedgerWriter.open(run_dir, create=False) as ledger:       # --resume: verifies the chain, repairs a torn tail
        ledger.append("resume", {"from_round": 7})

Every append validates the payload against the schema of its kind, refuses denylisted keys
(:mod:`audits.payload_guard`) and unsuppressed small counts, then writes one line and fsyncs it. A crash mid-write
leaves a torn final line; the next ``open(create=False)`` truncates it and appends a ``ledger_repair`` record with
the size and SHA-256 of the discarded bytes. Any other damage makes ``open`` raise: nothing is silently corrected.
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
from audits.errors import (IncompleteRunDirectory, LedgerBusyError, LedgerKeyError, MissingRunDirectory,
                           RecordSchemaError, SmallCellError)
from audits.keys import (PRIVATE_KEY_RELPATH, PUBLIC_KEY_RELPATH, generate_private_key, key_fingerprint,
                         load_private_key, load_public_key, raw_public_bytes, write_public_key)
from audits.ledger_schema import SCHEMA_VERSION, payload_error, small_cell_error
from audits.payload_guard import check_payload

try:
    import fcntl
except ImportError:  # pragma: no cover - non-POSIX
    fcntl = None  # type: ignore[assignment]

LEDGER_FILENAME = "ledger.jsonl"


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LedgerWriter:
    """Single writer of a run's ledger. Use :meth:`open`; not thread-safe; one writer per ledger (flock)."""

    def __init__(self, *, _fd: int, _path: Path, _key: Ed25519PrivateKey, _state: ChainState) -> None:
        self._fd = _fd
        self.path = _path
        self._key = _key
        self._seq = len(_state.records)
        self._head = _state.head_hash
        kinds = [r["kind"] for r in _state.records]
        self._started = "run_start" in kinds
        self._ended = "run_end" in kinds
        self.repaired: dict[str, Any] | None = None

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, run_dir: str | Path, *, create: bool, key_path: str | Path | None = None) -> "LedgerWriter":
        """Open ``RUN_DIR/ledger.jsonl`` for appending.

        create=True: start a new ledger; refuses if ledger.jsonl exists. Creates RUN_DIR if needed. The signing key
        is loaded from ``key_path`` if that file exists, else generated there (default ``RUN_DIR/keys/ledger.key``,
        mode 0600); its public key is written to ``RUN_DIR/keys/ledger.pub``.
        create=False: resume an existing ledger; verifies the whole chain against keys/ledger.pub, checks that the
        private key (``key_path`` or the default) matches it, and repairs a torn final line (see module docstring).
        """
        run_dir = Path(run_dir)
        path = run_dir / LEDGER_FILENAME
        pub_path = run_dir / PUBLIC_KEY_RELPATH
        kpath = Path(key_path) if key_path is not None else run_dir / PRIVATE_KEY_RELPATH
        if create:
            if path.exists():
                raise FileExistsError(f"{path}: a ledger already exists; open it with create=False to resume")
            run_dir.mkdir(parents=True, exist_ok=True)
            key = load_private_key(kpath) if kpath.exists() else generate_private_key(kpath)
            if pub_path.exists() and raw_public_bytes(load_public_key(pub_path)) != raw_public_bytes(key.public_key()):
                raise LedgerKeyError(f"{pub_path}: exists and does not match the signing key {kpath}")
            write_public_key(pub_path, key.public_key())
            fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o644)
            _fsync_dir(run_dir)
        else:
            if not run_dir.is_dir():
                raise MissingRunDirectory(run_dir)
            if not path.is_file():
                raise IncompleteRunDirectory(path, "no ledger to resume (use create=True for a new run)")
            pub = load_public_key(pub_path)
            key = load_private_key(kpath)
            if raw_public_bytes(key.public_key()) != raw_public_bytes(pub):
                raise LedgerKeyError(f"{kpath}: private key does not match {pub_path}")
            fd = os.open(path, os.O_RDWR | os.O_APPEND)
        try:
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise LedgerBusyError(f"{path}: another writer holds the ledger") from None
            data = b"" if create else _read_all(fd)
            state = verify_chain(data, key.public_key(), allow_torn_tail=True)
            writer = cls(_fd=fd, _path=path, _key=key, _state=state)
            if state.torn_tail:
                os.ftruncate(fd, state.verified_length)
                os.fsync(fd)
                writer.repaired = writer.append("ledger_repair", {
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
        """SHA-256 (hex) of the last record's line: publish or pin it to detect later truncation of the ledger."""
        return self._head

    @property
    def next_seq(self) -> int:
        return self._seq

    @property
    def key_fingerprint(self) -> str:
        return key_fingerprint(self._key.public_key())

    def append(self, kind: str, payload: Mapping[str, Any]) -> dict[str, Any]:
        """Validate, sign, append and fsync one record; return it (as written, parsed back from canonical JSON).

        Raises ForbiddenPayloadError (denylisted key), RecordSchemaError (schema or order), SmallCellError
        (unsuppressed count below k), TypeError/ValueError (not JSON-serializable, NaN/inf).
        """
        if self._fd < 0:
            raise ValueError("ledger writer is closed")
        if not isinstance(payload, Mapping):
            raise TypeError(f"payload must be a mapping, got {type(payload).__name__}")
        payload = dict(payload)
        check_payload(kind, payload)
        payload = json.loads(canonical_bytes(payload))  # plain JSON types (numpy scalars converted), no NaN
        err = payload_error(kind, payload)
        if err:
            raise RecordSchemaError(self._seq, f"payload: {err}", kind=kind)
        if kind == "data_summary":
            err = small_cell_error(payload)
            if err:
                raise SmallCellError(self._seq, err, kind=kind)
        if self._ended:
            raise RecordSchemaError(self._seq, "the run has ended (run_end recorded); nothing may follow", kind=kind)
        if kind == "run_start" and self._started:
            raise RecordSchemaError(self._seq, "run_start already recorded; use 'resume'", kind=kind)
        if not self._started and kind not in ("run_start", "ledger_repair"):
            raise RecordSchemaError(self._seq, "the first record must be run_start", kind=kind)
        record: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "seq": self._seq, "kind": kind,
                                  "utc": utc_now(), "payload": payload, "prev_hash": self._head}
        record["signature"] = self._key.sign(signed_message(record)).hex()
        line = canonical_bytes(record)
        buf = memoryview(line + b"\n")
        while buf:
            n = os.write(self._fd, buf)
            buf = buf[n:]
        os.fsync(self._fd)
        self._seq += 1
        self._head = sha256_hex(line)
        self._started |= kind == "run_start"
        self._ended |= kind == "run_end"
        return record

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # releases the flock
            self._fd = -1

    def __enter__(self) -> "LedgerWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass


def _read_all(fd: int) -> bytes:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while True:
        b = os.read(fd, 1 << 20)
        if not b:
            return b"".join(chunks)
        chunks.append(b)
