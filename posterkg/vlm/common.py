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

* :func:`constrained_generate` is the transformers side of the ``hf`` backend and of the
  interests' text-only ``hf`` generation (:mod:`posterkg.interests.generate`): greedy
  ``generate()`` under a fresh xgrammar logits processor (one grammar, or one per row), then per
  row the answer's tokens and whether it ended (EOS, or the grammar complete:
  :func:`grammar_completed`) or ran out of tokens; :func:`stop_token_ids` collects the ids that
  end an answer; :func:`retry_halves` is the out-of-memory halving both use.

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


def retry_halves(items: list, call: Callable[[list], list], on_single_oom: Callable[[Any, BaseException], Any]) -> list:
    """``call(items)``; on out-of-memory free the accelerator cache and retry in halves, down to
    one item, whose result is then ``on_single_oom(item, exc)``. Other errors propagate."""
    try:
        return call(items)
    except Exception as exc:  # noqa: BLE001 - only OOM is handled here; the runner does the rest
        if not is_oom(exc):
            raise
        free_accelerator_memory()
        if len(items) == 1:
            return [on_single_oom(items[0], exc)]
        mid = len(items) // 2
        return retry_halves(items[:mid], call, on_single_oom) + retry_halves(items[mid:], call, on_single_oom)


def generate_safe(ready: Ready, spec: TagSpec, generate: Generate) -> list[TagResult]:
    """``generate``; on out-of-memory free the cache and retry in halves, down to one poster."""
    return retry_halves(ready, lambda part: generate(part, spec), lambda item, exc: TagResult(
        item[0].movie_id, error=f"out of memory: {exc}"[:500], reason="out_of_memory"))


# -- transformers generation under a grammar (hf tagging, hf interests) -------------------------
def stop_token_ids(lm, tokenizer, tokens) -> list[int]:
    """The ids that end an answer: the generation config's EOS id(s), the tokenizer's EOS, and
    the ``tokens`` (e.g. ``<|im_end|>``) the vocabulary has; unique, in that order."""
    ids: list[int] = []
    gen_eos = getattr(lm.generation_config, "eos_token_id", None)
    ids += [int(x) for x in ([gen_eos] if isinstance(gen_eos, int) else list(gen_eos or []))]
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    vocab = tokenizer.get_vocab()
    ids += [int(vocab[t]) for t in tokens if t in vocab]
    return list(dict.fromkeys(ids))


def grammar_completed(lp, row: int, toks: list[int]) -> bool:
    """Did the grammar of ``row`` accept a complete answer? The xgrammar processor has seen every
    token but the last one (it is called before each step), so feed that one and ask
    ``is_completed()`` (``is_terminated()`` needs the EOS it never sees)."""
    if not lp.matchers or not toks:
        return False
    m = lp.matchers[row]
    if m.is_terminated():
        return True
    try:
        m.accept_token(toks[-1])
    except Exception:  # noqa: BLE001 - a rejected token means not complete
        return False
    return m.is_completed()


def constrained_generate(lm, tokenizer, inputs, grammars, *, max_new_tokens: int,
                         stop_ids: list[int]) -> list[tuple[list[int], str, int]]:
    """Greedy ``lm.generate(**inputs)`` (a left-padded batch) under a fresh
    ``xgrammar.contrib.hf.LogitsProcessor(grammars)`` (one compiled grammar for every row, or a
    list with one per row). Per row: (the answer's tokens without the stop token and padding,
    ``"stop"`` when it ended with a stop token or a complete grammar else ``"length"``, output
    tokens including the stop token)."""
    import torch
    from xgrammar.contrib.hf import LogitsProcessor

    lp = LogitsProcessor(grammars)     # fresh per generate(): it holds matcher state
    with torch.inference_mode():
        out = lm.generate(
            **inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
            temperature=None, top_p=None, top_k=None, logits_processor=[lp],
            eos_token_id=stop_ids, pad_token_id=tokenizer.pad_token_id)
    new = out[:, inputs["input_ids"].shape[1]:].tolist()
    stops = set(stop_ids)
    rows = []
    for i, toks in enumerate(new):
        end = next((k for k, t in enumerate(toks) if t in stops), None)
        if end is not None:
            rows.append((toks[:end], "stop", end + 1))
            continue
        toks = [t for t in toks if t != tokenizer.pad_token_id]
        rows.append((toks, "stop" if grammar_completed(lp, i, toks) else "length", len(toks)))
    return rows
