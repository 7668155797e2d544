"""The tagging runner: storage, validation, failure records, resume, kill -9, the CLI."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from PIL import Image

from posterkg.ingest.posters import scan_posters
from posterkg.store import open_store
from posterkg.vlm.knowledge import load_schema
from posterkg.vlm.runner import tag_posters
from tag_tables import tag_rows

REPO = Path(__file__).resolve().parent.parent

# A deterministic test backend, written to a module file so a `posterkg tag` subprocess can load it
# by module path (the registry's third-party hook). It answers with raw JSON text (the model path),
# derived from the poster's pixels, and misbehaves on purpose for some movie ids.
FAKE_BACKEND = textwrap.dedent('''
    import json, os, time
    from posterkg.vlm.base import TagResult
    from posterkg.vlm.images import CorruptImage, load_image

    class Fake:
        name = "fake"

        def __init__(self, model=None, flaky=()):
            self.model = model or "fake-v1"
            self.flaky = set(flaky)          # ids that fail with backend_error (until cleared)
            self.delay = float(os.environ.get("FAKE_DELAY", "0"))
            self.mark = os.environ.get("FAKE_MARK")

        def tag_batch(self, jobs, spec):
            if any(j.movie_id == 19 for j in jobs):
                raise RuntimeError("CUDA out of memory (pretend)")    # the whole batch raises
            out = []
            for j in jobs:
                if j.movie_id in self.flaky:
                    out.append(TagResult(j.movie_id, error="flaky", reason="backend_error"))
                    continue
                if j.movie_id % 10 == 7:
                    out.append(TagResult(j.movie_id, raw='{"points": [{"type": "Lighting", "va',
                                         finish_reason="length"))
                    continue
                if j.movie_id == 13:
                    out.append(TagResult(j.movie_id, raw="a red poster", finish_reason="stop"))
                    continue
                if j.movie_id == 15:
                    out.append(TagResult(j.movie_id, raw=json.dumps({"points": [
                        {"type": "Mood", "value": "x", "confidence": 1}]}), finish_reason="stop"))
                    continue
                try:
                    img = load_image(j.path)
                except CorruptImage as exc:
                    out.append(TagResult(j.movie_id, error=str(exc), reason="corrupt_image"))
                    continue
                r, g, b = [int(v) for v in img.resize((1, 1)).getpixel((0, 0))]
                pts = [{"type": "Color_Palette", "value": f"red level {r // 32}", "confidence": 0.75},
                       {"type": "Lighting", "value": f"brightness {(r + g + b) // 96}", "confidence": 0.5}]
                if b > r:
                    pts.append({"type": "Others", "value": "bluish", "confidence": 0.25})
                out.append(TagResult(j.movie_id, raw=json.dumps({"points": pts}), finish_reason="stop"))
            if self.delay:
                time.sleep(self.delay)
            if self.mark:
                with open(self.mark, "a") as f:
                    f.write(",".join(str(j.movie_id) for j in jobs) + "\\n")
            return out

        def close(self):
            pass

    def create(model=None, **options):
        return Fake(model, **options)
''')

N_POSTERS = 40


@pytest.fixture
def world(tmp_path, monkeypatch):
    """A poster folder (40 generated JPEGs + a corrupt one), a scanned database, the fake backend."""
    folder = tmp_path / "posters"
    folder.mkdir()
    rng = random.Random(0)
    for mid in range(1, N_POSTERS + 1):
        colour = tuple(rng.randrange(256) for _ in range(3))
        Image.new("RGB", (37, 56), colour).save(folder / f"{mid}.jpg", quality=90)
    (folder / "99.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a whole jpeg")
    mod_dir = tmp_path / "mods"
    mod_dir.mkdir()
    (mod_dir / "fake_tagger.py").write_text(FAKE_BACKEND)
    monkeypatch.syspath_prepend(str(mod_dir))
    db = tmp_path / "a.duckdb"
    with open_store(db) as store:
        scan_posters(store, folder, workers=1)
    return {"folder": folder, "db": db, "mods": mod_dir, "tmp": tmp_path}


def _backend(**options):
    from posterkg.vlm.backends import get_backend

    return get_backend("fake_tagger", **options)   # the registry's module-path hook


def test_tag_stores_valid_points_and_records_failures(world):
    spec = load_schema().build_spec()
    with open_store(world["db"]) as store:
        s = tag_posters(store, _backend(), spec, batch_size=4)
        assert s["selected"] == N_POSTERS + 1
        reasons = dict(store.execute(
            "SELECT movie_id, reason FROM tag_status WHERE status = 'failed'").fetchall())
        # 7, 17, 27, 37: truncated; 13: prose; 15: unknown type; 19: whole batch raised; 99: corrupt
        assert reasons == {7: "truncated", 17: "truncated", 27: "truncated", 37: "truncated",
                           13: "invalid_json", 15: "schema_violation", 19: "out_of_memory",
                           99: "corrupt_image"}
        done = [m for (m,) in store.execute("SELECT movie_id FROM tag_status WHERE status='done'").fetchall()]
        assert len(done) == N_POSTERS - 7 and s["done"] == len(done) and s["failed"] == 8
        # 16, 18, 20 shared the batch with 19 and still got tagged one by one
        assert {16, 18, 20} <= set(done)
        # every poster done has points; nobody else has any
        with_points = {m for (m,) in store.execute("SELECT DISTINCT movie_id FROM raw_points").fetchall()}
        assert with_points == set(done)
        assert s["points"] == store.count("raw_points")
        assert s["points_per_type"]["Color_Palette"] == len(done)
        # the stored values come from the pixels: check one by hand
        img = Image.open(world["folder"] / "1.jpg").convert("RGB")
        r = img.resize((1, 1)).getpixel((0, 0))[0]
        assert store.scalar("SELECT value FROM raw_points WHERE movie_id = 1 AND type = 'Color_Palette'") \
            == f"red level {r // 32}"
        run = store.execute("SELECT done, failed, points, finished_at, mode, params FROM tag_runs").fetchone()
        assert run[:3] == (len(done), 8, s["points"]) and run[3] is not None and run[4] == "open"
        assert json.loads(run[5])["batch_size"] == 4
        err = store.scalar("SELECT error FROM tag_status WHERE movie_id = 99")
        assert "poster status corrupt" in err


def test_rerun_is_idempotent_and_retry_failed_retries(world):
    spec = load_schema().build_spec()
    with open_store(world["db"]) as store:
        first = tag_posters(store, _backend(flaky=[2, 3]), spec, batch_size=8)
        before = _snapshot(store)
        again = tag_posters(store, _backend(), spec, batch_size=8)
        assert again["done"] == 0 and again["failed"] == 0 and again["skipped"] == first["selected"]
        assert _snapshot(store) == before
        retried = tag_posters(store, _backend(), spec, batch_size=8, retry_failed=True)
        # 2 and 3 now succeed; the deterministic failures fail again (attempts 2)
        assert retried["done"] == 2 and retried["failed"] == first["failed"] - 2
        assert store.scalar("SELECT attempts FROM tag_status WHERE movie_id = 13") == 2
        assert store.scalar("SELECT status FROM tag_status WHERE movie_id = 2") == "done"
        assert store.scalar("SELECT count(*) FROM raw_points WHERE movie_id = 2") >= 2
        # another model is another resume key: everything is tagged again, side by side
        other = tag_posters(store, _backend(model="fake-v2"), spec, batch_size=8)
        assert other["done"] == retried["done"] + first["done"]
        assert store.scalar("SELECT count(DISTINCT model) FROM raw_points") == 2


def _snapshot(store):
    return (store.execute("SELECT * EXCLUDE (run_id) FROM raw_points ORDER BY ALL").fetchall(),
            store.execute("SELECT * EXCLUDE (updated_at) FROM tag_status ORDER BY ALL").fetchall())


def test_movies_and_limit_select_posters(world):
    spec = load_schema().build_spec()
    with open_store(world["db"]) as store:
        s = tag_posters(store, _backend(), spec, movies=[3, 5, 500], batch_size=2)
        assert s["selected"] == 3 and s["done"] == 2 and s["failures"] == {"no_poster": 1}
        assert store.scalar("SELECT reason FROM tag_status WHERE movie_id = 500") == "no_poster"
        s = tag_posters(store, _backend(), spec, limit=6, batch_size=2)
        assert s["selected"] == 6 and s["skipped"] == 2 and s["done"] == 4
        ids = sorted(m for (m,) in store.execute("SELECT movie_id FROM tag_status").fetchall())
        assert ids == [1, 2, 3, 4, 5, 6, 500]


def _cli(args, env_extra, **kw):
    env = {**os.environ, "POSTERKG_PROGRESS": "0", **env_extra}
    return subprocess.Popen([sys.executable, "-m", "posterkg", "tag", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_kill_9_mid_run_then_rerun_equals_one_clean_run(world, tmp_path):
    pythonpath = os.pathsep.join([str(world["mods"]), os.environ.get("PYTHONPATH", "")])
    clean_db = tmp_path / "clean.duckdb"
    with open_store(clean_db) as store:
        scan_posters(store, world["folder"], workers=1)
    args = ["--backend", "fake_tagger", "--batch-size", "3"]
    p = _cli([*args, "--db", str(clean_db)], {"PYTHONPATH": pythonpath})
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    assert "points: Color_Palette" in out and "failed: truncated" in out

    mark = tmp_path / "batches.txt"
    p = _cli([*args, "--db", str(world["db"])],
             {"PYTHONPATH": pythonpath, "FAKE_DELAY": "0.4", "FAKE_MARK": str(mark)})
    deadline = time.time() + 120
    while time.time() < deadline:
        if mark.exists() and len(mark.read_text().splitlines()) >= 4:
            break
        assert p.poll() is None, p.communicate()
        time.sleep(0.05)
    os.kill(p.pid, signal.SIGKILL)
    p.communicate(timeout=30)
    assert p.returncode == -signal.SIGKILL

    # what survived the kill: whole batches only, counters consistent
    with open_store(world["db"]) as store:
        done = {m for (m,) in store.execute("SELECT movie_id FROM tag_status WHERE status='done'").fetchall()}
        with_points = {m for (m,) in store.execute("SELECT DISTINCT movie_id FROM raw_points").fetchall()}
        assert with_points == done and 0 < len(done) < N_POSTERS - 7
        n_status = store.count("tag_status")
        run = store.execute("SELECT done + failed, points, finished_at FROM tag_runs").fetchone()
        assert run[0] == n_status and run[1] == store.count("raw_points") and run[2] is None
        # the corrupt poster (recorded first, alone) + whole batches of 3 from the 40 in order
        assert (n_status - 1) % 3 == 0
        for m in done:   # each poster done has all its points (2 or 3), never part of them
            n = store.scalar("SELECT count(*) FROM raw_points WHERE movie_id = ?", [m])
            assert n in (2, 3)
    p = _cli([*args, "--db", str(world["db"])], {"PYTHONPATH": pythonpath})
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    assert tag_rows(world["db"]) == tag_rows(clean_db)
    # the resumed run only did what the killed one had not
    with open_store(world["db"], read_only=True) as store:
        last = store.execute("SELECT skipped, done + failed FROM tag_runs ORDER BY started_at DESC LIMIT 1").fetchone()
    assert last == (n_status, N_POSTERS + 1 - n_status)


def test_cli_errors_are_clean(world):
    p = _cli(["--db", str(world["db"]), "--backend", "nope"], {})
    _, err = p.communicate(timeout=60)
    assert p.returncode == 1 and "unknown tagging backend 'nope'" in err and "Traceback" not in err
    p = _cli(["--db", str(world["db"]), "--backend", "pixels", "--movies", "1,x"], {})
    _, err = p.communicate(timeout=60)
    assert p.returncode == 1 and "--movies" in err


class _SpecEcho:
    """Answers from the spec it is given: in closed mode a vocabulary value, in open mode a free
    phrase; records every movie id it was asked to tag, per schema hash."""

    name = "echo"
    model = "echo-v1"

    def __init__(self):
        self.asked: dict[str, list[int]] = {}

    def tag_batch(self, jobs, spec):
        from posterkg.vlm.base import TagResult

        self.asked.setdefault(spec.schema_hash, []).extend(j.movie_id for j in jobs)
        out = []
        for j in jobs:
            if spec.mode == "closed":
                value = "low-key" if j.movie_id % 2 else "high-key"
                assert value in spec.vocab["Lighting"]
            else:
                value = f"open phrase {j.movie_id}"
            out.append(TagResult(j.movie_id, raw=json.dumps(
                {"points": [{"type": "Lighting", "value": value, "confidence": 0.5}]}),
                finish_reason="stop"))
        return out

    def close(self):
        pass


def test_two_specs_on_one_database_are_two_resume_keys(world):
    """Open mode, then closed mode, on the same posters: both sets are stored side by side, and
    a rerun of either spec is skipped (the resume lookup is keyed by the spec's schema hash)."""
    schema = load_schema()
    open_spec = schema.build_spec()
    closed_spec = schema.build_spec({"Lighting": ["low-key", "high-key"]})
    assert open_spec.schema_hash != closed_spec.schema_hash
    movies = [1, 2, 3, 4, 5]
    backend = _SpecEcho()
    with open_store(world["db"]) as store:
        first_open = tag_posters(store, backend, open_spec, movies=movies, batch_size=2)
        first_closed = tag_posters(store, backend, closed_spec, movies=movies, batch_size=2)
        assert (first_open["done"], first_open["skipped"]) == (5, 0)
        assert (first_closed["done"], first_closed["skipped"]) == (5, 0)
        assert backend.asked == {open_spec.schema_hash: movies, closed_spec.schema_hash: movies}
        stored = {h: sorted((m, v) for m, v in store.execute(
            "SELECT movie_id, value FROM raw_points WHERE schema_hash = ?", [h]).fetchall())
            for h in (open_spec.schema_hash, closed_spec.schema_hash)}
        assert stored[open_spec.schema_hash] == [(m, f"open phrase {m}") for m in movies]
        assert stored[closed_spec.schema_hash] == [(1, "low-key"), (2, "high-key"), (3, "low-key"),
                                                 (4, "high-key"), (5, "low-key")]
        assert store.scalar("SELECT count(*) FROM tag_status WHERE status = 'done'") == 10

        for spec in (open_spec, closed_spec):
            again = tag_posters(store, backend, spec, movies=movies, batch_size=2)
            assert (again["done"], again["failed"], again["skipped"]) == (0, 0, 5)
        assert sum(len(v) for v in backend.asked.values()) == 10     # nothing was sent again
        assert store.count("raw_points") == 10
