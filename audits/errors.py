"""The fixed error taxonomy of `audits` (DESIGN §3.5): verification raises, it never returns False quietly.

Every error renders as one clear line (``str(err)``), which is what the CLI prints.

    AuditError
    ├── RunDirectoryError              the run directory itself is unusable
    │   ├── MissingRunDirectory        no such directory
    │   └── IncompleteRunDirectory     a file of the §4 contract is missing (ledger.jsonl, keys/ledger.pub,
    │                                  config.toml, a site's receipt.jsonl)
    ├── KeyError_ (LedgerKeyError)     key files: unreadable, wrong format, unsafe permissions
    │   └── PinnedKeyMismatch          keys/ledger.pub is not the pinned key (also a VerificationError: exit 1)
    ├── PinFormatError                 a pinned key fingerprint or head hash is not 64 hex digits (bad input)
    ├── VerificationError              a record fails a check; carries .record_index (0-based line), .reason and
    │   │                              .source ("ledger" or "receipt of site <id>")
    │   ├── LedgerIntegrityError       bytes/canonical form/seq/prev_hash/signature (tampering, truncation)
    │   │   ├── UnsignedRecordError    a record without a signature
    │   │   └── ReceiptIntegrityError  the same checks failing on a site's receipt (byte change, wrong key, reorder)
    │   │       └── UnsignedReceiptRecordError  a receipt record without a signature (also an UnsignedRecordError)
    │   ├── UnknownSchemaVersion       a validly signed record of a schema version this verifier does not know
    │   ├── RecordSchemaError          envelope or payload does not match its JSON schema / run order
    │   │   └── UnknownEventType       a DP event whose "type" this verifier cannot account
    │   ├── RosterError                the ledger's roster record is inconsistent (fingerprint, server key, sites)
    │   ├── ReceiptMismatch            a site's receipt disagrees with the server's ledger (events, rounds, key, roster)
    │   ├── EpsilonMismatchError       recomputed ε differs from the reported ε by more than the tolerance
    │   ├── BudgetViolationError       a budget check was ignored, or recomputed ε exceeds the recorded cap
    │   ├── SmallCellError             a data summary publishes a count below the suppression threshold
    │   └── ArtifactMismatchError      config.toml or a checkpoint does not hash to what the ledger recorded
    ├── ForbiddenPayloadError          (writer side, also a ValueError) payload key looks like raw data/keys/shares
    ├── UnknownAccountant              an accountant name the recomputation does not support
    └── ReportDependencyMissing        an optional dependency (PDF rendering) is not installed
"""

from __future__ import annotations


class AuditError(Exception):
    """Base class of every error raised by `audits`."""


class RunDirectoryError(AuditError):
    def __init__(self, path, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class MissingRunDirectory(RunDirectoryError):
    def __init__(self, path) -> None:
        super().__init__(path, "run directory does not exist or is not a directory")


class IncompleteRunDirectory(RunDirectoryError):
    """A file that the run-directory contract (DESIGN §4) requires is missing or empty."""


class LedgerKeyError(AuditError):
    """A ledger key file is missing, malformed, has unsafe permissions, or is not the pinned key."""


class VerificationError(AuditError):
    """A record failed a check. ``record_index`` is the 0-based line number in ``source`` (None: file level);
    ``source`` is ``"ledger"`` (RUN_DIR/ledger.jsonl) or ``"receipt of site <id>"`` (a site's receipt.jsonl)."""

    def __init__(self, record_index: int | None, reason: str, *, kind: str | None = None,
                 source: str = "ledger") -> None:
        self.record_index = record_index
        self.reason = reason
        self.kind = kind
        self.source = source
        prefix = "" if source == "ledger" else f"{source}: "
        where = source if record_index is None else f"{prefix}record {record_index}" + (f" ({kind})" if kind else "")
        super().__init__(f"{where}: {reason}")


class PinnedKeyMismatch(VerificationError, LedgerKeyError):
    """keys/ledger.pub does not have the fingerprint the caller pinned: an integrity failure, not bad input."""

    def __init__(self, reason: str) -> None:
        super().__init__(None, reason, source="keys/ledger.pub")


class PinFormatError(AuditError, ValueError):
    """A pinned value (key fingerprint ``[sha256:]<64 hex>`` or head hash ``<64 hex>``) is malformed."""


class LedgerIntegrityError(VerificationError):
    """The hash chain, canonical encoding, sequence number or signature of a record does not verify."""


class UnsignedRecordError(LedgerIntegrityError):
    """A record carries no signature."""


class ReceiptIntegrityError(LedgerIntegrityError):
    """A site receipt's bytes, canonical form, sequence, hash chain or signature (under the site's key) fail."""


class UnsignedReceiptRecordError(UnsignedRecordError, ReceiptIntegrityError):
    """A site receipt's record carries no signature (both an unsigned record and a receipt integrity failure)."""


class UnknownSchemaVersion(VerificationError):
    """A (validly signed) record declares a schema version this verifier does not know."""


class RecordSchemaError(VerificationError, ValueError):
    """A record's envelope or payload does not match the schema of its kind, or records are out of order."""


class UnknownEventType(RecordSchemaError):
    """A (validly signed) DP event names a ``type`` this verifier cannot account (known: "gaussian")."""


class RosterError(VerificationError):
    """The ledger's roster record does not hash to its fingerprint, names another server key, or misses a site."""


class ReceiptMismatch(VerificationError):
    """A site's verified receipt disagrees with the server's verified ledger: DP events (σ, q, steps, unit) of a
    round differ, one side has a round the other lacks, or the site key / roster fingerprint differ.
    ``site`` and ``round`` (None: not tied to a round) name where; ``record_index`` is the ledger record, if any."""

    def __init__(self, reason: str, *, site: str, round: int | None = None, record_index: int | None = None,
                 kind: str | None = None) -> None:
        self.site = site
        self.round = round
        where = f"site {site}" + ("" if round is None else f", round {round}")
        at = "" if record_index is None else f" (ledger record {record_index}" + (f", {kind})" if kind else ")")
        super().__init__(None, reason + at, kind=kind, source=f"receipt cross-check of {where}")
        self.record_index = record_index


class EpsilonMismatchError(VerificationError):
    """ε recomputed from the recorded DP events differs from the ε the run reported by more than the tolerance."""


class BudgetViolationError(VerificationError):
    """Training went on after a failed budget check, or recomputed ε exceeds the recorded cap."""


class SmallCellError(VerificationError, ValueError):
    """A data summary publishes a count in 1..k-1 instead of the suppressed form "<k"."""


class ArtifactMismatchError(VerificationError):
    """config.toml or a checkpoint does not hash to the value the ledger recorded."""


class ForbiddenPayloadError(AuditError, ValueError):
    """A payload key looks like raw data, gradients, unmasked updates, keys, seeds or shares."""


class UnknownAccountant(AuditError, ValueError):
    """The ledger names an accountant the recomputation does not support."""


class ReportDependencyMissing(AuditError):
    """An optional dependency needed for the requested output is not installed."""


class LedgerBusyError(AuditError):
    """Another writer (process) holds the ledger or receipt open for writing."""
