"""Noise flooding of a CKKS decryption before release (against Li & Micciancio, EUROCRYPT 2021).

A CKKS decryption is ``m + e`` where the error ``e`` depends on the secret key; whoever sees a decryption and the
ciphertext it came from (here: the server, which computed the summed ciphertext) can solve for the key. The key
holder therefore adds fresh Gaussian noise of standard deviation ``sigma`` to every decoded coordinate and rounds
the result to a grid of ``2^-grid_bits`` before releasing it.

σ: ``DEFAULT_SIGMA = 2^-30`` (about 9.3e-10) in the update's own units. With privfed's default scale 2^80 the
decryption error of a sum of tens of fresh ciphertexts is near 2^-63 (measured: ``err * scale`` about 2^17..2^31
for N = 8192), so σ exceeds the key-dependent error by a factor of at least 2^33: the released value's distribution
is statistically close to one that does not depend on the error (statistical distance per coordinate at most about
|e|/σ <= 2^-33). The largest flooding term over 10^6 coordinates is about 5.4σ ≈ 5e-9, i.e. 2e-8 of the default
clip range 0.25 (the goal is <= 1e-6). Note that this is applied to the decoded real slots (TenSEAL does not expose
the plaintext polynomial), not to the polynomial's coefficients as in OpenFHE's ``NOISE_FLOODING_DECRYPT``.

The DP guarantee is unaffected: flooding is post-processing of an already differentially private aggregate.
Noise comes from the OS CSPRNG (``os.urandom``), never from a seeded generator.
"""

from __future__ import annotations

import os

import numpy as np

DEFAULT_SIGMA = 2.0 ** -30
DEFAULT_GRID_BITS = 36


def csprng_gaussian(n: int) -> np.ndarray:
    """n standard normal draws from the OS CSPRNG (Box-Muller on 53-bit uniforms)."""
    raw = np.frombuffer(os.urandom(16 * n), dtype="<u8").reshape(2, n) >> np.uint64(11)
    u1 = (raw[0].astype(np.float64) + 1.0) * 2.0 ** -53          # (0, 1]
    u2 = raw[1].astype(np.float64) * 2.0 ** -53                  # [0, 1)
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)


def flood(values: np.ndarray, *, sigma: float = DEFAULT_SIGMA, grid_bits: int = DEFAULT_GRID_BITS) -> np.ndarray:
    """``round((values + N(0, sigma^2)) * 2^grid_bits) / 2^grid_bits`` (float64), noise from the OS CSPRNG."""
    if not sigma > 0:
        raise ValueError("flooding sigma must be > 0")
    v = np.asarray(values, dtype=np.float64)
    noisy = v + sigma * csprng_gaussian(v.size).reshape(v.shape)
    step = 2.0 ** grid_bits
    return np.round(noisy * step) / step
