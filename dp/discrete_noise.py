"""Exact sampler for the discrete Gaussian N_Z(0, σ²) (Canonne, Kamath & Steinke 2020, Algorithms 1–3).

pmf: P[X = x] ∝ exp(−x² / (2σ²)) for x ∈ Z. σ² is a rational number (``fractions.Fraction``; floats are
converted exactly) and every step uses integer arithmetic only: Bernoulli(n/d) is ``randbelow(d) < n``, so the
output distribution is exactly the discrete Gaussian (no floating-point sampler, no table, no truncation).

Randomness: uniform integers drawn by rejection from bytes of a *byte source*, by default ``os.urandom`` (the OS
CSPRNG). Tests inject a deterministic byte source to be reproducible; a run never does (``source=None``).
Never ``random`` or ``numpy.random``: the noise is secret.

Cost: pure Python, about 10–30 µs per sample (a handful of uniform draws each); fine for per-round noise shares
of models up to a few 10^5 parameters.
"""

from __future__ import annotations

import math
import os
from fractions import Fraction
from typing import Callable

import numpy as np

ByteSource = Callable[[int], bytes]
_CHUNK = 1 << 16     # bytes fetched from the source at a time (one syscall per 64 KiB of randomness)


class UniformInts:
    """Exact uniform integers from a byte source (default: ``os.urandom``), buffered."""

    def __init__(self, source: ByteSource | None = None) -> None:
        self._source = source if source is not None else os.urandom
        self._buf = b""
        self._pos = 0

    def _take(self, n: int) -> bytes:
        if self._pos + n > len(self._buf):
            self._buf = self._buf[self._pos:] + self._source(max(_CHUNK, n))
            self._pos = 0
        out = self._buf[self._pos:self._pos + n]
        self._pos += n
        return out

    def randbelow(self, n: int) -> int:
        """Uniform on {0, …, n−1} (rejection sampling on ⌈log2 n⌉ bits: exact)."""
        if n <= 0:
            raise ValueError("randbelow needs n >= 1")
        if n == 1:
            return 0
        bits = (n - 1).bit_length()
        nbytes = (bits + 7) // 8
        excess = 8 * nbytes - bits
        while True:
            v = int.from_bytes(self._take(nbytes), "big") >> excess
            if v < n:
                return v


def _bernoulli_exp_neg_le1(num: int, den: int, rng: UniformInts) -> bool:
    """Bernoulli(exp(−num/den)) for 0 ≤ num/den ≤ 1 (CKS Algorithm 1, first case)."""
    k = 1
    while rng.randbelow(den * k) < num:   # A ~ Bernoulli(γ/k)
        k += 1
    return k % 2 == 1


def bernoulli_exp_neg(num: int, den: int, rng: UniformInts) -> bool:
    """Bernoulli(exp(−γ)) for a rational γ = num/den ≥ 0 (CKS Algorithm 1)."""
    if num < 0 or den <= 0:
        raise ValueError("γ = num/den must be >= 0")
    whole, rest = divmod(num, den)
    for _ in range(whole):                 # exp(−γ) = exp(−1)^floor(γ) · exp(−frac(γ))
        if not _bernoulli_exp_neg_le1(1, 1, rng):
            return False
    return _bernoulli_exp_neg_le1(rest, den, rng)


def discrete_laplace(t: int, rng: UniformInts) -> int:
    """One draw of the discrete Laplace with integer scale t ≥ 1: P[x] ∝ exp(−|x|/t) (CKS Algorithm 2)."""
    while True:
        u = rng.randbelow(t)
        if not bernoulli_exp_neg(u, t, rng):
            continue
        v = 0
        while bernoulli_exp_neg(1, 1, rng):
            v += 1
        x = u + t * v                      # geometric magnitude with ratio exp(−1/t)
        negative = rng.randbelow(2) == 1
        if negative and x == 0:
            continue                       # 0 would otherwise be counted twice
        return -x if negative else x


def _as_fraction(sigma_sq) -> Fraction:
    if isinstance(sigma_sq, bool) or not isinstance(sigma_sq, (int, float, Fraction)):
        raise TypeError("sigma_sq must be an int, float or Fraction")
    s = Fraction(sigma_sq)
    if not s > 0 or (isinstance(sigma_sq, float) and not math.isfinite(sigma_sq)):
        raise ValueError(f"sigma_sq (σ², in integer units squared) must be > 0, got {sigma_sq}")
    return s


def discrete_gaussian(sigma_sq, rng: UniformInts) -> int:
    """One exact draw of N_Z(0, σ²) (CKS Algorithm 3): discrete Laplace proposal, exact rejection step."""
    s = _as_fraction(sigma_sq)
    a, b = s.numerator, s.denominator      # σ² = a/b
    t = math.isqrt(a // b) + 1             # floor(σ) + 1
    den = 2 * a * b * t * t                # γ = (|Y| − σ²/t)² / (2σ²) = (|Y|·b·t − a)² / (2·a·b·t²)
    while True:
        y = discrete_laplace(t, rng)
        if bernoulli_exp_neg((abs(y) * b * t - a) ** 2, den, rng):
            return y


def sample_discrete_gaussian(sigma_sq, size: int, *, source: ByteSource | None = None) -> np.ndarray:
    """``size`` independent exact draws of N_Z(0, σ²) as int64, randomness from ``source`` (default os.urandom).

    σ² (``sigma_sq``) is in integer units squared (e.g. quantization steps²); it must keep 12σ below 2^62.
    """
    s = _as_fraction(sigma_sq)
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ValueError("size must be a non-negative int")
    if 144 * s >= 2 ** 124:
        raise ValueError("σ too large for int64 samples")
    rng = UniformInts(source)
    return np.fromiter((discrete_gaussian(s, rng) for _ in range(size)), dtype=np.int64, count=size)


# ---- vectorized exact sampler (numpy uint64 lanes; same algorithms, same exactness) ------------------------------
_U64 = np.uint64
_DEN_LIMIT = 1 << 55       # den·K stays below 2^64 for K < 512; beyond, a lane continues in Python integers


class _Lanes:
    """Exact uniform integers for arrays of moduli, by rejection on 64-bit words from a byte source."""

    def __init__(self, source: ByteSource | None, py: UniformInts) -> None:
        self._source = source if source is not None else os.urandom
        self.py = py                     # shares the source: Python-integer fallbacks for rare lanes

    def below(self, m: np.ndarray) -> np.ndarray:
        """Uniform on {0, …, m_i − 1} per lane (m_i ≥ 1, uint64)."""
        m = np.asarray(m, dtype=_U64)
        with np.errstate(over="ignore"):
            rem = (_U64(0) - m) % m              # 2^64 mod m
            limit = _U64(0) - rem                # accept v < 2^64 − (2^64 mod m): an exact multiple of m
        out = np.empty_like(m)
        todo = np.arange(m.shape[0])
        while todo.size:
            v = np.frombuffer(self._source(8 * todo.size), dtype=_U64)
            ok = (rem[todo] == 0) | (v < limit[todo])
            out[todo[ok]] = v[ok] % m[todo[ok]]
            todo = todo[~ok]
        return out


def _bern_exp_le1(num: np.ndarray, den: np.ndarray, lanes: _Lanes) -> np.ndarray:
    """Per lane Bernoulli(exp(−num/den)), 0 ≤ num ≤ den < 2^55 (CKS Algorithm 1, vectorized)."""
    n = num.shape[0]
    k = np.ones(n, dtype=_U64)
    active = np.arange(n)
    while active.size:
        big = k[active] >= 512
        for i in active[big]:                    # astronomically rare: continue this lane exactly in Python
            kk = int(k[i])
            while lanes.py.randbelow(int(den[i]) * kk) < int(num[i]):
                kk += 1
            k[i] = kk
        active = active[~big]
        if not active.size:
            break
        a = lanes.below(den[active] * k[active]) < num[active]
        k[active[a]] += _U64(1)
        active = active[a]
    return k % _U64(2) == 1


def _bern_exp(num: np.ndarray, den: np.ndarray, lanes: _Lanes) -> np.ndarray:
    """Per lane Bernoulli(exp(−num/den)) for num ≥ 0, 0 < den < 2^55 (uint64)."""
    whole, rest = num // den, num % den
    out = np.ones(num.shape[0], dtype=bool)
    j = 0
    live = np.nonzero(whole > 0)[0]
    while live.size:                              # exp(−γ) = exp(−1)^floor(γ) · exp(−frac(γ))
        ones = np.ones(live.size, dtype=_U64)
        out[live] &= _bern_exp_le1(ones, ones, lanes)
        j += 1
        live = live[out[live] & (whole[live] > _U64(j))]
    live = np.nonzero(out)[0]
    out[live] = _bern_exp_le1(rest[live], den[live], lanes)
    return out


def _laplace_lanes(t: int, size: int, lanes: _Lanes) -> np.ndarray:
    """``size`` draws of the discrete Laplace with integer scale t (CKS Algorithm 2, vectorized), int64."""
    out = np.empty(size, dtype=np.int64)
    todo = np.arange(size)
    tt = _U64(t)
    while todo.size:
        m = todo.size
        u = lanes.below(np.full(m, tt))
        d = _bern_exp(u, np.full(m, tt), lanes)
        v = np.zeros(m, dtype=_U64)
        alive = np.arange(m)
        while alive.size:
            ones = np.ones(alive.size, dtype=_U64)
            b = _bern_exp(ones, ones, lanes)
            v[alive[b]] += _U64(1)
            alive = alive[b]
        x = (u + tt * v).astype(np.int64)
        neg = lanes.below(np.full(m, _U64(2))) == 1
        ok = d & ~(neg & (x == 0))
        out[todo[ok]] = np.where(neg, -x, x)[ok]
        todo = todo[~ok]
    return out


def tm_for(sigma_sq) -> tuple[int, int]:
    """(t, m) with t·m ≥ σ² and t = round(σ) ≥ 1: the vectorized sampler draws N_Z(0, t·m), whose rejection step
    then needs only 64-bit integers (σ²/t = m is an integer). Rounding σ² up only adds noise."""
    s = _as_fraction(sigma_sq)
    t = max(1, math.isqrt(int(s)))
    return t, -(-s.numerator // (s.denominator * t))     # ceil(σ²/t)


def sample_discrete_gaussian_fast(t: int, m: int, size: int, *, source: ByteSource | None = None) -> np.ndarray:
    """``size`` exact draws of N_Z(0, σ²) with σ² = t·m (see :func:`tm_for`), int64, vectorized over numpy lanes.

    Same algorithms as :func:`discrete_gaussian` with the Laplace scale t (any t ≥ 1 is exact, CKS Algorithm 3);
    γ = (|Y| − m)² / (2·t·m) in 64-bit integers; the rare lanes beyond that range continue in Python integers.
    """
    if not (isinstance(t, int) and isinstance(m, int) and t >= 1 and m >= 1) or isinstance(size, bool) or size < 0:
        raise ValueError("t, m must be ints >= 1 and size an int >= 0")
    den = 2 * t * m
    if den >= _DEN_LIMIT:
        raise ValueError("σ² = t·m too large for the 64-bit sampler (2·t·m must be below 2^55)")
    py = UniformInts(source)
    lanes = _Lanes(py._take, py)                 # one byte stream for both
    out = np.empty(size, dtype=np.int64)
    todo = np.arange(size)
    while todo.size:
        y = _laplace_lanes(t, todo.size, lanes)
        diff = np.abs(np.abs(y) - m)
        small = diff < (1 << 31)                 # diff² < 2^62: exact in uint64
        acc = np.zeros(todo.size, dtype=bool)
        i = np.nonzero(small)[0]
        d2 = diff[i].astype(_U64)
        acc[i] = _bern_exp(d2 * d2, np.full(i.size, _U64(den)), lanes)
        for j in np.nonzero(~small)[0]:          # |Y| beyond 2^31: Python integers, same test
            acc[j] = bernoulli_exp_neg(int(diff[j]) ** 2, den, py)
        out[todo[acc]] = y[acc]
        todo = todo[~acc]
    return out


def _normaliser(s: float) -> float:
    """Σ_x exp(−x²/(2σ²)) over Z. Direct summation for σ ≤ 100; else the Poisson-summation value √(2π)·σ, whose
    relative error 2·exp(−2π²σ²) underflows double precision."""
    if s > 1e4:
        return math.sqrt(2 * math.pi * s)
    half = int(40 * math.sqrt(s)) + 40
    xs = np.arange(-half, half + 1, dtype=np.float64)
    return math.fsum(np.exp(-xs * xs / (2 * s)))


def discrete_gaussian_pmf(sigma_sq, support: np.ndarray) -> np.ndarray:
    """Exact pmf of N_Z(0, σ²) on ``support`` (to double precision)."""
    s = float(_as_fraction(sigma_sq))
    x = np.asarray(support, dtype=np.float64)
    return np.exp(-x * x / (2 * s)) / _normaliser(s)


def discrete_gaussian_variance(sigma_sq) -> float:
    """Variance of N_Z(0, σ²) (≤ σ², CKS Corollary 9): pmf summation for σ ≤ 100, else σ² (the deficit
    σ²·4π²σ²·exp(−2π²σ²) is below double precision)."""
    s = float(_as_fraction(sigma_sq))
    if s > 1e4:
        return s
    half = int(40 * math.sqrt(s)) + 40
    xs = np.arange(-half, half + 1, dtype=np.float64)
    w = np.exp(-xs * xs / (2 * s))
    return math.fsum(w * xs * xs) / math.fsum(w)
