"""Neighbour graph: the full graph (SecAgg) or a sparse k-regular Harary graph (SecAgg+, Bell et al. 2020).

The sparse graph is a ring over a public pseudo-random permutation of the clients (SHA-256 of a public round value),
each client linked to its k/2 nearest ring positions on each side. It is deterministic and public: every client
recomputes it from the setup message and needs to trust nothing the server says about it.
"""

from __future__ import annotations

import hashlib
import math


def auto_degree(n: int) -> int:
    """k = O(log n): 2·ceil(1.5·log2 n), capped at n − 1 (which is the full graph)."""
    if n <= 1:
        return 0
    return min(n - 1, 2 * math.ceil(1.5 * math.log2(n)))


def effective_degree(n: int, k: int) -> int:
    """Sparse degree rounded up to even (ring construction), capped at n − 1."""
    if k < 1:
        raise ValueError("neighbours must be >= 1")
    return min(n - 1, k + (k % 2))


def graph_seed(run_id: str, round_index: int) -> bytes:
    """Public round value from which the graph is derived (not secret)."""
    return hashlib.sha256(f"privfed/secagg/v1/graph|{run_id}|{int(round_index)}".encode()).digest()


def neighbours(ids: list[int], degree: int, seed: bytes) -> dict[int, frozenset[int]]:
    """id -> neighbours (self excluded). degree >= n − 1 gives the full graph."""
    n = len(ids)
    if degree >= n - 1:
        full = frozenset(ids)
        return {i: full - {i} for i in ids}
    if degree % 2:
        raise ValueError("sparse degree must be even")
    order = sorted(ids, key=lambda i: hashlib.sha256(seed + str(i).encode()).digest())
    half = degree // 2
    out = {}
    for pos, i in enumerate(order):
        out[i] = frozenset(order[(pos + d) % n] for d in range(-half, half + 1) if d != 0)
    return out


def local_threshold(*, t: int, n: int, holders: int) -> int:
    """Shamir threshold inside a neighbourhood of ``holders`` share holders (self included).

    Full graph: exactly t. Sparse: the same fraction t/n of the holders, and always a strict majority.
    """
    if holders >= n:
        return t
    return min(holders, max(holders // 2 + 1, math.ceil(t * holders / n)))
