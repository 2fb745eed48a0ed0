"""The embedded default: scikit-learn's bundled handwritten digits (1797 real 8×8 images, no network)."""

from __future__ import annotations

import numpy as np

from privfed.data.dataset import DatasetSplits, from_uint8, stratified_split


def load_digits_splits(*, test_fraction: float, seed: int, val_fraction: float = 0.0) -> DatasetSplits:
    """Load the UCI digits shipped with scikit-learn (pixel values 0..16) as 8×8 grayscale images; `val_fraction`
    of each class (default none) becomes a validation split."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    ds = from_uint8(images, bunch.target, class_names=[str(i) for i in range(10)], name="digits")
    return stratified_split(ds, test_fraction=test_fraction, seed=seed, val_fraction=val_fraction)
