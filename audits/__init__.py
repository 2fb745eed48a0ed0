"""audits: privacy ledger schema, verification, empirical privacy audits and reports for privfed.

Public API (imported lazily so that ``import audits`` stays cheap)::

    from audits import LedgerWriter, verify_run, cli_verify, build_report, sha256_path
    from audits import ReceiptWriter, verify_receipt, cross_check, roster_fingerprint, epsilon_for_events
"""

__version__ = "0.1.0"
PROJECT = "privfed"

_LAZY = {
    "LedgerWriter": ("audits.ledger", "LedgerWriter"),
    "verify_run": ("audits.verify", "verify_run"),
    "VerificationReport": ("audits.verify", "VerificationReport"),
    "cli_verify": ("audits.verify", "cli_verify"),
    "build_report": ("audits.report", "build_report"),
    "ReportPaths": ("audits.report", "ReportPaths"),
    "sha256_path": ("audits.artifact_hash", "sha256_path"),
    "epsilon_for_events": ("audits.accounting", "epsilon_for_events"),
    "ReceiptWriter": ("audits.receipt", "ReceiptWriter"),
    "verify_receipt": ("audits.receipt", "verify_receipt"),
    "cross_check": ("audits.cross_check", "cross_check"),
    "roster_fingerprint": ("audits.roster", "roster_fingerprint"),
}

__all__ = ["PROJECT", "__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        mod, attr = _LAZY[name]
        return getattr(importlib.import_module(mod), attr)
    raise AttributeError(f"module 'audits' has no attribute {name!r}")
