"""MedMNIST v2 `.npz` files (keys train_images/train_labels/val_*/test_*), grayscale or RGB, and the opt-in download."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from privfed.data.dataset import DatasetSplits, from_uint8
from privfed.errors import DataError

SPLITS = ("train", "val", "test")


def load_medmnist_npz(path: str | Path, *, name: str | None = None) -> DatasetSplits:
    """Load an official MedMNIST `.npz`. Training uses `train`; `test` is the held-out reference.

    The `val` split, when present, is never trained on: runs score it as ``fid_val`` for model selection.
    """
    p = Path(path)
    name = name or p.stem
    if not p.is_file():
        raise DataError(f"MedMNIST file not found: {p}")
    try:
        with np.load(p, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise DataError(f"{p} is not a readable .npz file ({type(e).__name__}: {e})") from None
    missing = [f"{s}_{kind}" for s in ("train", "test") for kind in ("images", "labels") if f"{s}_{kind}" not in arrays]
    if missing:
        raise DataError(f"{p}: missing MedMNIST key(s) {', '.join(missing)}; "
                        f"found {', '.join(sorted(arrays)) or 'none'}")
    labels = np.concatenate([arrays[f"{s}_labels"].reshape(-1) for s in SPLITS if f"{s}_labels" in arrays])
    if labels.size and labels.min() < 0:
        raise DataError(f"{p}: negative class labels")
    n_classes = int(labels.max()) + 1 if labels.size else 0
    class_names = [str(i) for i in range(n_classes)]
    parts = {}
    for split in ("train", "test", "val"):
        if f"{split}_images" not in arrays:
            continue
        imgs, labs = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if imgs.shape[0] != labs.shape[0]:
            raise DataError(f"{p}: {split}_images has {imgs.shape[0]} rows but {split}_labels has {labs.shape[0]}")
        if labs.ndim == 2 and labs.shape[1] != 1:
            raise DataError(f"{p}: {split}_labels is multi-label {labs.shape}; only single-label sets are supported")
        parts[split] = from_uint8(imgs, labs, class_names=class_names, name=f"{name}:{split}")
    if parts["train"].images.shape[1:] != parts["test"].images.shape[1:]:
        raise DataError(f"{p}: train and test images differ in shape")
    if "val" in parts and parts["val"].images.shape[1:] != parts["test"].images.shape[1:]:
        raise DataError(f"{p}: val and test images differ in shape")
    return DatasetSplits(parts["train"], parts["test"], parts.get("val"))


def download_medmnist(flag: str, *, root: str | Path, size: int = 28) -> Path:
    """Fetch a MedMNIST `.npz` through the `medmnist` package (network needed; only on explicit request)."""
    try:
        import medmnist
    except ImportError:
        raise DataError(
            f"dataset {flag!r} needs the optional 'medmnist' package and network access "
            "(pip install 'privfed[medmnist]'), or pass a local file with --dataset npz --data FILE.npz"
        ) from None
    if flag not in medmnist.INFO:
        raise DataError(f"unknown MedMNIST dataset {flag!r}; known: {', '.join(sorted(medmnist.INFO))}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    cls = getattr(medmnist, medmnist.INFO[flag]["python_class"])
    try:
        cls(split="train", download=True, root=str(root), size=size)
    except Exception as e:  # the package raises bare RuntimeError/URLError without network
        raise DataError(f"could not download {flag!r} (no network?): {e}") from None
    suffix = "" if size == 28 else f"_{size}"
    path = root / f"{flag}{suffix}.npz"
    if not path.is_file():
        raise DataError(f"download of {flag!r} finished but {path} is missing")
    return path
