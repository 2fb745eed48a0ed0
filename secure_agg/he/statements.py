"""What the key holder signs (Ed25519 over canonical JSON): the public context it published, and each aggregate it
decrypted. Sites check the first against the key holder's pinned key before encrypting anything; the server
records the second in its ledger (kind ``he_decryption``) so an auditor can check who decrypted what."""

from __future__ import annotations

from typing import Any, Mapping

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from secure_agg.canonical import canonical
from secure_agg.errors import IntegrityError

VERSION = 1
CONTEXT_LABEL = b"privfed-ckks-context/v1\n"
DECRYPTION_LABEL = b"privfed-ckks-decryption/v1\n"


def context_statement(*, run_id: str, context_sha256: str, params: Mapping[str, Any]) -> dict[str, Any]:
    return {"v": VERSION, "run": run_id, "context_sha256": context_sha256, "params": dict(params)}


def decryption_statement(*, run_id: str, round_index: int, contributors: list[int], context_sha256: str,
                         ciphertext_sha256: str, result_sha256: str, flood_sigma: float, grid_bits: int,
                         min_contributors: int) -> dict[str, Any]:
    return {"v": VERSION, "run": run_id, "round": int(round_index),
            "contributors": sorted(int(c) for c in contributors),
            "min_contributors": int(min_contributors), "context_sha256": context_sha256,
            "ciphertext_sha256": ciphertext_sha256, "result_sha256": result_sha256,
            "flood_sigma": float(flood_sigma), "grid_bits": int(grid_bits)}


def sign_statement(label: bytes, statement: Mapping[str, Any], key: Ed25519PrivateKey) -> bytes:
    return key.sign(label + canonical(dict(statement)))


def verify_statement(label: bytes, statement: Mapping[str, Any], signature: bytes, key: Ed25519PublicKey) -> None:
    """IntegrityError unless ``signature`` is the key holder's over ``statement``."""
    try:
        key.verify(signature, label + canonical(dict(statement)))
    except InvalidSignature:
        raise IntegrityError("CKKS statement: signature does not verify under the pinned key-holder key") from None
