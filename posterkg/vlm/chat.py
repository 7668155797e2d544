"""Prompts per model family: how one poster plus the tagging question is put to each VLM.

Families (``family`` config key of ``[tag.hf]`` / ``[tag.vllm]``; ``"auto"`` detects it):

==================  ==========================================================  =============
family              models                                                      image slot
==================  ==========================================================  =============
``qwen2_vl``        Qwen/Qwen2-VL-2B-Instruct (default), -7B, local copies      ``<|vision_start|><|image_pad|><|vision_end|>``
``qwen2_5_vl``      Qwen/Qwen2.5-VL-3B/7B-Instruct                              same as Qwen2-VL
``llava``           llava-hf/llava-1.5-7b-hf, -13b                              ``<image>`` (Vicuna ``USER:/ASSISTANT:``)
``llava_onevision`` llava-hf/llava-onevision-qwen2-0.5b-ov-hf, -7b              ``<image>`` (ChatML)
==================  ==========================================================  =============

The prompt strings are what each model's own chat template renders for one user turn holding
one image followed by the question (Qwen's templates add their default system turn). They are
written here rather than rendered from the tokenizer so that the offline engines (``hf``,
``vllm``) send exactly the same text whatever chat template a local copy ships, and so the
choice is testable; the ``openai`` backend sends :func:`messages` and lets the server render its
template.

Detection (:func:`detect_family`): the ``model_type`` of the model folder's ``config.json`` when
the model is a local path or in the local Hugging Face cache; otherwise the model id's name
(``Qwen2.5-VL`` -> ``qwen2_5_vl``, ``Qwen2-VL`` -> ``qwen2_vl``, ``onevision`` ->
``llava_onevision``, ``llava`` -> ``llava``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from posterkg.errors import ConfigError

FAMILIES = ("qwen2_vl", "qwen2_5_vl", "llava", "llava_onevision")

#: config.json ``model_type`` -> family
MODEL_TYPES = {
    "qwen2_vl": "qwen2_vl",
    "qwen2_5_vl": "qwen2_5_vl",
    "llava": "llava",
    "llava_onevision": "llava_onevision",
}

QWEN_SYSTEM = "You are a helpful assistant."
QWEN_IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"


def prompt_text(question: str, family: str) -> str:
    """The full prompt string for one image + ``question``, ending where the answer starts."""
    if family in ("qwen2_vl", "qwen2_5_vl"):
        return (f"<|im_start|>system\n{QWEN_SYSTEM}<|im_end|>\n"
                f"<|im_start|>user\n{QWEN_IMAGE}{question}<|im_end|>\n"
                f"<|im_start|>assistant\n")
    if family == "llava":
        return f"USER: <image>\n{question} ASSISTANT:"
    if family == "llava_onevision":
        return f"<|im_start|>user <image>\n{question}<|im_end|><|im_start|>assistant\n"
    raise ConfigError(f"unknown model family {family!r}; known: {', '.join(FAMILIES)}")


def text_prompt_text(question: str, family: str) -> str:
    """The full prompt string for a text-only ``question`` (no image), ending where the answer
    starts: what the family's chat template renders for one user turn holding only text."""
    if family in ("qwen2_vl", "qwen2_5_vl"):
        return (f"<|im_start|>system\n{QWEN_SYSTEM}<|im_end|>\n"
                f"<|im_start|>user\n{question}<|im_end|>\n"
                f"<|im_start|>assistant\n")
    if family == "llava":
        return f"USER: {question} ASSISTANT:"
    if family == "llava_onevision":
        return f"<|im_start|>user {question}<|im_end|><|im_start|>assistant\n"
    raise ConfigError(f"unknown model family {family!r}; known: {', '.join(FAMILIES)}")


def text_messages(question: str) -> list[dict[str, Any]]:
    """OpenAI-style chat messages for a text-only question: one user turn with one text part."""
    return [{"role": "user", "content": [{"type": "text", "text": question}]}]


def messages(question: str, image_url: str | None = None) -> list[dict[str, Any]]:
    """OpenAI-style chat messages: one user turn, the image first, then the question.

    With ``image_url`` (e.g. a ``data:image/jpeg;base64,...`` URL) the image part is an
    ``image_url`` part (OpenAI API); without it a bare ``{"type": "image"}`` placeholder
    (transformers' ``apply_chat_template``).
    """
    image = ({"type": "image_url", "image_url": {"url": image_url}} if image_url is not None
             else {"type": "image"})
    return [{"role": "user", "content": [image, {"type": "text", "text": question}]}]


def stop_tokens(family: str) -> list[str]:
    """Token strings that end an answer, besides the tokenizer's EOS."""
    if family in ("qwen2_vl", "qwen2_5_vl", "llava_onevision"):
        return ["<|im_end|>", "<|endoftext|>"]
    return ["</s>"]


def _local_config(model: str) -> dict[str, Any] | None:
    p = Path(model).expanduser()
    candidates = [p / "config.json"] if p.is_dir() else []
    if not candidates and "/" in model and not p.exists():
        try:  # the local HF cache only, never the network
            from huggingface_hub import try_to_load_from_cache

            hit = try_to_load_from_cache(model, "config.json")
            if isinstance(hit, str):
                candidates.append(Path(hit))
        except Exception:  # pragma: no cover - no hub library / odd cache
            pass
    for c in candidates:
        if c.is_file():
            try:
                return json.loads(c.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return None
    return None


def family_from_name(model: str) -> str | None:
    name = model.lower().replace("_", "-")
    if re.search(r"qwen2\.5-?vl|qwen2-5-vl", name):
        return "qwen2_5_vl"
    if re.search(r"qwen2-?vl", name):
        return "qwen2_vl"
    if "onevision" in name:
        return "llava_onevision"
    if "llava" in name:
        return "llava"
    return None


def detect_family(model: str, family: str | None = "auto") -> str:
    """The prompt family of ``model``: ``family`` when given, else from config.json or the name."""
    if family and family != "auto":
        if family not in FAMILIES:
            raise ConfigError(f"unknown model family {family!r}; known: auto, {', '.join(FAMILIES)}")
        return family
    cfg = _local_config(model)
    if cfg is not None:
        mt = cfg.get("model_type")
        if mt in MODEL_TYPES:
            return MODEL_TYPES[mt]
    fam = family_from_name(model)
    if fam is None:
        found = f"model_type {cfg.get('model_type')!r}" if cfg else "no config.json"
        raise ConfigError(
            f"cannot tell the prompt family of model {model!r} ({found}); set family to one of "
            f"{', '.join(FAMILIES)} in [tag.hf] / [tag.vllm]"
        )
    return fam
