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


def apply_masks(acc: np.ndarray, add_seeds: list[bytes], sub_seeds: list[bytes]) -> np.ndarray:
    """In place: ``acc += Σ PRG(add) − Σ PRG(sub)`` (mod 2^32), streamed chunk by chunk for cache locality."""
    if acc.dtype != np.uint32 or acc.ndim != 1 or not acc.flags.c_contiguous:
        raise TypeError("acc must be a contiguous 1-D uint32 array")
    streams = [(_encryptor(s), True) for s in add_seeds] + [(_encryptor(s), False) for s in sub_seeds]
    if not streams:
        return acc
    d = acc.shape[0]
    chunk = min(CHUNK_WORDS, max(d, 1))
    zeros = bytes(4 * chunk)
    out = bytearray(4 * chunk + 15)
    view = np.frombuffer(out, dtype=np.uint8)
    for start in range(0, d, chunk):
        m = min(chunk, d - start)
        seg = acc[start:start + m]
        src = zeros if m == chunk else zeros[:4 * m]
        for enc, plus in streams:
            enc.update_into(src, out)
            ks = view[:4 * m].view(np.uint32)
            if plus:
                np.add(seg, ks, out=seg)
            else:
                np.subtract(seg, ks, out=seg)
    return acc
