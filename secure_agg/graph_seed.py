"""Commit-reveal graph seed (fixes finding 3 of issue 12: the seed was SHA-256(run id, round), grindable by
whoever writes the run id).

1. After the setup (roster, ids, t, degree, quantization) is fixed, each site draws a 32-byte nonce from the OS
   CSPRNG and sends a signed commitment H(label, setup hash, site, nonce).
2. The server relays the list of commitments; each site checks its own is there, then reveals its nonce, signed
   and bound to the hash of that list.
3. The seed is H(label, commitment-list hash, every (site, nonce) in id order). A site's own nonce was unknown
   to every other party when the list was fixed, so the seed is unpredictable to the server and any colluders.

What a server that drops revealers could still do: if it could leave out reveals after seeing them, it could choose
among 2^m graphs (m = reveals it may drop). Therefore a sparse round needs *every* committed nonce (a missing or
wrong reveal aborts the round, IncompleteRevealError); the only choice left is to abort and start a new round,
which every site sees (a new round index) and the ledger records. A full-graph round does not use the seed, so
non-revealers there are simply dropped.
"""

from __future__ import annotations

import hashlib
from typing import Iterable

from secure_agg.canonical import canonical

NONCE_BYTES = 32
_COMMIT = b"privfed/secagg/v1/graph-commit|"
_LIST = b"privfed/secagg/v1/graph-commit-list|"
_SEED = b"privfed/secagg/v1/graph-seed|"


def commitment(setup_hash: bytes, site: int, nonce: bytes) -> bytes:
    """Hiding, binding commitment of ``site`` to its 32-byte ``nonce`` for one setup (SHA-256)."""
    return hashlib.sha256(_COMMIT + setup_hash + b"%d|" % int(site) + nonce).digest()


def commit_list_hash(setup_hash: bytes, ids: Iterable[int], commitments: Iterable[bytes]) -> bytes:
    return hashlib.sha256(_LIST + setup_hash + canonical({"ids": [int(i) for i in ids],
                                                        "c": [c.hex() for c in commitments]})).digest()


def seed(list_hash: bytes, ids: Iterable[int], nonces: Iterable[bytes]) -> bytes:
    """The public graph seed from all revealed nonces, in id order."""
    return hashlib.sha256(_SEED + list_hash + canonical({"ids": [int(i) for i in ids],
                                                        "r": [r.hex() for r in nonces]})).digest()
