"""Sealing a site's round state for a transport that starts a fresh process per message (Flower's ClientApp).

The state (X25519 private keys, self-mask seed, received shares, graph nonce, rounding seed) is serialised to
tagged canonical JSON and encrypted with AES-256-GCM under a site-local 32-byte key that never leaves the site.
Blob layout: ``MAGIC || len(header) (4 bytes) || header JSON || nonce || ciphertext+tag``. The plaintext header
holds only (version, run, round, site, stage) — no secrets — and is the GCM associated data, so changing it
breaks the tag.
"""

from __future__ import annotations

import json
from typing import Any

from secure_agg.canonical import canonical
from secure_agg.errors import IntegrityError
from secure_agg.hazmat import aead

MAGIC = b"PFSA-SEAL\x02"
SEAL_VERSION = 1


def _tag(v: Any) -> Any:
    if isinstance(v, (bytes, bytearray)):
        return {"b": bytes(v).hex()}
    if isinstance(v, (tuple, list)):
        return {"l": [_tag(x) for x in v]}
    if isinstance(v, (set, frozenset)):
        return {"s": [_tag(x) for x in sorted(v)]}
    if isinstance(v, dict):
        return {"d": [[_tag(k), _tag(x)] for k, x in sorted(v.items())]}
    if v is None or isinstance(v, (bool, int, float, str)):
        return {"v": v}
    raise TypeError(f"cannot seal a {type(v).__name__}")


def _untag(v: Any) -> Any:
    if not isinstance(v, dict) or len(v) != 1:
        raise IntegrityError("sealed state is malformed")
    (k, x), = v.items()
    if k == "b":
        return bytes.fromhex(x)
    if k == "l":
        return tuple(_untag(y) for y in x)
    if k == "s":
        return frozenset(_untag(y) for y in x)
    if k == "d":
        return {_untag(a): _untag(b) for a, b in x}
    if k == "v":
        return x
    raise IntegrityError("sealed state is malformed")


def header_bytes(*, run_id: str, round_index: int, site: int, stage: str) -> bytes:
    return canonical({"seal_v": SEAL_VERSION, "proto": "privfed/secagg", "run": run_id, "round": int(round_index),
                      "site": int(site), "stage": stage})


def seal(state: dict, key: bytes, *, run_id: str, round_index: int, site: int, stage: str) -> bytes:
    if not isinstance(key, (bytes, bytearray)) or len(key) != 32:
        raise ValueError("seal key must be 32 bytes")
    head = header_bytes(run_id=run_id, round_index=round_index, site=site, stage=stage)
    body = canonical(_tag(state))
    return MAGIC + len(head).to_bytes(4, "big") + head + aead.encrypt(bytes(key), body, head)


def unseal(blob: bytes, key: bytes) -> tuple[dict, dict]:
    """(header, state); IntegrityError on a malformed or tampered blob or the wrong key."""
    if not isinstance(key, (bytes, bytearray)) or len(key) != 32:
        raise ValueError("seal key must be 32 bytes")
    if not isinstance(blob, (bytes, bytearray)) or not bytes(blob).startswith(MAGIC) or len(blob) < len(MAGIC) + 4:
        raise IntegrityError("not a sealed secure_agg site state")
    blob = bytes(blob)
    n = int.from_bytes(blob[len(MAGIC):len(MAGIC) + 4], "big")
    head = blob[len(MAGIC) + 4:len(MAGIC) + 4 + n]
    body = aead.decrypt(bytes(key), blob[len(MAGIC) + 4 + n:], head)
    try:
        header = json.loads(head)
        state = _untag(json.loads(body))
    except (ValueError, TypeError) as exc:
        raise IntegrityError("sealed state is malformed") from exc
    if not isinstance(header, dict) or header.get("seal_v") != SEAL_VERSION or not isinstance(state, dict):
        raise IntegrityError("unsupported sealed state version")
    return header, state
