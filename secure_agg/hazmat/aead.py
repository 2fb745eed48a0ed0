"""AES-256-GCM for Shamir shares, with associated data binding the full context (DESIGN §3.8)."""

from __future__ import annotations

import json
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from secure_agg.errors import IntegrityError

NONCE_BYTES = 12


def associated_data(*, version: int, run_id: str, round_index: int, stage: str, sender: int, receiver: int) -> bytes:
    """Canonical JSON of (protocol version, run id, round, stage, sender, receiver)."""
    return json.dumps({"v": int(version), "run": str(run_id), "round": int(round_index), "stage": str(stage),
                       "from": int(sender), "to": int(receiver)}, sort_keys=True, separators=(",", ":")).encode()


def encrypt(key: bytes, plaintext: bytes, ad: bytes) -> bytes:
    """nonce (12 random bytes from the OS CSPRNG) || ciphertext || tag."""
    if len(key) != 32:
        raise ValueError("AES-256-GCM key must be 32 bytes")
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, ad)


def decrypt(key: bytes, blob: bytes, ad: bytes) -> bytes:
    """Inverse of :func:`encrypt`; IntegrityError on any tampering or wrong context."""
    if len(key) != 32:
        raise ValueError("AES-256-GCM key must be 32 bytes")
    if not isinstance(blob, bytes) or len(blob) < NONCE_BYTES + 16:
        raise IntegrityError("ciphertext too short")
    try:
        return AESGCM(key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], ad)
    except InvalidTag as exc:
        raise IntegrityError("AES-GCM authentication failed (tampered, wrong key or wrong context)") from exc
