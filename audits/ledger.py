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
(:mod:`audits.payload_guard`), DP events without a known ``type`` and unsuppressed small counts, then writes one line
and fsyncs it. A ``roster`` record may only come right after ``run_start``, once. Nothing follows ``run_end`` but
``audit_spend`` records (what ``privfed audit --empirical`` spent on the finished run, :mod:`audits.audit_spend`),
which only come after it. A crash mid-write leaves a torn
final line; the next ``open(create=False)`` truncates it and appends a ``ledger_repair`` record with the size and
SHA-256 of the discarded bytes. Any other damage makes ``open`` raise: nothing is silently corrected. The writing
discipline is shared with site receipts (:mod:`audits.signed_log`, :mod:`audits.receipt`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audits.chain import ChainState
from audits.errors import IncompleteRunDirectory, LedgerKeyError, MissingRunDirectory, RecordSchemaError, SmallCellError
from audits.keys import (PRIVATE_KEY_RELPATH, PUBLIC_KEY_RELPATH, generate_private_key, load_private_key,
                         load_public_key, raw_public_bytes, write_public_key)
from audits.ledger_schema import LEDGER, small_cell_error
from audits.signed_log import SignedLogWriter, utc_now

LEDGER_FILENAME = LEDGER.filename

__all__ = ["LEDGER_FILENAME", "LedgerWriter", "utc_now"]


class LedgerWriter(SignedLogWriter):
    """Single writer of a run's ledger. Use :meth:`open`; not thread-safe; one writer per ledger (flock)."""

    SPEC = LEDGER

    def __init__(self, *, _fd: int, _path: Path, _key: Ed25519PrivateKey, _state: ChainState) -> None:
        super().__init__(_fd=_fd, _path=_path, _key=_key, _state=_state)
        kinds = [r["kind"] for r in _state.records if r["kind"] != LEDGER.repair_kind]
        self._last_kind = kinds[-1] if kinds else None
        self._has_roster = "roster" in kinds

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
        else:
            if not run_dir.is_dir():
                raise MissingRunDirectory(run_dir)
            if not path.is_file():
                raise IncompleteRunDirectory(path, "no ledger to resume (use create=True for a new run)")
            pub = load_public_key(pub_path)
            key = load_private_key(kpath)
            if raw_public_bytes(key.public_key()) != raw_public_bytes(pub):
                raise LedgerKeyError(f"{kpath}: private key does not match {pub_path}")
        return cls._open_path(path, key, create=create)

    def _check_extra(self, kind: str, payload: dict[str, Any]) -> None:
        if kind == "data_summary":
            err = small_cell_error(payload)
            if err:
                raise SmallCellError(self._seq, err, kind=kind)
        if kind == "roster":
            if self._has_roster:
                raise RecordSchemaError(self._seq, "roster already recorded (one roster per run)", kind=kind)
            if self._last_kind != "run_start":
                raise RecordSchemaError(self._seq, "roster must come right after run_start", kind=kind)

    def _after_append(self, kind: str, payload: dict[str, Any]) -> None:
        if kind != LEDGER.repair_kind:
            self._last_kind = kind
        self._has_roster |= kind == "roster"
