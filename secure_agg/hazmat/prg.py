"""Mask PRG: AES-256-CTR keyed with a full 256-bit seed, read as little-endian uint32 words.

Every keystream bit is (computationally) uniform, so the words are uniform on [0, 2^32) and their low k bits are
exactly uniform mod 2^k for every k <= 32 (2^k divides 2^32). Each seed is used for one stream only, so the fixed
all-zero initial counter block is safe. Compare Flower 1.42, whose mask PRG is seeded through numpy with 32 bits.
"""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

SEED_BYTES = 32
_IV = bytes(16)
CHUNK_WORDS = 1 << 16  # 256 KiB of keystream per step: stays in L2 while it is added


def _encryptor(seed: bytes):
    if not isinstance(seed, (bytes, bytearray)) or len(seed) != SEED_BYTES:
        raise ValueError("mask seed must be exactly 32 bytes (256 bits)")
    return Cipher(algorithms.AES(bytes(seed)), modes.CTR(_IV)).encryptor()


def expand(seed: bytes, words: int) -> np.ndarray:
    """``words`` uint32 mask words from a 32-byte seed."""
    if int(words) < 0:
        raise ValueError("words must be >= 0")
    return np.frombuffer(_encryptor(seed).update(bytes(4 * int(words))), dtype=np.uint32).copy()


class MaskStreams:
    """The keystreams of a set of seeds, consumed segment by segment: ``apply(seg)`` adds (or subtracts) the next
    ``len(seg)`` words of every stream to ``seg`` in place (mod 2^32). Applying consecutive segments equals one
    :func:`apply_masks` over their concatenation, so masking can run inside another chunked pass (quantization)
    while the chunk is still in cache."""

    def __init__(self, add_seeds: list[bytes], sub_seeds: list[bytes]) -> None:
        self._streams = [(_encryptor(s), True) for s in add_seeds] + [(_encryptor(s), False) for s in sub_seeds]
        self._zeros = b""
        self._out = bytearray(15)

    def apply(self, seg: np.ndarray) -> None:
        if seg.dtype != np.uint32 or seg.ndim != 1:
            raise TypeError("segment must be a 1-D uint32 array")
        m = seg.shape[0]
        if not self._streams or m == 0:
            return
        if len(self._zeros) < 4 * m:
            self._zeros = bytes(4 * m)
            self._out = bytearray(4 * m + 15)
        src = self._zeros if len(self._zeros) == 4 * m else memoryview(self._zeros)[:4 * m]
        view = np.frombuffer(self._out, dtype=np.uint8)[:4 * m].view(np.uint32)
        for enc, plus in self._streams:
            enc.update_into(src, self._out)
            if plus:
                np.add(seg, view, out=seg)
            else:
                np.subtract(seg, view, out=seg)


def apply_masks(acc: np.ndarray, add_seeds: list[bytes], sub_seeds: list[bytes]) -> np.ndarray:
    """In place: ``acc += Σ PRG(add) − Σ PRG(sub)`` (mod 2^32), streamed chunk by chunk for cache locality."""
    if acc.dtype != np.uint32 or acc.ndim != 1 or not acc.flags.c_contiguous:
        raise TypeError("acc must be a contiguous 1-D uint32 array")
    streams = MaskStreams(add_seeds, sub_seeds)
    d = acc.shape[0]
    chunk = min(CHUNK_WORDS, max(d, 1))
    for start in range(0, d, chunk):
        streams.apply(acc[start:start + chunk])
    return acc
