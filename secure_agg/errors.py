"""Named exceptions of the secure-aggregation protocol (DESIGN §3.5).

Bad arguments raise ``TypeError``/``ValueError``; everything the protocol detects raises a subclass of
:class:`SecAggError`. Every abort is fail-closed: the party that raises reveals nothing further this round.
A server that receives one bad reply does not abort: it *excludes* that sender and records the error's class name
(see :class:`secure_agg.server.ServerSession`); only fewer than t live sites, or an inconsistency it cannot
attribute to one sender, aborts the round.
"""

from __future__ import annotations


class SecAggError(Exception):
    """Base class of all protocol errors."""


class ProtocolAbort(SecAggError):
    """The round is aborted; nothing (further) is revealed."""


class ThresholdError(ProtocolAbort):
    """Unsafe threshold (t <= n/2, t < 2, t > n) or fewer than t live parties at some stage."""


class PolicyViolation(ProtocolAbort):
    """The server's setup is weaker than this site's pinned :class:`~secure_agg.policy.ProtocolPolicy`
    (too few sites, a threshold below max(min_threshold, floor((n + max_colluders)/2) + 1), a SecAgg+ degree below
    the policy's bound, a roster the site did not pin)."""


class InvalidMessage(ProtocolAbort):
    """Malformed message: wrong type, version, length, id, round or run."""


class ReplayError(InvalidMessage):
    """A message replayed within a stage, or carried over from another round or run."""


class DuplicateClientError(InvalidMessage):
    """Two messages (or two advertised keys) for the same client id in one stage."""


class LowOrderKeyError(InvalidMessage):
    """An X25519 public key of small order (RFC 7748 §6.1: the shared secret would be all zero)."""


class StageOrderError(ProtocolAbort):
    """A message for a stage that is not the current one."""


class ConsistencyError(ProtocolAbort):
    """The server's view is inconsistent (survivor lists differ, or a client would reveal both secrets)."""


class SecretDisclosureError(ConsistencyError):
    """The server asked a client for both the self-mask share and the mask-key share of one peer."""


class IncompleteRevealError(ConsistencyError):
    """SecAgg+: a site that committed to graph randomness did not reveal it (or revealed something else).

    The graph seed needs every committed contribution; letting the server leave some out would let it choose
    among several graphs after seeing the reveals, so the round aborts instead."""


class IntegrityError(ProtocolAbort):
    """Authentication failed: AES-GCM tag, Ed25519 signature, or a reconstructed key that does not match."""


class UnknownIdentityError(IntegrityError):
    """A site id that is not in the pinned roster."""


class BadShareError(IntegrityError):
    """A Shamir share that does not lie on the polynomial fixed by the other shares and the dealer's commitment."""


__all__ = ["SecAggError", "ProtocolAbort", "ThresholdError", "PolicyViolation", "InvalidMessage", "ReplayError",
           "DuplicateClientError", "LowOrderKeyError", "StageOrderError", "ConsistencyError",
           "SecretDisclosureError", "IncompleteRevealError", "IntegrityError", "UnknownIdentityError",
           "BadShareError"]


# -- homomorphic aggregation (CKKS, :mod:`secure_agg.he`) ------------------------------------------------------
class InsecureParametersError(PolicyViolation, ValueError):
    """CKKS parameters below 128-bit classical security (HomomorphicEncryption.org standard's table), or ones the
    table does not cover. Also a ``ValueError``: it is raised for a bad configuration at the public boundary."""


class CiphertextError(InvalidMessage):
    """A site's ciphertext that cannot be added to the round's sum; the site is excluded, nothing is decrypted."""


class MalformedCiphertextError(CiphertextError):
    """Truncated or malformed ciphertext bytes (they do not parse as a CKKS vector under the round's context)."""


class ForeignContextError(CiphertextError):
    """A ciphertext encrypted under another CKKS context (another key or other parameters) than the round's."""


class WrongLengthError(CiphertextError):
    """A ciphertext whose vector length is not the model's number of parameters."""


class TooFewContributorsError(ThresholdError):
    """A decryption request for an aggregate of fewer sites than the key holder's minimum: nothing is decrypted."""


class DecryptionRangeError(ProtocolAbort):
    """The decrypted aggregate lies outside the range the contributors' clipped updates allow (a garbage or
    foreign ciphertext reached the sum): nothing is released."""


__all__ += ["InsecureParametersError", "CiphertextError", "MalformedCiphertextError", "ForeignContextError",
            "WrongLengthError", "TooFewContributorsError", "DecryptionRangeError"]
