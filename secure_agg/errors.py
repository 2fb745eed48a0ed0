"""Named exceptions of the secure-aggregation protocol (DESIGN §3.5).

Bad arguments raise ``TypeError``/``ValueError``; everything the protocol detects raises a subclass of
:class:`SecAggError`. Every abort is fail-closed: the party that raises reveals nothing further this round.
"""

from __future__ import annotations


class SecAggError(Exception):
    """Base class of all protocol errors."""


class ProtocolAbort(SecAggError):
    """The round is aborted; nothing (further) is revealed."""


class ThresholdError(ProtocolAbort):
    """Unsafe threshold (t <= n/2, t < 2, t > n) or fewer than t live parties at some stage."""


class InvalidMessage(ProtocolAbort):
    """Malformed message: wrong type, version, length, id, round or run."""


class ReplayError(InvalidMessage):
    """A message replayed within a stage, or carried over from another round or run."""


class DuplicateClientError(InvalidMessage):
    """Two messages (or two advertised keys) for the same client id in one stage."""


class StageOrderError(ProtocolAbort):
    """A message for a stage that is not the current one."""


class ConsistencyError(ProtocolAbort):
    """The server's view is inconsistent (survivor lists differ, or a client would reveal both secrets)."""


class SecretDisclosureError(ConsistencyError):
    """The server asked a client for both the self-mask share and the mask-key share of one peer."""


class IntegrityError(ProtocolAbort):
    """Authentication failed: AES-GCM tag, Ed25519 signature, or a reconstructed key that does not match."""


__all__ = ["SecAggError", "ProtocolAbort", "ThresholdError", "InvalidMessage", "ReplayError",
           "DuplicateClientError", "StageOrderError", "ConsistencyError", "SecretDisclosureError", "IntegrityError"]
