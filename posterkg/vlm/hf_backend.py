"""``hf`` backend: transformers ``generate()``, batched, constrained by an xgrammar logits processor.

Runs on CPU or GPU (``device = "auto"`` picks CUDA when torch sees one). Each batch of posters is
loaded and resized to the pixel budget (:func:`posterkg.vlm.images.load_poster`), put in the
model family's prompt (:mod:`posterkg.vlm.chat`), left-padded (decoder-only models must be padded
on the left for batched generation) and decoded greedily with the answer's JSON schema enforced
token by token:

* the grammar is compiled once per JSON schema with ``any_whitespace=False`` and the separators
  the token budget assumes (``TagSpec.separators``), so ``TagSpec.max_tokens`` always fits a
  complete answer (``../shared/notes/platform.md``: with free whitespace a weak model pads with
  spaces until it runs out of tokens);
* a fresh ``xgrammar.contrib.hf.LogitsProcessor`` is built per ``generate()`` call (it keeps
  per-call matcher state);
* the processor never sees the final end-of-sequence token, so whether an answer is complete is
  decided from the EOS in the output or ``matcher.is_completed()``, not ``is_terminated()``.

Each result carries the raw text and ``finish_reason`` (``stop`` or ``length``); the runner
validates it. A poster that cannot be decoded gives reason ``corrupt_image``. CUDA out of memory
(``torch.OutOfMemoryError``) frees the cache and retries the batch in halves; a single poster that
still does not fit is recorded as ``out_of_memory`` and the run goes on.

Options (``[tag.hf]`` in the configuration; ``posterkg tag --backend hf --model M``):

=====================  =============  ==========================================================
key                    default        meaning
=====================  =============  ==========================================================
``device``             ``"auto"``     ``"cpu"``, ``"cuda"``, ``"cuda:1"`` ...
``dtype``              ``"auto"``     ``bfloat16`` on CUDA, ``float32`` on CPU; or a torch dtype name
``family``             ``"auto"``     prompt family (:mod:`posterkg.vlm.chat`); auto = detect
``min_pixels``         ``3136``       pixel budget per poster (Qwen2-VL: 28x28 pixels per token)
``max_pixels``         ``401408``     (at most 512 visual tokens with Qwen2-VL)
``max_tokens``         ``0``          0 = the schema's guaranteed budget; >0 forces a (smaller) cap
``attn_implementation`` ``""``        ``""`` = transformers' default (sdpa); ``"flash_attention_2"``
``trust_remote_code``  ``false``      passed to ``from_pretrained``
=====================  =============  ==========================================================
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from posterkg.errors import ConfigError
from posterkg.vlm import chat, common
from posterkg.vlm.base import PosterJob, TagResult, TagSpec
from posterkg.vlm.common import free_accelerator_memory, parse_options

DEFAULT_MODEL = "Qwen/Qwen2-VL-2B-Instruct"


@dataclasses.dataclass
class HFOptions:
    device: str = "auto"
    dtype: str = "auto"
    family: str = "auto"
    min_pixels: int = 3136
    max_pixels: int = 401408
    max_tokens: int = 0
    attn_implementation: str = ""
    trust_remote_code: bool = False


class HFBackend:
    """Tag posters with a transformers vision-language model (see the module docstring)."""

    name = "hf"

    def __init__(self, model: str | None = None, **options: Any):
        import torch
        from transformers import AutoModelForImageTextToText

        self.model = model or DEFAULT_MODEL
        self.opts: HFOptions = parse_options(HFOptions, options, "tag.hf")
        self.family = chat.detect_family(self.model, self.opts.family)
        dev = self.opts.device
        if dev == "auto":
            dev = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(dev)
        if self.opts.dtype == "auto":
            dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        else:
            dtype = getattr(torch, self.opts.dtype, None)
            if not isinstance(dtype, torch.dtype):
                raise ConfigError(f"[tag.hf] dtype {self.opts.dtype!r} is not a torch dtype")
        self.processor = self._load_processor()
        self.tokenizer = self.processor.tokenizer
        self.tokenizer.padding_side = "left"
        kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": self.opts.trust_remote_code}
        if self.opts.attn_implementation:
            kwargs["attn_implementation"] = self.opts.attn_implementation
        self.lm = AutoModelForImageTextToText.from_pretrained(self.model, **kwargs).to(self.device).eval()
        self.stop_ids = self._stop_ids()
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token_id = self.stop_ids[0]
        self._tokenizer_info = None
        self._grammars: dict[str, Any] = {}

    # -- loading ---------------------------------------------------------------------------------
    def _load_processor(self):
        px = {"min_pixels": self.opts.min_pixels, "max_pixels": self.opts.max_pixels}
        if self.family in ("qwen2_vl", "qwen2_5_vl"):
            from posterkg.vlm.qwen_processor import load_processor

            return load_processor(self.model, **px)
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(self.model, trust_remote_code=self.opts.trust_remote_code)

    def _stop_ids(self) -> list[int]:
        return common.stop_token_ids(self.lm, self.tokenizer, chat.stop_tokens(self.family))

    def _grammar(self, spec: TagSpec):
        import xgrammar as xgr

        key = json.dumps([spec.json_schema, list(spec.separators)], sort_keys=True)
        if key not in self._grammars:
            if self._tokenizer_info is None:
                vocab_size = self.lm.get_output_embeddings().weight.shape[0]
                self._tokenizer_info = xgr.TokenizerInfo.from_huggingface(
                    self.tokenizer, vocab_size=vocab_size, stop_token_ids=self.stop_ids)
                self._compiler = xgr.GrammarCompiler(self._tokenizer_info)
            self._grammars[key] = self._compiler.compile_json_schema(
                json.dumps(spec.json_schema), any_whitespace=False,
                separators=tuple(spec.separators))
        return self._grammars[key]

    # -- tagging ---------------------------------------------------------------------------------
    def tag_batch(self, jobs: list[PosterJob], spec: TagSpec) -> list[TagResult]:
        return common.tag_batch(jobs, spec, self.family, self.opts, self._generate)

    def _generate(self, ready: list[tuple[PosterJob, Any]], spec: TagSpec) -> list[TagResult]:
        prompt = chat.prompt_text(spec.prompt, self.family)
        inputs = self.processor(text=[prompt] * len(ready), images=[img for _, img in ready],
                                padding=True, return_tensors="pt").to(self.device)
        rows = common.constrained_generate(self.lm, self.tokenizer, inputs, self._grammar(spec),
                                           max_new_tokens=common.token_budget(self.opts, spec),
                                           stop_ids=self.stop_ids)
        return [TagResult(job.movie_id, raw=self.tokenizer.decode(toks, skip_special_tokens=True),
                          finish_reason=finish) for (job, _), (toks, finish, _) in zip(ready, rows)]

    def close(self) -> None:
        self.lm = None
        self._grammars.clear()
        free_accelerator_memory()


def create(model: str | None = None, **options: Any) -> HFBackend:
    return HFBackend(model, **options)
