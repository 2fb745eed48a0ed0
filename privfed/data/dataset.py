"""In-memory image dataset: float32 images in [-1, 1], shape (N, C, H, W), int64 labels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from privfed.errors import DataError


@dataclass(frozen=True)
class ImageDataset:
    """Images scaled to [-1, 1] (float32, N×C×H×W) with integer class labels (int64, N)."""

    images: torch.Tensor
    labels: torch.Tensor
    class_names: tuple[str, ...]
    name: str

    def __post_init__(self) -> None:
        if self.images.ndim != 4:
            raise DataError(f"{self.name}: images must be N×C×H×W, got shape {tuple(self.images.shape)}")
        if self.images.shape[0] != self.labels.shape[0]:
            raise DataError(f"{self.name}: {self.images.shape[0]} images but {self.labels.shape[0]} labels")
        if self.images.shape[1] not in (1, 3):
            raise DataError(f"{self.name}: images must have 1 or 3 channels, got {self.images.shape[1]}")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def size(self) -> int:
        return int(self.images.shape[-1])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def subset(self, indices: np.ndarray) -> "ImageDataset":
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        return ImageDataset(self.images[idx], self.labels[idx], self.class_names, self.name)


@dataclass(frozen=True)
class DatasetSplits:
    """A training split (partitioned across clients), a held-out test split (the FID reference) and, where the
    dataset has one, a validation split for model selection (``fid_val``: choose schedules on it, report test)."""

    train: ImageDataset
    test: ImageDataset
    val: ImageDataset | None = None


def from_uint8(images: np.ndarray, labels: np.ndarray, *, class_names, name: str) -> ImageDataset:
    """Build a dataset from uint8 images shaped N×H×W (grayscale) or N×H×W×C (C in {1, 3})."""
    if images.dtype != np.uint8:
        raise DataError(f"{name}: images must be uint8, got {images.dtype}")
    if images.ndim == 3:
        images = images[:, None, :, :]
    elif images.ndim == 4 and images.shape[-1] in (1, 3):
        images = images.transpose(0, 3, 1, 2)
    else:
        raise DataError(f"{name}: images must be N×H×W or N×H×W×C with C in (1, 3); got shape {images.shape}")
    if images.shape[2] != images.shape[3]:
        raise DataError(f"{name}: images must be square; got {images.shape[2]}×{images.shape[3]}")
    labels = np.asarray(labels).reshape(len(labels), -1)
    if labels.shape[1] != 1 or labels.shape[0] != images.shape[0]:
        raise DataError(f"{name}: labels must be N or N×1 matching {images.shape[0]} images; got {labels.shape}")
    x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(127.5).sub_(1.0)
    y = torch.from_numpy(labels[:, 0].astype(np.int64))
    return ImageDataset(x, y, tuple(class_names), name)


def stratified_split(ds: ImageDataset, *, test_fraction: float, seed: int, val_fraction: float = 0.0) -> DatasetSplits:
    """Hold out `test_fraction` of each class as the test split and, when `val_fraction` > 0, a further
    `val_fraction` of each class as the validation split (deterministic in `seed`). The test split does not depend
    on `val_fraction`, so test FIDs stay comparable with runs that had no validation split; the validation images
    come out of the training split."""
    rng = np.random.default_rng(seed)
    labels = ds.labels.numpy()
    test, val = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        n_test = max(1, int(round(len(idx) * test_fraction)))
        test.extend(idx[:n_test])
        if val_fraction > 0:
            val.extend(idx[n_test: n_test + max(1, int(round(len(idx) * val_fraction)))])
    role = np.zeros(len(ds), dtype=np.int8)   # 0 train, 1 test, 2 validation
    role[test] = 1
    role[val] = 2
    if not (role == 0).any():
        raise DataError(f"{ds.name}: test_fraction {test_fraction} and val_fraction {val_fraction} leave no "
                        "training images")
    return DatasetSplits(ds.subset(np.flatnonzero(role == 0)), ds.subset(np.flatnonzero(role == 1)),
                         ds.subset(np.flatnonzero(role == 2)) if val_fraction > 0 else None)
