"""Neighbour graph: the full graph (SecAgg) or a sparse k-regular Harary graph (SecAgg+, Bell et al. 2020).

The sparse graph is a ring over a pseudo-random permutation of the participating sites (SHA-256 of the graph seed
and each id), each site linked to its k/2 nearest ring positions on each side. The seed comes from commit-reveal
randomness every participating site contributes after the roster and setup are fixed
(:mod:`secure_agg.graph_seed`), so neither the server nor the operator who writes the run id can choose it.
Every site recomputes the graph itself; it trusts nothing the server says about it.
"""

from __future__ import annotations

import hashlib
import math
from functools import lru_cache


def effective_degree(n: int, k: int) -> int:
    """Sparse degree rounded up to even (ring construction), capped at n − 1."""
    if k < 1:
        raise ValueError("neighbours must be >= 1")
    return min(n - 1, k + (k % 2))


def neighbours(ids, degree: int, seed: bytes) -> dict[int, frozenset[int]]:
    """id -> neighbours (self excluded). degree >= n − 1 gives the full graph."""
    return _neighbours(tuple(sorted(int(i) for i in ids)), int(degree), bytes(seed))


@lru_cache(maxsize=4)  # in-process simulations: n sites ask for the same graph; it is public
def _neighbours(ids: tuple[int, ...], degree: int, seed: bytes) -> dict[int, frozenset[int]]:
    n = len(ids)
    if degree >= n - 1:
        full = frozenset(ids)
        return {i: full - {i} for i in ids}
    if degree % 2 or degree < 2:
        raise ValueError("sparse degree must be even and >= 2")
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
