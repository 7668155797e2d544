"""Text-only generation on the tagging backends (``hf``, ``vllm``, ``openai``).

The tagging backends (:mod:`posterkg.vlm.hf_backend`, ``vllm_backend``, ``openai_backend``) are
built for one poster per prompt. Interests need the same models, chat templates, constrained
decoding and budgets, with no image and one JSON schema *per user* (the evidence enum is the
user's own movies). Rather than editing those modules (shared with the tagging stage), each
adapter here wraps a backend instance made by :func:`posterkg.vlm.backends.get_backend` and uses
only its public attributes (``lm``, ``tokenizer``, ``stop_ids``, ``device``, ``family`` /
``llm``, ``opts`` / ``client``, ``pool``):

* the prompt is the family's chat template around the text (:func:`posterkg.vlm.chat.text_prompt_text`;
  ``openai`` sends :func:`posterkg.vlm.chat.text_messages` and the server renders it);
* ``hf``: a batch is left-padded and decoded greedily with one xgrammar grammar per row
  (``any_whitespace=False``, the separators the budget assumes), compiled without cache (schemas
  are per user), through the tagging backend's own :func:`posterkg.vlm.common.constrained_generate`
  (completion judged from the EOS or the matcher, as in tagging); CUDA out of memory retries the
  batch in halves (:func:`posterkg.vlm.common.retry_halves`);
* ``vllm``: one ``generate()`` per batch with one ``SamplingParams`` per user (its own JSON
  schema and budget; the engine was built with ``disable_any_whitespace``);
* ``openai``: one chat request per user, concurrently, ``response_format`` = the user's schema.

A text-only model (a local folder or cached id whose config.json is no VLM family, e.g.
Qwen2.5-Instruct) goes through ``hf`` as ``AutoModelForCausalLM`` with its own chat template
(:class:`_TextLM`); ``vllm`` and ``openai`` serve the VLM families (a text model under ``vllm``
is untested).

Each adapter has ``name``, ``model``, ``count_tokens(question) -> int | None`` (tokens of the
rendered prompt, None when the server tokenizes) and ``generate(requests) -> list[dict]`` with
``raw``, ``finish_reason``, ``output_tokens``, ``error``, ``reason`` per request.
"""

from __future__ import annotations

import json
from typing import Any

from posterkg.errors import ConfigError
from posterkg.interests.spec import Request
from posterkg.vlm import chat, common
from posterkg.vlm.knowledge import SEPARATORS


def _is_oom(exc: BaseException) -> bool:
    text = f"{type(exc).__name__}: {exc}".lower()
    return "out of memory" in text or "outofmemory" in text


def _result(raw=None, finish_reason=None, output_tokens=None, error=None, reason=None) -> dict:
    return {"raw": raw, "finish_reason": finish_reason, "output_tokens": output_tokens,
            "error": error, "reason": reason}


class HFText:
    """Text-only, per-row-grammar generation on an :class:`~posterkg.vlm.hf_backend.HFBackend`."""

    def __init__(self, backend):
        import xgrammar as xgr

        self.backend = backend
        self.name, self.model = backend.name, backend.model
        vocab_size = backend.lm.get_output_embeddings().weight.shape[0]
        info = xgr.TokenizerInfo.from_huggingface(backend.tokenizer, vocab_size=vocab_size,
                                                  stop_token_ids=backend.stop_ids)
        self.compiler = xgr.GrammarCompiler(info, cache_enabled=False)

    def prompt(self, question: str) -> str:
        if isinstance(self.backend, _TextLM):
            return self.backend.prompt(question)
        return chat.text_prompt_text(question, self.backend.family)

    def count_tokens(self, question: str) -> int:
        return len(self.backend.tokenizer(self.prompt(question)).input_ids)

    def generate(self, reqs: list[Request]) -> list[dict]:
        return common.retry_halves(reqs, self._generate, lambda r, exc: _result(
            error=f"out of memory: {exc}"[:500], reason="out_of_memory"))

    def _generate(self, reqs: list[Request]) -> list[dict]:
        b = self.backend
        grammars = [self.compiler.compile_json_schema(json.dumps(r.json_schema), any_whitespace=False,
                                                      separators=SEPARATORS) for r in reqs]
        inputs = b.tokenizer([self.prompt(r.question) for r in reqs], padding=True,
                             return_tensors="pt").to(b.device)
        rows = common.constrained_generate(b.lm, b.tokenizer, inputs, grammars,
                                           max_new_tokens=max(r.max_tokens for r in reqs),
                                           stop_ids=b.stop_ids)
        results = []
        for r, (toks, finish, n_out) in zip(reqs, rows):
            if len(toks) > r.max_tokens:     # a longer row of the batch ran past this one's budget
                finish = "length"
            results.append(_result(b.tokenizer.decode(toks, skip_special_tokens=True), finish, n_out))
        return results

    def close(self) -> None:
        self.backend.close()


class _TextLM:
    """A text-only causal LM (``AutoModelForCausalLM``, e.g. Qwen2.5-Instruct) with the attributes
    :class:`HFText` uses (``lm``, ``tokenizer``, ``stop_ids``, ``device``); its prompt is the
    model's own chat template. Options: ``device``, ``dtype``, ``attn_implementation``,
    ``trust_remote_code`` (the keys of ``[tag.hf]`` that apply to a text model)."""

    name = "hf"
    KNOWN = {"device", "dtype", "attn_implementation", "trust_remote_code", "family", "max_tokens",
             "min_pixels", "max_pixels"}

    def __init__(self, model: str, **options: Any):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        unknown = sorted(set(options) - self.KNOWN)
        if unknown:
            raise ConfigError(f"unknown key(s) in [interests.hf]: {', '.join(unknown)}; "
                              f"known: {', '.join(sorted(self.KNOWN))}")
        self.model = model
        dev = options.get("device", "auto")
        self.device = torch.device("cuda" if dev == "auto" and torch.cuda.is_available()
                                   else ("cpu" if dev == "auto" else dev))
        dtype = options.get("dtype", "auto")
        if dtype == "auto":
            dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        else:
            dtype = getattr(torch, dtype, None)
            if not isinstance(dtype, torch.dtype):
                raise ConfigError(f"[interests.hf] dtype {options['dtype']!r} is not a torch dtype")
        trust = bool(options.get("trust_remote_code", False))
        self.tokenizer = AutoTokenizer.from_pretrained(model, trust_remote_code=trust)
        self.tokenizer.padding_side = "left"
        if not self.tokenizer.chat_template:
            raise ConfigError(f"text model {model!r} has no chat template in its tokenizer")
        kw: dict[str, Any] = {"dtype": dtype, "trust_remote_code": trust}
        if options.get("attn_implementation"):
            kw["attn_implementation"] = options["attn_implementation"]
        self.lm = AutoModelForCausalLM.from_pretrained(model, **kw).to(self.device).eval()
        self.stop_ids = common.stop_token_ids(self.lm, self.tokenizer,
                                              ("<|im_end|>", "<|endoftext|>", "</s>", "<|eot_id|>"))
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token_id = self.stop_ids[0]

    def prompt(self, question: str) -> str:
        return self.tokenizer.apply_chat_template([{"role": "user", "content": question}],
                                                  add_generation_prompt=True, tokenize=False)

    def close(self) -> None:
        self.lm = None


def is_text_model(model: str | None) -> bool:
    """A local (or locally cached) model whose config.json is not one of the VLM families."""
    if not model:
        return False
    cfg = chat._local_config(model)
    return cfg is not None and cfg.get("model_type") not in chat.MODEL_TYPES \
        and "vision_config" not in cfg


class VLLMText:
    """Text-only generation on a :class:`~posterkg.vlm.vllm_backend.VLLMBackend`'s engine."""

    def __init__(self, backend, context_tokens: int):
        self.backend = backend
        self.name, self.model = backend.name, backend.model
        mml = getattr(backend.opts, "max_model_len", 0)
        if mml and context_tokens > mml:
            raise ConfigError(f"[interests] context_tokens {context_tokens} > the engine's "
                              f"max_model_len {mml}; raise [interests.vllm] max_model_len")
        self.tokenizer = backend.llm.get_tokenizer()

    def prompt(self, question: str) -> str:
        return chat.text_prompt_text(question, self.backend.family)

    def count_tokens(self, question: str) -> int:
        return len(self.tokenizer(self.prompt(question)).input_ids)

    def generate(self, reqs: list[Request]) -> list[dict]:
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        params = [SamplingParams(temperature=0.0, max_tokens=r.max_tokens,
                                 structured_outputs=StructuredOutputsParams(json=r.json_schema))
                  for r in reqs]
        outs = self.backend.llm.generate([{"prompt": self.prompt(r.question)} for r in reqs], params,
                                         use_tqdm=False)
        results = []
        for out in outs:
            comp = out.outputs[0]
            results.append(_result(comp.text, comp.finish_reason, len(comp.token_ids)))
        return results

    def close(self) -> None:
        self.backend.close()


class OpenAIText:
    """Text-only requests through an :class:`~posterkg.vlm.openai_backend.OpenAIBackend`'s client."""

    SCHEMA_NAME = "user_interests"

    def __init__(self, backend):
        self.backend = backend
        self.name, self.model = backend.name, backend.model

    def count_tokens(self, question: str) -> None:
        return None     # the server renders and tokenizes; the runner uses a byte bound

    def _one(self, r: Request) -> dict:
        b = self.backend
        openai = b._openai if hasattr(b, "_openai") else __import__("openai")
        try:
            resp = b.client.chat.completions.create(
                model=b.model, messages=chat.text_messages(r.question), temperature=0.0,
                max_tokens=r.max_tokens,
                response_format={"type": "json_schema", "json_schema": {
                    "name": self.SCHEMA_NAME, "schema": r.json_schema, "strict": b.opts.strict}},
                extra_body=b.opts.extra_body or None)
        except openai.APIError as exc:
            text = f"{type(exc).__name__}: {exc}"
            return _result(error=text[:500], reason="out_of_memory" if _is_oom(exc) else "backend_error")
        if not resp.choices:
            return _result(error="server returned no choices", reason="backend_error")
        usage = getattr(resp, "usage", None)
        choice = resp.choices[0]
        return _result(choice.message.content or "", choice.finish_reason,
                       getattr(usage, "completion_tokens", None))

    def generate(self, reqs: list[Request]) -> list[dict]:
        futures = [self.backend.pool.submit(self._one, r) for r in reqs]
        return [f.result() for f in futures]

    def close(self) -> None:
        self.backend.close()


def text_generator(name: str, model: str | None, options: dict[str, Any], *, context_tokens: int):
    """A tagging backend made by ``get_backend`` wrapped for text-only generation."""
    from posterkg.vlm.backends import get_backend

    if name not in ("hf", "vllm", "openai"):
        raise ConfigError(f"unknown interests backend {name!r}; choose stats, hf, vllm or openai")
    if name == "hf" and is_text_model(model):
        backend = _TextLM(model, **options)       # a text-only model id: its own chat template
        try:
            return HFText(backend)
        except BaseException:
            backend.close()
            raise
    if name == "vllm":
        options = {"max_model_len": context_tokens, **options}   # the engine must hold the context
    backend = get_backend(name, model, **options)
    try:
        if name == "hf":
            return HFText(backend)
        if name == "vllm":
            return VLLMText(backend, context_tokens)
        return OpenAIText(backend)
    except BaseException:
        backend.close()
        raise
