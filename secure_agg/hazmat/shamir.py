"""Shamir secret sharing of 32-byte secrets over GF(p), p = 2^521 − 1 (a Mersenne prime > 2^256).

Coefficients come from ``secrets.randbelow`` (OS CSPRNG). Any t shares reconstruct; any t − 1 are independent of the
secret (information-theoretically). x-coordinates are 1..n (never 0).
"""

from __future__ import annotations

import secrets
from typing import Mapping

PRIME = (1 << 521) - 1
SECRET_BYTES = 32
SHARE_BYTES = 66  # ceil(521 / 8)


def split(secret: bytes, *, threshold: int, xs: list[int]) -> dict[int, bytes]:
    """Shares ``{x: 66-byte y}`` of ``secret`` for the distinct points ``xs``; threshold t of them reconstruct."""
    if not isinstance(secret, (bytes, bytearray)) or len(secret) != SECRET_BYTES:
        raise ValueError("secret must be 32 bytes")
    t = int(threshold)
    if len(set(xs)) != len(xs) or any(not (0 < int(x) < PRIME) for x in xs):
        raise ValueError("share points must be distinct and in 1..p-1")
    if not 1 <= t <= len(xs):
        raise ValueError("need 1 <= threshold <= number of shares")
    coeffs = [int.from_bytes(secret, "big")] + [secrets.randbelow(PRIME) for _ in range(t - 1)]
    out = {}
    for x in xs:
        y = 0
        for c in reversed(coeffs):
            y = (y * x + c) % PRIME
        out[int(x)] = y.to_bytes(SHARE_BYTES, "big")
    return out


def reconstruct(shares: Mapping[int, bytes], *, threshold: int) -> bytes:
    """Lagrange interpolation at 0 from the first ``threshold`` shares (ValueError if fewer are given)."""
    t = int(threshold)
    if len(shares) < t or t < 1:
        raise ValueError(f"need at least {t} shares, got {len(shares)}")
    pts = sorted(shares.items())[:t]
    xs = [int(x) for x, _ in pts]
    ys = []
    for _, y in pts:
        if not isinstance(y, (bytes, bytearray)) or len(y) != SHARE_BYTES:
            raise ValueError("malformed share")
        yi = int.from_bytes(y, "big")
        if yi >= PRIME:
            raise ValueError("share out of field")
        ys.append(yi)
    if len(set(xs)) != t:
        raise ValueError("duplicate share points")
    secret = 0
    for i, (xi, yi) in enumerate(zip(xs, ys)):
        num, den = 1, 1
        for j, xj in enumerate(xs):
            if j != i:
                num = num * (-xj) % PRIME
                den = den * (xi - xj) % PRIME
        secret = (secret + yi * num * pow(den, -1, PRIME)) % PRIME
    if secret >> (8 * SECRET_BYTES):
        raise ValueError("reconstruction is not a 32-byte secret (inconsistent shares)")
    return secret.to_bytes(SECRET_BYTES, "big")
