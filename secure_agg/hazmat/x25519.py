"""X25519 key agreement (RFC 7748) through pyca/cryptography.

Each client makes two fresh key pairs per round: one for share encryption (``c``) and one for pairwise masks (``s``).
"""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

KEY_BYTES = 32


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


def agree(private: X25519PrivateKey, peer_public: bytes | X25519PublicKey) -> bytes:
    """Raw shared secret; raises ValueError on an all-zero result (low-order peer key)."""
    pub = peer_public if isinstance(peer_public, X25519PublicKey) else public_from_bytes(peer_public)
    return private.exchange(pub)
