"""What the model-backed taggers (``hf``, ``vllm``, ``openai``) share.

* :func:`parse_options` builds a backend's options dataclass from its ``[tag.<name>]`` section;
* :func:`model_image` loads a poster at the backend's pixel budget (Qwen2-VL families get sides
  in multiples of their 28-pixel visual token block);
* :func:`token_budget` is the answer's token cap: the schema's guaranteed budget unless the
  backend's ``max_tokens`` option forces a (smaller) one;
* :func:`tag_batch` is the batch loop of the local backends (``hf``, ``vllm``): load every poster
  (an undecodable one gives ``corrupt_image``), then generate through :func:`generate_safe`,
  which on out-of-memory frees the accelerator cache and retries the batch in halves, recording
  ``out_of_memory`` for a poster that alone does not fit.

A backend keeps only what is its own: loading its model and one ``generate(ready, spec)`` call
from ``[(PosterJob, image), ...]`` to one :class:`~posterkg.vlm.base.TagResult` per poster.
"""

from __future__ import annotations

from typing import Any, Callable

from posterkg.errors import ConfigError
from posterkg.vlm.base import PosterJob, TagResult, TagSpec
from posterkg.vlm.images import CorruptImage, load_poster

QWEN_BLOCK = 28   # pixels per merged visual token side (patch 14 x spatial merge 2)

Ready = list[tuple[PosterJob, Any]]
Generate = Callable[[Ready, TagSpec], list[TagResult]]


def parse_options(cls: type, options: dict[str, Any], section: str):
    """Build an options dataclass; unknown keys and values of the wrong type are a
    :class:`ConfigError` naming the key (the one validator, :func:`posterkg.config.check_fields`)."""
    from posterkg.config import check_fields

    opts = cls(**check_fields(cls, options, f"[{section}]"))
    if getattr(opts, "min_pixels", 0) and getattr(opts, "max_pixels", 0) and opts.min_pixels > opts.max_pixels:
        raise ConfigError(f"[{section}]: min_pixels {opts.min_pixels} > max_pixels {opts.max_pixels}")
    return opts


def model_image(path, family: str | None, opts: Any):
    """Load a poster at the backend's pixel budget (``opts.min_pixels``/``opts.max_pixels``);
    Qwen2-VL families get sides in multiples of their 28-pixel visual token block."""
    multiple = QWEN_BLOCK if family in ("qwen2_vl", "qwen2_5_vl") else None
    return load_poster(path, min_pixels=opts.min_pixels, max_pixels=opts.max_pixels, multiple=multiple)


def token_budget(opts: Any, spec: TagSpec) -> int:
    """``opts.max_tokens`` when it is set (> 0), else the schema's guaranteed budget."""
    return opts.max_tokens if opts.max_tokens > 0 else spec.max_tokens


def is_oom(exc: BaseException) -> bool:
    import torch

    oom_types = tuple(t for t in (getattr(torch, "OutOfMemoryError", None),
                                  getattr(torch.cuda, "OutOfMemoryError", None)) if t is not None)
    return isinstance(exc, oom_types) or "out of memory" in str(exc).lower()


def free_accelerator_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def tag_batch(jobs: list[PosterJob], spec: TagSpec, family: str | None, opts: Any,
              generate: Generate) -> list[TagResult]:
    """One result per job, in order: undecodable posters give ``corrupt_image``, the others go
    through :func:`generate_safe` in one batch."""
    results: dict[int, TagResult] = {}
    ready: Ready = []
    for job in jobs:
        try:
            ready.append((job, model_image(job.path, family, opts)))
        except CorruptImage as exc:
            results[job.movie_id] = TagResult(job.movie_id, error=str(exc), reason="corrupt_image")
    if ready:
        for r in generate_safe(ready, spec, generate):
            results[r.movie_id] = r
    return [results[j.movie_id] for j in jobs]


def generate_safe(ready: Ready, spec: TagSpec, generate: Generate) -> list[TagResult]:
    """``generate``; on out-of-memory free the cache and retry in halves, down to one poster."""
    try:
        return generate(ready, spec)
    except Exception as exc:  # noqa: BLE001 - only OOM is handled here; the runner does the rest
        if not is_oom(exc):
            raise
        free_accelerator_memory()
        if len(ready) == 1:
            job = ready[0][0]
            return [TagResult(job.movie_id, error=f"out of memory: {exc}"[:500], reason="out_of_memory")]
        mid = len(ready) // 2
        return generate_safe(ready[:mid], spec, generate) + generate_safe(ready[mid:], spec, generate)
