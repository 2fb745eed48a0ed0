"""A site's own privacy receipt: a signed, hash-chained record of what the SITE spent, under the site's own key.

File: ``RUN_DIR/sites/<id>/receipt.jsonl`` (in-process engine) or ``SITE_DIR/receipt.jsonl`` (a standalone site).
Same envelope, canonical JSON, hash chain, fsync, lock and torn-tail repair as the ledger (:mod:`audits.signed_log`);
the signature is Ed25519 by the site's long-term identity key (``SITE_DIR/identity.key``; public half
``SITE_DIR/identity.pub``) over ``b"privfed-receipt/v1\\n"`` + canonical(record without "signature"), so a ledger
signature never verifies as a receipt signature. Schema: ``audits/schemas/receipt-v1.schema.json``. Kinds:

``receipt_start``  ``{"site", "run_id", "roster_fingerprint", "public_key", "policy"}`` (first record, once)
``dp_spend``       ``{"round", "unit", "event": {"type": "gaussian", ...}, "delta", "accountant", "epsilon"}``
``refusal``        ``{"round", "error", "reason"}`` (the site refused instructions that break its pinned policy)
``receipt_resume`` ``{"from_round"}``;  ``receipt_repair`` (written by the writer after a torn write)

Usage (privfed, inside the site)::

    with ReceiptWriter.open(site_dir, create=True, key=identity_key) as rc:
        rc.append("receipt_start", {...})
        rc.append("dp_spend", {...})

Verification (:func:`verify_receipt`) raises a named error on any changed byte, a wrong key or reordered records,
and recomputes the site's ε independently (:mod:`audits.accounting`); :func:`audits.cross_check.cross_check`
compares a verified receipt with the server's ledger.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from audits.accounting import IndependentAccountant, parse_event, within_tolerance
from audits.chain import ChainState, verify_chain
from audits.errors import (EpsilonMismatchError, IncompleteRunDirectory, LedgerKeyError, MissingRunDirectory,
                           ReceiptIntegrityError, ReceiptMismatch, RecordSchemaError)
from audits.keys import (SITE_PRIVATE_KEY_FILENAME, SITE_PUBLIC_KEY_FILENAME, key_fingerprint, load_private_key,
                         load_public_key, public_key_from_hex, public_key_hex, raw_public_bytes, write_public_key)
from audits.log_spec import LogSpec
from audits.signed_log import SignedLogWriter

RECEIPT_FILENAME = "receipt.jsonl"
RECEIPT_SIGNING_CONTEXT = b"privfed-receipt/v1\n"
RECEIPT_KINDS = ("receipt_start", "dp_spend", "refusal", "receipt_resume", "receipt_repair")
RECEIPT = LogSpec(name="receipt", filename=RECEIPT_FILENAME, signing_context=RECEIPT_SIGNING_CONTEXT,
                  schema_name="receipt-v1", kinds=RECEIPT_KINDS, start_kind="receipt_start", end_kind=None,
                  resume_kind="receipt_resume", repair_kind="receipt_repair", event_kinds=("dp_spend",))
DEFAULT_TOLERANCE = 0.01

__all__ = ["RECEIPT", "RECEIPT_FILENAME", "ReceiptSpend", "ReceiptWriter", "VerifiedReceipt", "load_site_private_key",
           "load_site_public_key", "read_receipt", "verify_receipt"]


def load_site_private_key(site_dir: str | Path) -> Ed25519PrivateKey:
    """``SITE_DIR/identity.key`` (PKCS#8 PEM or raw; mode 0600). LedgerKeyError when missing or unsafe."""
    return load_private_key(Path(site_dir) / SITE_PRIVATE_KEY_FILENAME)


def load_site_public_key(site_dir: str | Path) -> Ed25519PublicKey:
    """``SITE_DIR/identity.pub`` (PEM or 64 hex characters)."""
    return load_public_key(Path(site_dir) / SITE_PUBLIC_KEY_FILENAME)


class ReceiptWriter(SignedLogWriter):
    """Single writer of one site's receipt. Use :meth:`open`; not thread-safe; one writer per receipt (flock)."""

    SPEC = RECEIPT

    @classmethod
    def open(cls, site_dir: str | Path, *, create: bool, key: Ed25519PrivateKey) -> "ReceiptWriter":
        """Open ``SITE_DIR/receipt.jsonl`` for appending, signing with the site's identity ``key``.

        create=True: start a new receipt (refuses if one exists; creates SITE_DIR). create=False: resume; verifies
        the whole chain under ``key`` and repairs a torn final line with a signed ``receipt_repair`` record.
        If ``SITE_DIR/identity.pub`` exists it must be ``key``'s public half (LedgerKeyError); if it is missing,
        it is written.
        """
        if not isinstance(key, Ed25519PrivateKey):
            raise TypeError(f"key must be an Ed25519PrivateKey, got {type(key).__name__}")
        site_dir = Path(site_dir)
        path = site_dir / RECEIPT_FILENAME
        pub_path = site_dir / SITE_PUBLIC_KEY_FILENAME
        if create:
            if path.exists():
                raise FileExistsError(f"{path}: a receipt already exists; open it with create=False to resume")
            site_dir.mkdir(parents=True, exist_ok=True)
        else:
            if not site_dir.is_dir():
                raise MissingRunDirectory(site_dir)
            if not path.is_file():
                raise IncompleteRunDirectory(path, "no receipt to resume (use create=True for a new one)")
        if pub_path.exists():
            if raw_public_bytes(load_public_key(pub_path)) != raw_public_bytes(key.public_key()):
                raise LedgerKeyError(f"{pub_path}: does not match the site key the receipt is signed with")
        else:
            write_public_key(pub_path, key.public_key())
        return cls._open_path(path, key, create=create)

    def _check_extra(self, kind: str, payload: dict[str, Any]) -> None:
        if kind == "receipt_start" and payload["public_key"] != public_key_hex(self._key.public_key()):
            raise RecordSchemaError(self._seq, "receipt_start.public_key is not the key that signs this receipt",
                                    kind=kind, source=f"receipt {self.path}")


@dataclass(frozen=True)
class ReceiptSpend:
    record_index: int
    round: int
    unit: str
    event: dict[str, Any]          # the typed event, as recorded
    delta: float
    accountant: str
    reported: float                # ε the site recorded
    recomputed: float              # ε recomputed by audits.accounting


@dataclass(frozen=True)
class VerifiedReceipt:
    """A receipt that verified (chain, signatures under ``public_key``, schema, order, ε)."""

    site: str
    path: Path
    public_key: str                # raw hex, == receipt_start.public_key
    key_fingerprint: str
    run_id: str
    roster_fingerprint: str
    policy: dict[str, Any]
    head_hash: str
    spends: tuple[ReceiptSpend, ...]
    refusals: tuple[tuple[int, dict[str, Any]], ...]     # (record index, payload)
    final_epsilon: float | None    # recomputed, at final_delta; None when nothing was spent
    final_delta: float | None
    repairs: tuple[int, ...]
    records: tuple[dict[str, Any], ...] = field(repr=False, default=())

    def events_by_round(self) -> dict[int, list[tuple[int, dict[str, Any], str]]]:
        out: dict[int, list[tuple[int, dict[str, Any], str]]] = defaultdict(list)
        for s in self.spends:
            out[s.round].append((s.record_index, s.event, s.unit))
        return dict(out)


def _as_public_key(public_key: Ed25519PublicKey | str | bytes) -> Ed25519PublicKey:
    if isinstance(public_key, Ed25519PublicKey):
        return public_key
    if isinstance(public_key, str):
        return public_key_from_hex(public_key.lower())
    if isinstance(public_key, (bytes, bytearray)) and len(public_key) == 32:
        return Ed25519PublicKey.from_public_bytes(bytes(public_key))
    raise TypeError("public_key must be an Ed25519PublicKey, 64 hex characters or 32 raw bytes")


def read_receipt(site_dir: str | Path, *, public_key: Ed25519PublicKey | str | bytes) -> tuple[dict[str, Any], ...]:
    """The site's own view on resume: the receipt's complete records, verified (chain, signatures under
    ``public_key``, schema) — a torn final line is tolerated (not returned): ``ReceiptWriter.open(create=False)``
    repairs it. No ε or order checks (use :func:`verify_receipt` for an audit). Raises ReceiptIntegrityError etc."""
    site_dir = Path(site_dir)
    path = site_dir / RECEIPT_FILENAME
    if not path.is_file():
        raise IncompleteRunDirectory(path, "receipt.jsonl is missing")
    return verify_chain(path.read_bytes(), _as_public_key(public_key), allow_torn_tail=True, spec=RECEIPT,
                        source=f"receipt {path}").records


def verify_receipt(site_dir: str | Path, *, public_key: Ed25519PublicKey | str | bytes,
                   expected_site: str | None = None, tolerance: float = DEFAULT_TOLERANCE) -> VerifiedReceipt:
    """Verify ``SITE_DIR/receipt.jsonl`` under the site's ``public_key`` (pin it: from the roster or the site).

    Raises ReceiptIntegrityError (a changed byte, another key, reordered/deleted records, torn tail),
    UnknownEventType / RecordSchemaError (schema, order: receipt_start first and once; accountant changed),
    EpsilonMismatchError (a recorded ε differs from the independent recomputation beyond the tolerance of
    :func:`audits.accounting.within_tolerance`), ReceiptMismatch (receipt_start names another site than
    ``expected_site``), IncompleteRunDirectory (no receipt).
    """
    if not 0 < tolerance < 1:
        raise ValueError("tolerance must be in (0, 1)")
    site_dir = Path(site_dir)
    pub = _as_public_key(public_key)
    path = site_dir / RECEIPT_FILENAME
    if not path.is_file():
        raise IncompleteRunDirectory(path, "receipt.jsonl is missing")
    data = path.read_bytes()
    if not data:
        raise IncompleteRunDirectory(path, "receipt.jsonl is empty")
    src = f"receipt of site {expected_site if expected_site is not None else site_dir.name}"
    state: ChainState = verify_chain(data, pub, spec=RECEIPT, source=src)
    records = state.records
    starts = [i for i, r in enumerate(records) if r["kind"] == "receipt_start"]
    first = next((i for i, r in enumerate(records) if r["kind"] != "receipt_repair"), None)
    if not starts or first != starts[0]:
        raise RecordSchemaError(first if first is not None else 0, "the first record must be receipt_start",
                                source=src)
    if len(starts) > 1:
        raise RecordSchemaError(starts[1], "second receipt_start", kind="receipt_start", source=src)
    start = records[starts[0]]["payload"]
    if start["public_key"] != public_key_hex(pub):
        raise ReceiptIntegrityError(starts[0], "receipt_start.public_key is not the key the receipt verified with",
                                    kind="receipt_start", source=src)
    if expected_site is not None and start["site"] != expected_site:
        raise ReceiptMismatch(f"the receipt in {site_dir} is for site {start['site']!r}", site=expected_site)
    acc: IndependentAccountant | None = None
    spends: list[ReceiptSpend] = []
    refusals: list[tuple[int, dict[str, Any]]] = []
    last_delta: float | None = None
    for i, r in enumerate(records):
        kind, p = r["kind"], r["payload"]
        if kind == "refusal":
            refusals.append((i, p))
        if kind != "dp_spend":
            continue
        if acc is None:
            acc = IndependentAccountant(accountant=p["accountant"])
        elif acc.accountant != p["accountant"]:
            raise RecordSchemaError(i, f"accountant changed from {acc.accountant} to {p['accountant']}", kind=kind,
                                    source=src)
        acc.compose(parse_event(p["event"]))
        eps = acc.epsilon(delta=p["delta"])
        last_delta = p["delta"]
        if not within_tolerance(p["epsilon"], eps, rel=tolerance):
            raise EpsilonMismatchError(i, f"round {p['round']}: the site recorded ε={p['epsilon']:.6g} but its "
                                          f"events give ε={eps:.6g} at δ={p['delta']:g} ({p['accountant']})",
                                       kind=kind, source=src)
        spends.append(ReceiptSpend(i, p["round"], p["unit"], p["event"], p["delta"], p["accountant"], p["epsilon"],
                                   eps))
    return VerifiedReceipt(
        site=start["site"], path=path, public_key=start["public_key"], key_fingerprint=key_fingerprint(pub),
        run_id=start["run_id"], roster_fingerprint=start["roster_fingerprint"], policy=start["policy"],
        head_hash=state.head_hash, spends=tuple(spends), refusals=tuple(refusals),
        final_epsilon=None if acc is None else acc.epsilon(delta=last_delta), final_delta=last_delta,
        repairs=tuple(i for i, r in enumerate(records) if r["kind"] == "receipt_repair"), records=records)


def __getattr__(name: str):
    if name == "cross_check":  # lives in its own module (one algorithm per file); re-exported for convenience
        from audits.cross_check import cross_check

        return cross_check
    raise AttributeError(f"module 'audits.receipt' has no attribute {name!r}")
