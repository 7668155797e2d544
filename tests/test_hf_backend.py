"""The ``hf`` backend (transformers + xgrammar) on a tiny random Qwen2-VL, CPU, no hub.

Real posters from ../shared/data/ml-1m/posters go through the real runner; the weights are random,
so the answers are nonsense, but constrained decoding must still make every one of them a
complete, schema-valid object within the schema's token budget.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jsonschema
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from tiny_vlm import poster_db  # noqa: E402

from posterkg.store import open_store  # noqa: E402
from posterkg.vlm import chat  # noqa: E402
from posterkg.vlm.base import PosterJob, TagResult  # noqa: E402
from posterkg.vlm.knowledge import load_schema  # noqa: E402
from posterkg.vlm.runner import tag_posters  # noqa: E402

pytestmark = pytest.mark.slow

VOCAB = {
    "Color_Palette": ["warm", "cool", "neutral", "red and black"],
    "Visual_Mood": ["dark", "joyful", "tense"],
    "Lighting": ["low-key", "high-key"],
    "Typography": ["bold sans-serif title", "handwritten script"],
}


@pytest.fixture(scope="module")
def backend(tiny_vlm_dir):
    from posterkg.vlm.backends import get_backend

    b = get_backend("hf", str(tiny_vlm_dir), device="cpu")
    yield b
    b.close()


@pytest.fixture(scope="module")
def schema():
    return load_schema()


@pytest.fixture(scope="module")
def clean_run(backend, schema, ml1m_dir, tmp_path_factory):
    """One uninterrupted open-mode run over 8 real posters, batches of 4."""
    db = poster_db(tmp_path_factory.mktemp("hf-clean"), ml1m_dir / "posters", 8)
    spec = schema.build_spec()
    with open_store(db) as store:
        summary = tag_posters(store, backend, spec, batch_size=4)
    return db, spec, summary


def _rows(db: Path, backend_model: str):
    with open_store(db, read_only=True) as store:
        return sorted(store.execute(
            "SELECT movie_id, type, value, confidence FROM raw_points WHERE model = ? "
            "ORDER BY ALL", [backend_model]).fetchall())


def _answers(db: Path) -> dict[int, dict]:
    """Stored points regrouped per poster as the answer object they came from."""
    out: dict[int, dict] = {}
    with open_store(db, read_only=True) as store:
        for m, t, v, c in store.execute("SELECT movie_id, type, value, confidence FROM raw_points").fetchall():
            c = int(c) if float(c).is_integer() else c
            out.setdefault(m, {"points": []})["points"].append({"type": t, "value": v, "confidence": c})
    return out


def test_prompt_matches_the_models_chat_template(tiny_vlm_dir):
    from posterkg.vlm.qwen_processor import load_processor

    proc = load_processor(str(tiny_vlm_dir))
    rendered = proc.apply_chat_template(chat.messages("Tag this poster."), add_generation_prompt=True,
                                        tokenize=False)
    assert rendered == chat.prompt_text("Tag this poster.", "qwen2_vl")
    assert chat.detect_family(str(tiny_vlm_dir)) == "qwen2_vl"


def test_open_mode_eight_posters_all_valid(clean_run, schema, backend, ml1m_dir):
    db, spec, summary = clean_run
    assert summary["done"] == 8 and summary["failed"] == 0, summary
    answers = _answers(db)
    # one answer for each of the 8 posters put in the database: the lowest 8 movie ids on disk
    first_eight = sorted(int(p.stem) for p in (ml1m_dir / "posters").glob("*.jpg") if p.stem.isdigit())[:8]
    assert sorted(answers) == first_eight
    for movie_id, obj in answers.items():
        jsonschema.validate(obj, spec.json_schema)          # every stored output validates
        assert 1 <= len(obj["points"]) <= schema.max_points
    with open_store(db, read_only=True) as store:
        statuses = store.execute("SELECT status, count(*) FROM tag_status GROUP BY 1").fetchall()
        assert statuses == [("done", 8)]
        keys = store.execute("SELECT DISTINCT backend, model, schema_hash FROM raw_points").fetchall()
    assert keys == [("hf", backend.model, spec.schema_hash)]


def test_budget_from_schema_is_never_exceeded(backend, schema, ml1m_dir):
    """Straight from the backend: every answer ends by itself (EOS), inside max_tokens."""
    spec = schema.build_spec()
    jobs = [PosterJob(m, ml1m_dir / "posters" / f"{m}.jpg") for m in (1, 2, 3)]
    results = backend.tag_batch(jobs, spec)
    assert [r.movie_id for r in results] == [1, 2, 3]
    for r in results:
        assert r.error is None and r.finish_reason == "stop", r
        assert len(backend.tokenizer(r.raw).input_ids) < spec.max_tokens
        jsonschema.validate(json.loads(r.raw), spec.json_schema)


def test_batched_equals_one_by_one(backend, schema, ml1m_dir):
    """Left padding must not change what a poster gets: batch of 3 == 3 single calls."""
    spec = schema.build_spec()
    jobs = [PosterJob(m, ml1m_dir / "posters" / f"{m}.jpg") for m in (2, 5, 7)]
    batched = [r.raw for r in backend.tag_batch(jobs, spec)]
    single = [backend.tag_batch([j], spec)[0].raw for j in jobs]
    assert batched == single
    assert len(set(single)) > 1   # different posters, different answers: the image is used


def test_closed_mode_values_in_vocabulary(backend, schema, ml1m_dir, tmp_path):
    db = poster_db(tmp_path, ml1m_dir / "posters", 8)
    spec = schema.build_spec(VOCAB)
    with open_store(db) as store:
        summary = tag_posters(store, backend, spec, batch_size=4)
    assert summary["done"] == 8 and summary["failed"] == 0, summary
    rows = _rows(db, backend.model)
    assert len({r[0] for r in rows}) == 8
    for _, t, v, c in rows:
        assert t in VOCAB and v in VOCAB[t], (t, v)
        assert c in schema.confidence_levels


class _Interrupt(BaseException):
    pass


class _DiesOnSecondBatch:
    """Wraps a backend; the second batch 'crashes the process' (an exception no one catches)."""

    def __init__(self, inner):
        self.inner, self.name, self.model, self.calls = inner, inner.name, inner.model, 0

    def tag_batch(self, jobs, spec):
        self.calls += 1
        if self.calls == 2:
            raise _Interrupt("killed")
        return self.inner.tag_batch(jobs, spec)

    def close(self):
        pass


def test_resume_after_interruption_equals_clean_run(clean_run, backend, ml1m_dir, tmp_path):
    clean_db, spec, _ = clean_run
    db = poster_db(tmp_path, ml1m_dir / "posters", 8)
    with open_store(db) as store:
        with pytest.raises(_Interrupt):
            tag_posters(store, _DiesOnSecondBatch(backend), spec, batch_size=4)
        half = store.execute("SELECT count(DISTINCT movie_id) FROM raw_points").fetchone()[0]
        assert half == 4                                  # the batch in flight is lost, no part of it kept
        again = tag_posters(store, backend, spec, batch_size=4)
    assert again["skipped"] == 4 and again["done"] == 4 and again["failed"] == 0
    assert _rows(db, backend.model) == _rows(clean_db, backend.model)


def test_too_small_budget_is_recorded_as_truncated(backend, schema, ml1m_dir, tmp_path):
    db = poster_db(tmp_path, ml1m_dir / "posters", 3)
    spec = schema.build_spec()
    backend.opts.max_tokens = 6
    try:
        with open_store(db) as store:
            summary = tag_posters(store, backend, spec, batch_size=2)
            reasons = store.execute("SELECT reason, count(*) FROM tag_status GROUP BY 1").fetchall()
            assert store.execute("SELECT count(*) FROM raw_points").fetchone()[0] == 0
    finally:
        backend.opts.max_tokens = 0
    assert summary["failed"] == 3 and summary["done"] == 0   # every batch ran: the run went on
    assert reasons == [("truncated", 3)]
    with open_store(db) as store:                            # and --retry-failed repairs them
        retry = tag_posters(store, backend, spec, batch_size=3, retry_failed=True)
    assert retry["done"] == 3 and retry["failed"] == 0


def test_corrupt_poster_fails_alone(backend, schema, ml1m_dir, tmp_path):
    bad = tmp_path / "999.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    spec = schema.build_spec()
    results = backend.tag_batch([PosterJob(999, bad), PosterJob(1, ml1m_dir / "posters" / "1.jpg")], spec)
    assert results[0].reason == "corrupt_image" and results[0].raw is None
    assert results[1].error is None and results[1].finish_reason == "stop"


def test_out_of_memory_splits_the_batch_and_records_the_poster(backend, schema, monkeypatch):
    """A CUDA OOM frees the cache, retries in halves; a poster that alone does not fit is recorded."""
    import torch

    calls: list[list[int]] = []

    def fake_generate(ready, spec):
        ids = [j.movie_id for j, _ in ready]
        calls.append(ids)
        if len(ids) > 2 or 13 in ids:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return [TagResult(i, raw='{"points": []}', finish_reason="stop") for i in ids]

    monkeypatch.setattr(backend, "_generate", fake_generate)
    from posterkg.vlm import common
    monkeypatch.setattr(common, "model_image", lambda path, family, opts: object())
    jobs = [PosterJob(m, Path(f"{m}.jpg")) for m in (11, 12, 13, 14)]
    results = backend.tag_batch(jobs, schema.build_spec())
    assert [r.movie_id for r in results] == [11, 12, 13, 14]
    assert [r.reason for r in results] == [None, None, "out_of_memory", None]
    assert calls == [[11, 12, 13, 14], [11, 12], [13, 14], [13], [14]]


def test_unknown_option_is_a_config_error(tiny_vlm_dir):
    from posterkg.errors import ConfigError
    from posterkg.vlm.backends import get_backend

    with pytest.raises(ConfigError, match="max_pixel"):
        get_backend("hf", str(tiny_vlm_dir), max_pixel=100)
