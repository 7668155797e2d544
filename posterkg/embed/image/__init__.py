"""Poster image encoders behind one small interface (:class:`~posterkg.embed.image.base.ImageEncoder`).

=============================  ======  ===========================================================
name                           dim     what
=============================  ======  ===========================================================
``efficientnet-lite0``         1280    ImageNet EfficientNet-Lite0 from a PyPI wheel, upstream
                                       eval preprocessing; the CPU default
``efficientnet-lite0-full``    1280    the same on the whole poster (no centre crop)
``clip:<HF id or path>``       proj.   CLIP vision tower + projection (transformers)
``siglip:<HF id or path>``     hidden  SigLIP vision tower, attention-pool output
``pixels`` (= ``pixels-v1``)   197     weight-free Lab / edge / texture / face descriptor
``some.module``                any     a module of your own with ``create(device=..., **options)``
=============================  ======  ===========================================================

:func:`encoder_name` gives the name stored in the tables without loading anything;
:func:`load_image_encoder` builds the encoder (GPU when present with ``device="auto"``).
"""

from __future__ import annotations

import importlib
import re
from typing import Any

from posterkg.embed.image.base import EncoderUnavailable, ImageEncoder, pick_device
from posterkg.errors import ConfigError

BUILTIN = ("efficientnet-lite0", "efficientnet-lite0-full", "pixels", "clip:<id|path>", "siglip:<id|path>")
ALIASES = {"pixels": "pixels-v1", "efficientnet": "efficientnet-lite0"}
_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+")

__all__ = ["BUILTIN", "EncoderUnavailable", "ImageEncoder", "encoder_name", "load_image_encoder",
           "pick_device"]


def _unknown(name: str) -> ConfigError:
    return ConfigError(f"unknown image encoder {name!r}; choose one of {', '.join(BUILTIN)}, "
                       "or give the module path of your own encoder")


def encoder_name(name: str) -> str:
    """The canonical name stored in ``poster_embeddings.encoder`` for a user-given ``name``."""
    from posterkg.embed.image import hf

    raw = (name or "").strip()
    key = ALIASES.get(raw.lower(), raw.lower())
    if key in ("efficientnet-lite0", "efficientnet-lite0-full", "pixels-v1"):
        return key
    if ":" in raw:
        kind, ref = raw.split(":", 1)
        if kind.lower() in hf.KINDS:
            return hf.canonical(kind.lower(), ref)[0]
    if _MODULE.fullmatch(raw):
        return raw
    raise _unknown(name)


def load_image_encoder(name: str, *, device: str = "auto", threads: int = 0, **options: Any) -> ImageEncoder:
    """Build encoder ``name`` (see the module table)."""
    canonical = encoder_name(name)
    if canonical.startswith("efficientnet-lite0"):
        from posterkg.embed.image.efficientnet import EfficientNetLite0

        if options:
            raise ConfigError(f"unknown option(s) for {canonical}: {', '.join(sorted(options))}")
        return EfficientNetLite0(canonical, device=device, threads=threads)
    if canonical == "pixels-v1":
        from posterkg.embed.image.pixels import PixelsEncoder

        if options:
            raise ConfigError(f"unknown option(s) for pixels: {', '.join(sorted(options))}")
        return PixelsEncoder()
    kind = canonical.split(":", 1)[0]
    if kind in ("clip", "siglip") and ":" in canonical:
        from posterkg.embed.image.hf import HFVisionEncoder

        return HFVisionEncoder(kind, canonical.split(":", 1)[1], device=device, **options)
    try:   # a third-party encoder module
        module = importlib.import_module(canonical)
    except ModuleNotFoundError as exc:
        if exc.name and canonical.startswith(exc.name):
            raise _unknown(name) from None
        raise
    create = getattr(module, "create", None)
    if create is None:
        raise ConfigError(f"encoder module {canonical} has no create(device=..., **options)")
    return create(device=device, **options)
