"""HKDF-SHA256 (RFC 5869) with one distinct label per purpose (DESIGN §3.8)."""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

LABEL_SHARE_ENCRYPTION = b"privfed/secagg/v1/share-encryption-key"
LABEL_PAIRWISE_MASK = b"privfed/secagg/v1/pairwise-mask-prg-key"
LABELS = frozenset({LABEL_SHARE_ENCRYPTION, LABEL_PAIRWISE_MASK})


def hkdf_sha256(ikm: bytes, *, salt: bytes | None, info: bytes, length: int = 32) -> bytes:
    """Plain RFC 5869 HKDF-SHA256 (extract then expand)."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


def _lp(b: bytes) -> bytes:
    return len(b).to_bytes(4, "big") + b


def derive_key(shared_secret: bytes, *, label: bytes, run_id: str, round_index: int, a: int, b: int) -> bytes:
    """32-byte key for one purpose, one run, one round and one unordered pair {a, b} of clients."""
    if label not in LABELS:
        raise ValueError(f"unknown HKDF label {label!r}")
    lo, hi = sorted((int(a), int(b)))
    info = b"".join(_lp(x) for x in (label, run_id.encode(), str(int(round_index)).encode(),
                                     str(lo).encode(), str(hi).encode()))
    return hkdf_sha256(shared_secret, salt=b"privfed-secagg-v1", info=info, length=32)
