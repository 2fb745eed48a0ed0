"""User-facing error taxonomy: the CLI turns these into one line and a non-zero exit code."""


class PrivfedError(Exception):
    """Base class for errors caused by the user's input or environment (not bugs)."""


class ConfigError(PrivfedError, ValueError):
    """An invalid configuration value (bad range, unknown name, inconsistent options)."""


class DataError(PrivfedError, ValueError):
    """A dataset that is missing, unreadable, or of the wrong keys, shapes or dtypes."""


class RunDirError(PrivfedError):
    """A run directory that cannot be created, resumed or read."""


class SiteError(PrivfedError):
    """A site-side failure: the site refuses or cannot take part; the round goes on without it (or aborts)."""


class PolicyViolation(SiteError):
    """Round instructions that break the site's pinned policy (roster size, threshold, colluders, degree, ε cap)."""


class UnknownSiteError(SiteError):
    """A site id or key that is not on the pinned roster, or a message addressed to another site or run."""


class SiteKeyError(SiteError):
    """A site identity key that is missing, unreadable, too widely readable, or would be overwritten."""


class SealedStateError(SiteError):
    """Sealed site state that is corrupt, tampered with, or bound to another run, round, site or stage."""
