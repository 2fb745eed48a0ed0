"""Ed25519: each site's long-term identity key signs every message it sends (secure_agg.messages.signed_payload).

PKI assumption: every client's Ed25519 *public* identity key reaches every other client through a channel the server
cannot alter (enrolment, a pinned registry). Without it, an active server can substitute keys and act as
man-in-the-middle; with it, a substituted key is rejected with IntegrityError.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from secure_agg.errors import IntegrityError


def generate() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def sign(key: Ed25519PrivateKey, message: bytes) -> bytes:
    return key.sign(message)


def verify(public: Ed25519PublicKey, signature: bytes, message: bytes) -> None:
    """IntegrityError unless ``signature`` is valid for ``message``."""
    if not isinstance(signature, bytes) or len(signature) != 64:
        raise IntegrityError("malformed Ed25519 signature")
    try:
        public.verify(signature, message)
    except InvalidSignature as exc:
        raise IntegrityError("Ed25519 signature verification failed") from exc
