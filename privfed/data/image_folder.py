"""An image folder with one subfolder per class (PNG/JPEG/BMP), resized to a square size."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from privfed.data.dataset import DatasetSplits, from_uint8, stratified_split
from privfed.errors import DataError

EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff"}


def load_image_folder(path: str | Path, *, image_size: int | None, test_fraction: float, seed: int,
                      val_fraction: float = 0.0) -> DatasetSplits:
    """Load `path/<class>/*.png`. Grayscale if every image is single-channel, else RGB; size defaults to 28 px;
    `val_fraction` of each class (default none) becomes a validation split."""
    from PIL import Image, UnidentifiedImageError

    root = Path(path)
    if not root.is_dir():
        raise DataError(f"image folder not found: {root}")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataError(f"{root}: no class subfolders (expected one subfolder per class)")
    size = image_size or 28
    files = [(f, ci) for ci, c in enumerate(classes) for f in sorted((root / c).iterdir())
             if f.suffix.lower() in EXTENSIONS]
    if not files:
        raise DataError(f"{root}: no images with extensions {', '.join(sorted(EXTENSIONS))}")
    opened, modes = [], set()
    for f, ci in files:
        try:
            im = Image.open(f)
            im.load()
        except (UnidentifiedImageError, OSError) as e:
            raise DataError(f"{f}: unreadable image ({e})") from None
        modes.add("L" if im.mode in ("L", "1", "I;16", "I") else "RGB")
        opened.append((im, ci))
    mode = "L" if modes == {"L"} else "RGB"
    arrays = [np.asarray(im.convert(mode).resize((size, size), Image.BILINEAR), dtype=np.uint8) for im, _ in opened]
    images = np.stack(arrays)
    labels = np.array([ci for _, ci in opened], dtype=np.int64)
    ds = from_uint8(images, labels, class_names=classes, name=root.name)
    return stratified_split(ds, test_fraction=test_fraction, seed=seed, val_fraction=val_fraction)
