"""User-facing error taxonomy: the CLI turns these into one line and a non-zero exit code."""


class PrivfedError(Exception):
    """Base class for errors caused by the user's input or environment (not bugs)."""


class ConfigError(PrivfedError, ValueError):
    """An invalid configuration value (bad range, unknown name, inconsistent options)."""


class DataError(PrivfedError, ValueError):
    """A dataset that is missing, unreadable, or of the wrong keys, shapes or dtypes."""


class RunDirError(PrivfedError):
    """A run directory that cannot be created, resumed or read."""
