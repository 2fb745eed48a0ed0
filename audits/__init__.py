"""audits: privacy ledger schema, verification, empirical privacy audits and reports for privfed."""

__version__ = "0.1.0"
PROJECT = "privfed"
