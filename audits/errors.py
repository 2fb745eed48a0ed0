"""The fixed error taxonomy of `audits` (DESIGN §3.5): verification raises, it never returns False quietly.

Every error renders as one clear line (``str(err)``), which is what the CLI prints.

    AuditError
    ├── RunDirectoryError              the run directory itself is unusable
    │   ├── MissingRunDirectory        no such directory
    │   └── IncompleteRunDirectory     a file of the §4 contract is missing (ledger.jsonl, keys/ledger.pub, config.toml)
    ├── KeyError_ (LedgerKeyError)     key files: unreadable, wrong format, unsafe permissions, fingerprint not pinned one
    ├── VerificationError              a record fails a check; carries .record_index (0-based line) and .reason
    │   ├── LedgerIntegrityError       bytes/canonical form/seq/prev_hash/signature (tampering, truncation)
    │   │   └── UnsignedRecordError    a record without a signature
    │   ├── UnknownSchemaVersion       a validly signed record of a schema version this verifier does not know
    │   ├── RecordSchemaError          envelope or payload does not match its JSON schema / run order
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
    """A ledger record failed a check. ``record_index`` is the 0-based line number in ledger.jsonl (None: run level)."""

    def __init__(self, record_index: int | None, reason: str, *, kind: str | None = None) -> None:
        self.record_index = record_index
        self.reason = reason
        self.kind = kind
        where = "ledger" if record_index is None else f"record {record_index}" + (f" ({kind})" if kind else "")
        super().__init__(f"{where}: {reason}")


class LedgerIntegrityError(VerificationError):
    """The hash chain, canonical encoding, sequence number or signature of a record does not verify."""


class UnsignedRecordError(LedgerIntegrityError):
    """A record carries no signature."""


class UnknownSchemaVersion(VerificationError):
    """A (validly signed) record declares a schema version this verifier does not know."""


class RecordSchemaError(VerificationError, ValueError):
    """A record's envelope or payload does not match the schema of its kind, or records are out of order."""


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
    """Another LedgerWriter (process) holds the ledger open for writing."""
