"""The small interface every poster image encoder implements, and device selection.

An encoder turns a list of PIL images into one float32 matrix ``[n, dim]``::

    enc = load_image_encoder("efficientnet-lite0")      # posterkg.embed.image
    enc.name, enc.dim, enc.device                       # "efficientnet-lite0", 1280, "cpu"
    X = enc.encode([img1, img2])                        # np.ndarray (2, 1280) float32

``encode`` is ``encode_prepared(prepare(images))``: ``prepare`` is the CPU-side preprocessing
(resize, crop, normalise; thread-safe, no model state) and ``encode_prepared`` the forward pass.
The embedding loop (:func:`posterkg.embed.posters.embed_posters`) runs ``prepare`` of the next
batch in a helper thread while the model runs the current one.

``name`` is the stable identity stored in ``poster_embeddings.encoder``: it changes whenever the
vectors would change (other weights, other preprocessing), never otherwise.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence

import numpy as np
from PIL import Image

from posterkg.errors import ConfigError, PosterkgError


class EncoderUnavailable(PosterkgError):
    """An image encoder cannot be loaded (missing package, bad path, not cached offline)."""


class ImageEncoder(Protocol):
    name: str      # stable identity, part of the table key
    dim: int       # length of each vector
    device: str    # "cpu", "cuda", "cuda:0" ...

    def prepare(self, images: Sequence[Image.Image]) -> Any:
        """CPU preprocessing of a batch (thread-safe); the result goes to :meth:`encode_prepared`."""
        ...

    def encode_prepared(self, batch: Any) -> np.ndarray:
        """Forward pass: float32 ``[n, dim]``."""
        ...

    def encode(self, images: Sequence[Image.Image]) -> np.ndarray:
        ...

    def close(self) -> None:
        ...


class EncoderBase:
    """Shared plumbing: ``encode`` = ``encode_prepared(prepare(...))``, empty input, close."""

    name: str = ""
    dim: int = 0
    device: str = "cpu"

    def prepare(self, images: Sequence[Image.Image]) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def encode_prepared(self, batch: Any) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def encode(self, images: Sequence[Image.Image]) -> np.ndarray:
        images = list(images)
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.encode_prepared(self.prepare(images))

    def close(self) -> None:
        pass


def pick_device(device: str = "auto") -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; anything else is checked."""
    import torch

    device = (device or "auto").strip().lower()
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return device
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} asked for, but torch sees no CUDA GPU (use auto or cpu)")
        return device
    if device == "mps":
        return device
    raise ConfigError(f"device must be auto, cpu, cuda, cuda:N or mps, not {device!r}")


def auto_threads(threads: int = 0) -> int:
    """Torch threads for a forward pass: ``threads`` when set, else torch's default, or 1 when the
    1-minute load average exceeds the usable cores + 0.5 (the rule of
    :meth:`posterkg.embed.encoder.Encoder.torch_threads`: OpenMP threads of one process wait on
    each other when other processes hold the cores)."""
    import os

    import torch

    if threads:
        return int(threads)
    default = torch.get_num_threads()
    try:
        cores = len(os.sched_getaffinity(0))
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # pragma: no cover
        return default
    return 1 if load > cores + 0.5 else default


def to_rgb(img: Image.Image) -> Image.Image:
    return img if img.mode == "RGB" else img.convert("RGB")
