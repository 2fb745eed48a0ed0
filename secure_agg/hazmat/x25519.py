"""X25519 key agreement (RFC 7748) through pyca/cryptography.

Each client makes two fresh key pairs per round: one for share encryption (``c``) and one for pairwise masks (``s``).
"""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from secure_agg.errors import LowOrderKeyError

KEY_BYTES = 32
# A fixed, public scalar: X25519 clamps every scalar to a multiple of 8, so it maps exactly the points of small
# order (RFC 7748 §6.1, the all-zero output) to zero. Used only to test public keys, never to agree on secrets.
_PROBE = X25519PrivateKey.from_private_bytes(bytes([0x5A] * 32))


def generate() -> X25519PrivateKey:
    """A fresh private key from the OS CSPRNG."""
    return X25519PrivateKey.generate()


def public_bytes(key: X25519PrivateKey | X25519PublicKey) -> bytes:
    pub = key.public_key() if isinstance(key, X25519PrivateKey) else key
    return pub.public_bytes(Encoding.Raw, PublicFormat.Raw)


def private_bytes(key: X25519PrivateKey) -> bytes:
    """Raw 32-byte private scalar (only ever Shamir-shared, never logged)."""
    return key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


def private_from_bytes(data: bytes) -> X25519PrivateKey:
    if not isinstance(data, (bytes, bytearray)) or len(data) != KEY_BYTES:
        raise ValueError("X25519 private key must be 32 bytes")
    return X25519PrivateKey.from_private_bytes(bytes(data))


def public_from_bytes(data: bytes) -> X25519PublicKey:
    if not isinstance(data, (bytes, bytearray)) or len(data) != KEY_BYTES:
        raise ValueError("X25519 public key must be 32 bytes")
    return X25519PublicKey.from_public_bytes(bytes(data))


def check_public(data: bytes) -> X25519PublicKey:
    """The public key in ``data``; LowOrderKeyError when it has small order (would give an all-zero secret)."""
    pub = public_from_bytes(data)
    try:
        _PROBE.exchange(pub)
    except ValueError as exc:
        raise LowOrderKeyError("X25519 public key of small order (RFC 7748 §6.1)") from exc
    return pub


def agree(private: X25519PrivateKey, peer_public: bytes | X25519PublicKey) -> bytes:
    """Raw shared secret; LowOrderKeyError on an all-zero result (low-order peer key)."""
    pub = peer_public if isinstance(peer_public, X25519PublicKey) else public_from_bytes(peer_public)
    try:
        return private.exchange(pub)
    except ValueError as exc:
        raise LowOrderKeyError("X25519 agreement gave the all-zero secret (low-order peer key)") from exc
