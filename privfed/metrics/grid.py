"""Sample grids as PNG."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from privfed.rundir import atomic_write_bytes


def grid_image(images: torch.Tensor, *, nrow: int = 10, upscale: int | None = None) -> Image.Image:
    """Tile images in [-1, 1] (N×C×H×W) into one picture; small images are upscaled so people can see them."""
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    n, c, h, w = x.shape
    ncol = min(nrow, n)
    rows = (n + ncol - 1) // ncol
    pad = 1
    canvas = np.full((c, rows * (h + pad) + pad, ncol * (w + pad) + pad), 255, dtype=np.uint8)
    for i in range(n):
        r, k = divmod(i, ncol)
        canvas[:, pad + r * (h + pad): pad + r * (h + pad) + h, pad + k * (w + pad): pad + k * (w + pad) + w] = x[i]
    img = Image.fromarray(canvas[0] if c == 1 else canvas.transpose(1, 2, 0))
    scale = upscale if upscale is not None else max(1, min(8, 400 // img.width))
    return img.resize((img.width * scale, img.height * scale), Image.NEAREST)


def save_grid(images: torch.Tensor, path: Path, *, nrow: int = 10) -> Path:
    """Write a PNG grid atomically and return its path."""
    buf = io.BytesIO()
    grid_image(images, nrow=nrow).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
    return path
