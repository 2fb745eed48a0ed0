"""Public synthetic data: digits 0–9 typeset in the fonts that matplotlib ships, for public pretraining.

No person's data is involved — the glyphs come from the DejaVu, STIX and Computer Modern fonts bundled with
matplotlib (no network, no private images) — so pretraining on them costs no privacy budget. Each image is a
glyph randomly sheared, rotated and sometimes thickened, size-normalised into a 32×32 box and, for 8×8 output,
reduced exactly like the UCI handwritten-digits preprocessing (the count of ink pixels in each 4×4 block, 0..16).
"""

from __future__ import annotations

import os
from functools import lru_cache

import numpy as np

from privfed.data.dataset import ImageDataset, from_uint8
from privfed.errors import DataError

FONT_FILES = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans-BoldOblique.ttf",
              "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf",
              "DejaVuSerif-Italic.ttf", "STIXGeneral.ttf", "STIXGeneralItalic.ttf", "STIXGeneralBol.ttf",
              "cmr10.ttf", "cmss10.ttf", "cmti10.ttf", "cmtt10.ttf")
_CANVAS, _BOX = 96, 32


@lru_cache(maxsize=1)
def _fonts():
    import matplotlib
    from PIL import ImageFont

    folder = os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "fonts", "ttf")
    found = [os.path.join(folder, f) for f in FONT_FILES if os.path.exists(os.path.join(folder, f))]
    if not found:
        raise DataError(f"no fonts for typeset digits under {folder} (is matplotlib installed?)")
    return tuple(ImageFont.truetype(f, 64) for f in found)


def _glyph_box(digit: int, font, rng: np.random.Generator) -> np.ndarray:
    """One digit as a binary 32×32 array, size-normalised (height fills 24–32 px, aspect kept), centred."""
    from PIL import Image, ImageDraw, ImageFilter

    im = Image.new("L", (_CANVAS, _CANVAS), 0)
    ImageDraw.Draw(im).text((_CANVAS // 2, _CANVAS // 2), str(digit), font=font, fill=255, anchor="mm")
    if rng.random() < 1 / 3:
        im = im.filter(ImageFilter.MaxFilter(3))
    shear = rng.uniform(-0.25, 0.25)
    im = im.transform(im.size, Image.AFFINE, (1, shear, -shear * _CANVAS / 2, 0, 1, 0), resample=Image.BILINEAR)
    im = im.rotate(rng.uniform(-12, 12), resample=Image.BILINEAR)
    ink = np.asarray(im) > 127
    ys, xs = np.nonzero(ink)
    ink = ink[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    h, w = ink.shape
    scale = rng.uniform(24, _BOX) / max(h, w * rng.uniform(0.9, 1.4))
    nh, nw = max(1, min(_BOX, round(h * scale))), max(1, min(_BOX, round(w * scale)))
    small = Image.fromarray(ink.astype(np.uint8) * 255).resize((nw, nh), Image.BILINEAR)
    box = Image.new("L", (_BOX, _BOX), 0)
    box.paste(small, ((_BOX - nw) // 2, (_BOX - nh) // 2))
    return np.asarray(box) > 127


def typeset_digits(n: int, *, image_size: int = 8, channels: int = 1, seed: int = 0) -> ImageDataset:
    """`n` typeset digit images (labels 0–9), `image_size`×`image_size` pixels, in [-1, 1] like every dataset.

    8×8 output uses the UCI reduction (ink pixels per 4×4 block → 0..16 → 0..255); other sizes resize the 32×32
    box bilinearly. `channels` 3 repeats the grey image. Deterministic in `seed` (public data: no secrets).
    """
    from PIL import Image

    if n < 1:
        raise DataError(f"typeset digits: n must be >= 1; got {n}")
    if channels not in (1, 3):
        raise DataError(f"typeset digits: channels must be 1 or 3; got {channels}")
    rng = np.random.default_rng(seed)
    fonts = _fonts()
    labels = rng.integers(0, 10, n)
    out = np.zeros((n, image_size, image_size), np.uint8)
    for k in range(n):
        box = _glyph_box(int(labels[k]), fonts[rng.integers(len(fonts))], rng)
        if image_size == 8:
            counts = box.reshape(8, 4, 8, 4).sum((1, 3))
            out[k] = np.round(counts * (255.0 / 16.0)).astype(np.uint8)
        else:
            img = Image.fromarray(box.astype(np.uint8) * 255).resize((image_size, image_size), Image.BILINEAR)
            out[k] = np.asarray(img)
    if channels == 3:
        out = np.repeat(out[..., None], 3, axis=-1)
    return from_uint8(out, labels, class_names=[str(i) for i in range(10)], name="typeset-digits")
