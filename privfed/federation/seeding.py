"""Reproducible experiment randomness derived from (seed, round, client); never used for secrets."""

from __future__ import annotations

import hashlib

import numpy as np
import torch


def derive_seed(seed: int, *labels: object) -> int:
    """A 63-bit seed that depends on the run seed and a purpose label, stable across processes and resumes."""
    h = hashlib.sha256(repr((seed, *labels)).encode()).digest()
    return int.from_bytes(h[:8], "big") >> 1


def torch_generator(seed: int, *labels: object) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(seed, *labels))


def numpy_generator(seed: int, *labels: object) -> np.random.Generator:
    return np.random.default_rng(derive_seed(seed, *labels))
