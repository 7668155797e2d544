"""Loading posters for the taggers: open, verify, convert to RGB, resize to a pixel budget.

Vision-language models pay per pixel (Qwen2-VL: one visual token per 28x28 block), and CPU-side
image preprocessing is the usual bottleneck of VLM batch jobs, so backends resize here, once,
before sending: :func:`fit_pixels` keeps the aspect ratio and brings ``width*height`` inside
``[min_pixels, max_pixels]``; ``multiple=28`` also rounds both sides to multiples of 28 (what
Qwen2-VL's processor would do anyway, so it then has nothing left to resize).

A poster that Pillow cannot open or decode raises :class:`CorruptImage`; the runner records it as
failure reason ``corrupt_image`` and goes on.
"""

from __future__ import annotations

import math
from pathlib import Path

from PIL import Image

from posterkg.errors import InputError


class CorruptImage(InputError):
    """A poster file is missing, truncated or not an image."""

    reason = "corrupt_image"


def load_image(path: str | Path) -> Image.Image:
    """Open ``path``, check the file is a whole image, decode it and return it as RGB."""
    p = Path(path)
    try:
        with Image.open(p) as probe:       # verify() catches truncated/garbled files cheaply...
            probe.verify()
        with Image.open(p) as img:         # ...but leaves the image unusable: open it again
            img.load()
            return img.convert("RGB") if img.mode != "RGB" else img.copy()
    except FileNotFoundError as exc:
        raise CorruptImage(f"{p}: file not found") from exc
    except Exception as exc:  # PIL raises many types (UnidentifiedImageError, OSError, SyntaxError...)
        raise CorruptImage(f"{p}: cannot decode image ({type(exc).__name__}: {exc})") from exc


def fit_size(width: int, height: int, *, min_pixels: int | None = None,
             max_pixels: int | None = None, multiple: int | None = None) -> tuple[int, int]:
    """Target (width, height): aspect kept, area inside [min_pixels, max_pixels] when given.

    With ``multiple`` both sides are rounded to multiples of it (at least one block), rounding
    down when that is needed to stay under ``max_pixels`` and up to stay over ``min_pixels``.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"bad image size {width}x{height}")
    if min_pixels and max_pixels and min_pixels > max_pixels:
        raise ValueError(f"min_pixels {min_pixels} > max_pixels {max_pixels}")
    area = width * height
    scale = 1.0
    if max_pixels and area > max_pixels:
        scale = math.sqrt(max_pixels / area)
    elif min_pixels and area < min_pixels:
        scale = math.sqrt(min_pixels / area)
    w, h = width * scale, height * scale
    if not multiple:
        w, h = max(1, round(w)), max(1, round(h))
        if max_pixels:
            while w * h > max_pixels and (w > 1 or h > 1):   # rounding overshoot
                if w >= h:
                    w -= 1
                else:
                    h -= 1
        return w, h
    m = multiple
    bw, bh = max(1, round(w / m)), max(1, round(h / m))
    if max_pixels:
        while bw * bh * m * m > max_pixels and (bw > 1 or bh > 1):
            if bw / width >= bh / height and bw > 1:
                bw -= 1
            elif bh > 1:
                bh -= 1
            else:
                bw -= 1
    if min_pixels:
        while bw * bh * m * m < min_pixels:
            if bw / width <= bh / height:
                bw += 1
            else:
                bh += 1
    return bw * m, bh * m


def fit_pixels(img: Image.Image, *, min_pixels: int | None = None, max_pixels: int | None = None,
               multiple: int | None = None) -> Image.Image:
    """Resize ``img`` (bicubic) to :func:`fit_size`; returns ``img`` itself when nothing changes."""
    size = fit_size(img.width, img.height, min_pixels=min_pixels, max_pixels=max_pixels,
                    multiple=multiple)
    if size == (img.width, img.height):
        return img
    return img.resize(size, Image.Resampling.BICUBIC)


def load_poster(path: str | Path, *, min_pixels: int | None = None, max_pixels: int | None = None,
                multiple: int | None = None) -> Image.Image:
    """:func:`load_image` then :func:`fit_pixels`: what a VLM backend sends."""
    return fit_pixels(load_image(path), min_pixels=min_pixels, max_pixels=max_pixels,
                      multiple=multiple)
