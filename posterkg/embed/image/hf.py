"""``clip:<HF id or path>`` and ``siglip:<HF id or path>``: transformers' vision towers.

The encoder a GPU user would pick. Only the image side is loaded, from a full CLIP/SigLIP
checkpoint (``openai/clip-vit-base-patch32``, ``google/siglip-base-patch16-224``) or a vision-only
one:

=========  ==================================  ===============================  ===================
prefix     model class                         image processor (PIL, no         vector
                                               torchvision)
=========  ==================================  ===============================  ===================
``clip``   ``CLIPVisionModelWithProjection``   ``CLIPImageProcessorPil``        ``image_embeds``
                                                                                (projection_dim)
``siglip`` ``SiglipVisionModel``               ``SiglipImageProcessorPil``      ``pooler_output``
                                                                                (attention-pool
                                                                                head, hidden_size)
=========  ==================================  ===============================  ===================

These are the vectors ``get_image_features`` of the full model returns (not L2-normalised; use
``load_features(..., normalize=True)`` for cosine geometry). The processors are the slow PIL
ones: transformers' default "fast" processors need torchvision, which has no CPU build that
works beside CPU torch here (../shared/notes/platform.md). A folder without
``preprocessor_config.json`` gets the processor's defaults at the model's ``image_size``.

Nothing is downloaded when ``HF_HUB_OFFLINE=1`` (the tests set it): an id that is not in the
local cache raises :class:`EncoderUnavailable`. Name stored: ``clip:<absolute path>`` for a
local folder, ``clip:<id>`` for a hub id.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from posterkg.embed.image.base import EncoderBase, EncoderUnavailable, pick_device, to_rgb
from posterkg.errors import ConfigError

KINDS = ("clip", "siglip")


def canonical(kind: str, ref: str) -> tuple[str, str]:
    """(stored name, what from_pretrained loads) for ``kind:ref``."""
    if kind not in KINDS:
        raise ConfigError(f"unknown vision tower {kind!r}; one of {', '.join(KINDS)}")
    ref = (ref or "").strip()
    if not ref:
        raise ConfigError(f"encoder {kind}: needs a model, e.g. {kind}:openai/clip-vit-base-patch32 or {kind}:/path")
    p = Path(ref).expanduser()
    if p.is_dir():
        path = str(p.resolve())
        return f"{kind}:{path}", path
    if ref.startswith((".", "/", "~")):
        raise ConfigError(f"encoder {kind}: {ref} is not a folder")
    return f"{kind}:{ref}", ref


class HFVisionEncoder(EncoderBase):
    def __init__(self, kind: str, ref: str, *, device: str = "auto", dtype: str = "float32"):
        import torch

        self.name, self.path = canonical(kind, ref)
        self.kind = kind
        self.device = pick_device(device)
        try:
            self.dtype = {"float32": torch.float32, "float16": torch.float16,
                          "bfloat16": torch.bfloat16}[dtype]
        except KeyError:
            raise ConfigError(f"dtype must be float32, float16 or bfloat16, not {dtype!r}") from None
        if self.device == "cpu":
            self.dtype = torch.float32
        self._torch = torch
        if kind == "clip":
            from transformers import CLIPVisionModelWithProjection as Model
            from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil as Proc
        else:
            from transformers import SiglipVisionModel as Model
            from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil as Proc
        from transformers import AutoConfig
        from transformers.utils import logging as hf_logging

        level = hf_logging.get_verbosity()
        try:
            hf_logging.set_verbosity_error()   # the text tower's weights are skipped on purpose
            if os.environ.get("POSTERKG_PROGRESS") == "0":
                hf_logging.disable_progress_bar()   # transformers' own "Loading weights" bar
            config = AutoConfig.from_pretrained(self.path)
            if getattr(config, "model_type", "") == kind:     # a full CLIP / SigLIP checkpoint
                vision = config.vision_config
                if kind == "clip":   # the projection size lives in the top-level config
                    vision.projection_dim = config.projection_dim
                config = vision
            self.model = Model.from_pretrained(self.path, config=config, dtype=self.dtype).to(self.device).eval()
        except (OSError, ValueError) as exc:
            offline = os.environ.get("HF_HUB_OFFLINE") == "1"
            hint = " (HF_HUB_OFFLINE=1: it must already be in the local cache)" if offline else ""
            raise EncoderUnavailable(
                f"cannot load the {kind} vision model {self.path!r}{hint}: {str(exc).splitlines()[0]}") from exc
        finally:
            hf_logging.set_verbosity(level)
        cfg = self.model.config
        try:
            self.processor = Proc.from_pretrained(self.path)
        except (OSError, ValueError):
            size = int(cfg.image_size)
            self.processor = (Proc(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
                              if kind == "clip" else Proc(size={"height": size, "width": size}))
        self.dim = int(cfg.projection_dim if kind == "clip" else cfg.hidden_size)

    def prepare(self, images: Sequence[Image.Image]) -> Any:
        out = self.processor(images=[to_rgb(im) for im in images], return_tensors="pt")
        return out["pixel_values"]

    def encode_prepared(self, batch: Any) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            out = self.model(pixel_values=batch.to(self.device, self.dtype))
            vec = out.image_embeds if self.kind == "clip" else out.pooler_output
        return vec.float().cpu().numpy().astype(np.float32, copy=False)

    def close(self) -> None:
        self.model = None
