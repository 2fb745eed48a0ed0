"""Clip, stochastically round to fixed point in Z_{2^k}, and dequantize the sum.

Scheme (per coordinate, per client): clip x to [-c, c]; map to u = (x + c) / Δ in [0, L] with Δ = 2c / L; round u
to floor(u + r), r ~ U[0, 1), i.e. floor(u) + 1 with probability frac(u) (unbiased; each site uses its own
stream, :func:`rounding_generator`, seeded from the OS CSPRNG). Each quantized value lies in {0, …, L}; a sum over
at most n clients lies in {0, …, n·L}, and L = floor((2^k − 1) / n) makes n·L ≤ 2^k − 1, so the sum never wraps mod 2^k.

Error bound (documented and tested): for m summed clients, |dequantize(Σq) − Σ clip(x)| ≤ m·Δ deterministically
(each rounding moves a value by < Δ), and E[dequantize(Σq)] = Σ clip(x) (up to float64 rounding of u + r,
a bias below 2^-20 of a level).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

MAX_BITS = 32
MIN_LEVELS = 2
_CHUNK = 1 << 15  # 32 Ki coordinates: two float64 scratch buffers of 256 KiB stay in L2


@dataclass(frozen=True)
class Quantizer:
    clip_range: float
    modulus_bits: int
    levels: int  # L: per-client values lie in {0..L}

    @property
    def step(self) -> float:
        """Δ = 2c / L, the quantization step."""
        return 2.0 * self.clip_range / self.levels

    @property
    def modulus_mask(self) -> int:
        return (1 << self.modulus_bits) - 1

    def quantize(self, x: np.ndarray, rng, *, chunk_hook=None) -> np.ndarray:
        """uint32 vector in {0..L} (unbiased stochastic rounding of the clipped input).

        ``chunk_hook(segment)``, when given, is called on each finished uint32 segment in order while it is still in
        cache (the site passes :meth:`secure_agg.hazmat.prg.MaskStreams.apply` to mask in the same pass)."""
        if not isinstance(rng, (RoundingStream, np.random.Generator)):
            raise TypeError("rng must be a RoundingStream (a site's own, see rounding_generator) or, for "
                            "experiments, a numpy.random.Generator")
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 1:
            raise ValueError("input must be a 1-D vector")
        if not np.isfinite(np.add.reduce(x)) and not np.all(np.isfinite(x)):  # one fast pass in the common case
            raise ValueError("input contains NaN or inf")
        c = self.clip_range
        half = self.levels / 2.0                 # u = (clip(x) + c)·L/(2c) = clip(x)·(L/2c) + L/2
        scale = half / c
        d = x.shape[0]
        out = np.empty(d, dtype=np.uint32)
        step = min(d, _CHUNK)
        buf, r = np.empty(step), np.empty(step)
        for a in range(0, d, step):              # cache-sized chunks: one pass over memory, no large temporaries
            m = min(step, d - a)
            b, rr = buf[:m], r[:m]
            np.clip(x[a:a + m], -c, c, out=b)
            b *= scale
            b += half                            # u in [0, L]
            rng.random(out=rr)                   # U[0,1); chunking does not change the stream
            b += rr                              # floor(u + r), r ~ U[0,1): P(round up) = frac(u), unbiased
            np.minimum(b, self.levels, out=b)    # guards the float rounding of u + r near L
            seg = out[a:a + m]
            np.copyto(seg, b, casting="unsafe")  # truncation = floor (b >= 0)
            if chunk_hook is not None:
                chunk_hook(seg)
        return out

    def dequantize_sum(self, total: np.ndarray, count: int) -> np.ndarray:
        """float64 sum of ``count`` clients from the (unwrapped) integer sum."""
        return np.asarray(total, dtype=np.float64) * self.step - count * self.clip_range

    def error_bound(self, count: int) -> float:
        """Worst-case |dequantized sum − sum of clipped inputs| for ``count`` clients."""
        return count * self.step


class RoundingStream:
    """Uniform [0, 1) doubles k·2^-32 from AES-256-CTR keyed with a 32-byte seed (a CSPRNG stream; about 2× faster
    than numpy's PCG64 ``random``). Only ``random(out=...)`` is provided, which is all quantization uses."""

    _SCALE = 2.0 ** -32

    def __init__(self, seed: bytes) -> None:
        if not isinstance(seed, (bytes, bytearray)) or len(seed) != 32:
            raise ValueError("rounding seed must be 32 bytes")
        # domain separation from the mask PRG (which uses IV 0): this stream starts at counter block 2^127
        iv = b"\x80" + bytes(15)
        self._enc = Cipher(algorithms.AES(bytes(seed)), modes.CTR(iv)).encryptor()
        self._buf = bytearray(15)
        self._zeros = b""

    def __repr__(self) -> str:
        return "RoundingStream(<secret seed>)"

    def random(self, out: np.ndarray) -> np.ndarray:
        m = out.shape[0]
        if len(self._zeros) < 4 * m:
            self._buf, self._zeros = bytearray(4 * m + 15), bytes(4 * m)
        src = self._zeros if len(self._zeros) == 4 * m else memoryview(self._zeros)[:4 * m]
        self._enc.update_into(src, self._buf)
        words = np.frombuffer(self._buf, dtype=np.uint8)[:4 * m].view(np.uint32)
        np.multiply(words, self._SCALE, out=out)   # k·2^-32, k uniform on [0, 2^32): P(round up) off by <= 2^-32
        return out


def rounding_generator(seed: bytes) -> RoundingStream:
    """A site's own stochastic-rounding stream from a 32-byte seed.

    Sites pass 32 bytes from the OS CSPRNG (``os.urandom``); a fixed seed is for explicit reproducible experiments
    only (finding 8 of issue 12: one stream from the public run seed let anyone replay every site's rounding).
    """
    return RoundingStream(seed)


def make_quantizer(*, n_clients: int, clip_range: float, modulus_bits: int | None = None) -> Quantizer:
    """Choose k (auto: 32) and L so that n clients' sum never wraps; ValueError when that is impossible."""
    if isinstance(n_clients, bool) or not isinstance(n_clients, int) or n_clients < 1:
        raise ValueError("n_clients must be a positive int")
    c = float(clip_range)
    if not np.isfinite(c) or c <= 0:
        raise ValueError("clip_range must be a positive finite number")
    k = MAX_BITS if modulus_bits is None else modulus_bits
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_BITS:
        raise ValueError(f"modulus_bits must be an int in 1..{MAX_BITS} (4 bytes/param at most)")
    levels = ((1 << k) - 1) // n_clients
    if levels < MIN_LEVELS:
        raise ValueError(f"{n_clients} clients cannot be summed without wrap-around in Z_2^{k}: "
                         f"need at least {MIN_LEVELS} levels per client; raise modulus_bits or use fewer clients")
    return Quantizer(clip_range=c, modulus_bits=k, levels=levels)
