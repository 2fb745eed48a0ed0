"""Robust Shamir reconstruction: use *every* share, not only the first t (fixes finding 6 of issue 12).

Given m >= t shares of a degree-(t − 1) polynomial over GF(2^521 − 1) and a ``verify`` predicate on the secret
(the dealer's signed commitment: its X25519 public key, or SHA-256 of its self-mask seed), find the polynomial
through t shares whose secret verifies, and return every share that is not on it. Search order: leave out e = 0,
1, 2, ... shares (fewest bad shares first), at most ``max_tries`` interpolations; when nothing verifies within
them the shares are unrecoverable (ValueError) — the caller aborts rather than guess.
"""

from __future__ import annotations

from itertools import combinations
from typing import Callable, Mapping

from secure_agg.hazmat.shamir import PRIME, SECRET_BYTES, SHARE_BYTES


def _parse(y) -> int | None:
    if not isinstance(y, (bytes, bytearray)) or len(y) != SHARE_BYTES:
        return None
    v = int.from_bytes(y, "big")
    return v if v < PRIME else None


def _batch_inverse(vals: list[int]) -> list[int]:
    """Modular inverses of non-zero field elements with one exponentiation (Montgomery's trick)."""
    prefix, acc = [], 1
    for v in vals:
        prefix.append(acc)
        acc = acc * v % PRIME
    inv = pow(acc, -1, PRIME)
    out = [0] * len(vals)
    for i in range(len(vals) - 1, -1, -1):
        out[i] = inv * prefix[i] % PRIME
        inv = inv * vals[i] % PRIME
    return out


def _evaluate(xs: list[int], ys: list[int], targets: list[int]) -> list[int]:
    """Barycentric Lagrange: the polynomial through (xs, ys), evaluated at each target (targets ∉ xs)."""
    dens = []
    for j, xj in enumerate(xs):
        d = 1
        for i, xi in enumerate(xs):
            if i != j:
                d = d * (xj - xi) % PRIME
        dens.append(d)
    wy = [w * y % PRIME for w, y in zip(_batch_inverse(dens), ys)]
    out = []
    for x in targets:
        diffs = [(x - xj) % PRIME for xj in xs]
        ell = 1
        for dlt in diffs:
            ell = ell * dlt % PRIME
        s = sum(a * b for a, b in zip(wy, _batch_inverse(diffs))) % PRIME
        out.append(ell * s % PRIME)
    return out


def reconstruct_robust(shares: Mapping[int, bytes], *, threshold: int,
                       verify: Callable[[bytes], bool], max_tries: int = 2048) -> tuple[bytes, tuple[int, ...]]:
    """(secret, x-coordinates of the bad shares). ValueError when fewer than t well-formed shares exist or no
    t-subset within ``max_tries`` reconstructs a secret that ``verify`` accepts."""
    t = int(threshold)
    if t < 1:
        raise ValueError("threshold must be >= 1")
    pts, bad = {}, []
    for x, y in shares.items():
        v = _parse(y)
        if v is None or not 0 < int(x) < PRIME:
            bad.append(int(x))
        else:
            pts[int(x)] = v
    xs_all = sorted(pts)
    if len(xs_all) < t:
        raise ValueError(f"need at least {t} well-formed shares, got {len(xs_all)}")
    tries = 0
    for e in range(0, len(xs_all) - t + 1):
        for leave in combinations(xs_all, e):
            tries += 1
            if tries > max_tries:
                raise ValueError("shares are inconsistent and the bad ones could not be identified")
            rest = [x for x in xs_all if x not in leave]
            base, others = rest[:t], [x for x in xs_all if x not in rest[:t]]
            vals = _evaluate(base, [pts[x] for x in base], [0] + others)
            secret = vals[0]
            if secret >> (8 * SECRET_BYTES):
                continue
            sb = secret.to_bytes(SECRET_BYTES, "big")
            if not verify(sb):
                continue
            off = [x for x, v in zip(others, vals[1:]) if v != pts[x]]
            return sb, tuple(sorted(bad + off))
    raise ValueError("no t-subset of the shares reconstructs a verified secret")
