"""The synthetic demo set: determinism, planted traits visible in the pixels, planted tastes
recovered by the graph (with oracle concepts, with the real `pixels` tagger, end to end)."""

from __future__ import annotations

import re

import hashlib
import json
import random

import numpy as np
import pytest

from posterkg.synthetic import (AXES, TRAIT_AXIS, TRAITS, SyntheticSet, check_recovery, generate, load_truth,
                                planted_utility)


def _digest(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_generator_is_deterministic_and_in_ml1m_format(tmp_path):
    a = generate(tmp_path / "a", n_movies=24, n_users=12, seed=7, min_ratings=10, max_ratings=15)
    b = generate(tmp_path / "b", n_movies=24, n_users=12, seed=7, min_ratings=10, max_ratings=15)
    c = generate(tmp_path / "c", n_movies=24, n_users=12, seed=8, min_ratings=10, max_ratings=15)
    da, db, dc = _digest(a.root), _digest(b.root), _digest(c.root)
    assert da == db                                  # byte-identical, posters included
    assert len([k for k in da if k.startswith("posters/")]) == 24
    assert da["ratings.dat"] != dc["ratings.dat"] and da["posters/1.jpg"] != dc["posters/1.jpg"]

    movies = (a.root / "movies.dat").read_bytes().decode("latin-1").splitlines()
    assert len(movies) == 24 and all(len(line.split("::")) == 3 for line in movies)
    assert all(line.split("::")[1].endswith(")") for line in movies)
    users = (a.root / "users.dat").read_text(encoding="latin-1").splitlines()
    assert len(users) == 12 and all(len(line.split("::")) == 5 for line in users)
    ratings = [tuple(map(int, line.split("::")))
               for line in (a.root / "ratings.dat").read_text(encoding="latin-1").splitlines()]
    assert len(ratings) == a.n_ratings
    assert {r for _, _, r, _ in ratings} <= {1, 2, 3, 4, 5}
    per_user = {}
    for u, m, _, ts in ratings:
        per_user.setdefault(u, []).append((m, ts))
    for u, seq in per_user.items():
        assert 10 <= len(seq) <= 15 and len({m for m, _ in seq}) == len(seq)
        assert all(t1 < t2 for (_, t1), (_, t2) in zip(seq, seq[1:]))     # time grows

    t = load_truth(a.root)
    assert t.movies == a.movies and t.users == a.users and t.params["seed"] == 7
    for taste in t.users.values():
        assert 1 <= len(taste["likes"]) <= 2 and len(taste["dislikes"]) == 1
        planted = taste["likes"] + taste["dislikes"]
        assert len({TRAIT_AXIS[x] for x in planted}) == len(planted)    # one axis each


def test_ratings_follow_planted_tastes(tmp_path):
    s = generate(tmp_path / "s", n_movies=80, n_users=60, seed=1, posters=False)
    liked, disliked, other = [], [], []
    for line in (s.root / "ratings.dat").read_text(encoding="latin-1").splitlines():
        u, m, r, _ = map(int, line.split("::"))
        shown = set(s.movies[m].values())
        n_like = len(shown & set(s.users[u]["likes"]))
        n_dis = len(shown & set(s.users[u]["dislikes"]))
        (liked if n_like and not n_dis else disliked if n_dis and not n_like else other).append(r)
    assert np.mean(liked) > np.mean(other) + 0.8 > np.mean(disliked) + 1.6


def test_posters_show_their_traits_in_pixels(tmp_path):
    from PIL import Image

    s = generate(tmp_path / "p", n_movies=40, n_users=5, seed=3, min_ratings=5, max_ratings=5)
    ok = {a: 0 for a in AXES}
    for m, traits in s.movies.items():
        x = np.asarray(Image.open(s.posters / f"{m}.jpg").convert("RGB"), dtype=np.float64)
        assert x.shape == (278, 185, 3)
        warmth = x[..., 0].mean() - x[..., 2].mean()
        lum = (0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2]).mean() / 255
        g = x[100:175].mean(axis=2)          # a band the title never touches
        edges = (np.abs(np.diff(g, axis=0))[:, :-1] + np.abs(np.diff(g, axis=1))[:-1]) > 30
        if traits["key"] == "dark":
            ink = int((x.min(axis=2) > 200).sum())          # white title letters
        else:
            ink = int((x.max(axis=2) < 50).sum())           # near-black title letters
        ok["palette"] += (warmth > 0) == (traits["palette"] == "warm")
        ok["key"] += (lum < 0.3 if traits["key"] == "dark" else lum > 0.5)
        ok["layout"] += (edges.mean() > 0.04) == (traits["layout"] == "busy")
        ok["title"] += (ink > 150) == (traits["title"] == "title")
    assert ok == {a: 40 for a in AXES}


def _oracle_concepts(store, truth: SyntheticSet, noise: float, seed: int = 0) -> None:
    """A perfect-but-noisy tagger: one concept per trait, each flipped with probability noise."""
    rng = np.random.default_rng(seed)
    store.execute("CREATE TABLE IF NOT EXISTS concepts (concept_id INTEGER PRIMARY KEY, "
                  "type VARCHAR, name VARCHAR, version INTEGER)")
    store.execute("CREATE TABLE IF NOT EXISTS movie_concepts (movie_id INTEGER, "
                  "concept_id INTEGER, weight DOUBLE, PRIMARY KEY (movie_id, concept_id))")
    for i, t in enumerate(TRAITS):
        store.execute("INSERT INTO concepts VALUES (?, 'Oracle', ?, 1)", [i + 1, t])
    rows = [(m, i + 1, 0.9) for m in truth.movies for i, t in enumerate(TRAITS)
            if truth.has(m, t) != (rng.random() < noise)]
    import pandas as pd

    store.insert_df("movie_concepts", pd.DataFrame(rows, columns=["movie_id", "concept_id", "weight"]))


@pytest.fixture
def synthetic_db(tmp_path):
    from posterkg.ingest.movielens import ingest_movielens
    from posterkg.split import make_split
    from posterkg.store import open_store

    s = generate(tmp_path / "data", n_movies=150, n_users=150, seed=2, posters=False)
    store = open_store(tmp_path / "s.duckdb")
    ingest_movielens(store, s.root)
    make_split(store, scheme="temporal", valid=0.1, test=0.1)
    yield store, s
    store.close()


def test_planted_tastes_recovered_with_oracle_concepts_and_not_when_shuffled(synthetic_db):
    from posterkg.graphs import GraphConfig, build_graphs

    store, truth = synthetic_db
    _oracle_concepts(store, truth, noise=0.1)
    build_graphs(store, GraphConfig(short_n=10, half_life_days=60))
    rec = check_recovery(store, truth)
    assert [m["concept"] for m in rec.mapping] == [f"{t} (Oracle)" for t in TRAITS]
    assert rec.users == 150 and rec.passed, rec.rows
    long = {r["metric"]: r["recovered"] for r in rec.rows if r["horizon"] == "long"}
    assert long["direction on planted axes"] > 0.9
    assert long["disliked trait scored < 0"] > 0.9

    # negative control: the same graph checked against other users' tastes must fail
    ids = list(truth.users)
    perm = ids[:]
    random.Random(0).shuffle(perm)
    shuffled = SyntheticSet(root=truth.root, movies=truth.movies,
                            users={u: truth.users[v] for u, v in zip(ids, perm)},
                            n_ratings=truth.n_ratings)
    bad = check_recovery(store, shuffled)
    assert not bad.passed
    bad_long = {r["metric"]: r["recovered"] for r in bad.rows if r["horizon"] == "long"}
    assert abs(bad_long["direction on planted axes"] - 0.5) < 0.15


class _Ranker:
    """A stand-in recommender for the check itself: ranks each user's unseen movies by the planted
    utility (computed here from truth.json, not by the code under test), best or worst first."""

    def __init__(self, store, truth, worst=False, fail_on=None, leak_seen=False):
        self.truth, self.worst, self.fail_on, self.leak_seen = truth, worst, fail_on, leak_seen
        self.seen = {}
        for u, m in store.execute("SELECT user_id, movie_id FROM split WHERE part <> 'test'").fetchall():
            self.seen.setdefault(u, set()).add(m)

    def recommend(self, user_id, k):
        if user_id == self.fail_on:
            raise RuntimeError("index 7 is out of bounds")
        pool = sorted(self.truth.movies, key=lambda m: (planted_utility(self.truth, user_id, m), -m),
                      reverse=not self.worst)
        if self.leak_seen:
            return [(m, 1.0) for m in pool[:k]]
        return [(m, 1.0) for m in pool if m not in self.seen[user_id]][:k]


def test_model_row_gates_the_verdict(synthetic_db):
    """With a model, the check passes only if its top-10 goes at least halfway from chance to the
    best possible; a model that cannot be loaded or asked fails the check with its error."""
    store, truth = synthetic_db
    _oracle_concepts(store, truth, noise=0.1)
    from posterkg.graphs import GraphConfig, build_graphs

    build_graphs(store, GraphConfig(short_n=10, half_life_days=60))
    assert check_recovery(store, truth).passed                       # the graph alone passes

    best = check_recovery(store, truth, model=lambda: _Ranker(store, truth))
    assert best.passed and best.graph_passed and best.model_passed and best.error is None
    rows = {r["metric"].split(" (")[0]: r for r in best.rows if r["horizon"] == "model"}
    assert rows["share of the way from chance to the best top-10"]["recovered"] == pytest.approx(1.0)
    assert rows["planted utility of top-10"]["recovered"] > rows["planted utility of top-10"]["chance"]

    worst = check_recovery(store, truth, model=lambda: _Ranker(store, truth, worst=True))
    assert worst.graph_passed and worst.model_passed is False and not worst.passed
    w = {r["metric"].split(" (")[0]: r for r in worst.rows if r["horizon"] == "model"}
    assert w["planted utility of top-10"]["recovered"] < w["planted utility of top-10"]["chance"]

    def broken():
        raise ValueError("model state does not match the graph")

    for model, message in [(broken, "loading the trained model failed: ValueError: model state"),
                           (lambda: _Ranker(store, truth, fail_on=min(truth.users)),
                            "index 7 is out of bounds"),
                           (lambda: _Ranker(store, truth, leak_seen=True), "already rated")]:
        rec = check_recovery(store, truth, model=model)
        assert not rec.passed and rec.graph_passed and message in rec.error


@pytest.mark.slow
def test_planted_tastes_recovered_through_the_pixels_tagger(tmp_path):
    """Real pixels tagger on the drawn posters; its exact values stand in for the vocabulary."""
    import importlib

    from posterkg.commands.run import demo_config
    from posterkg.config import Config
    from posterkg.graphs import build_graphs
    from posterkg.store import open_store

    truth = generate(tmp_path / "data", n_movies=150, n_users=150, seed=4)
    config = Config(data=demo_config(tmp_path, seed=4))
    with open_store(config.db) as store:
        for mod in ("posterkg.ingest.stage", "posterkg.split", "posterkg.vlm.stage"):
            importlib.import_module(mod).STAGE.run(store, config)
        store.execute("CREATE TABLE IF NOT EXISTS concepts (concept_id INTEGER PRIMARY KEY, "
                      "type VARCHAR, name VARCHAR, version INTEGER)")
        store.execute("CREATE TABLE IF NOT EXISTS movie_concepts (movie_id INTEGER, "
                      "concept_id INTEGER, weight DOUBLE, PRIMARY KEY (movie_id, concept_id))")
        store.execute("INSERT INTO concepts SELECT row_number() OVER (ORDER BY type, value), "
                      "type, value, 1 FROM (SELECT DISTINCT type, value FROM raw_points)")
        store.execute("INSERT INTO movie_concepts SELECT movie_id, concept_id, max(confidence) "
                      "FROM raw_points r JOIN concepts c ON c.type = r.type AND c.name = r.value "
                      "GROUP BY ALL")
        build_graphs(store, config)
        rec = check_recovery(store, truth)
    mapping = {m["trait"]: m["concept"] for m in rec.mapping}
    assert mapping["warm"].startswith("warm palette") and mapping["cool"].startswith("cool palette")
    assert mapping["dark"].startswith("low-key") and mapping["bright"].startswith("high-key")
    # minimal posters are both 'minimal composition' and 'smooth texture' to the tagger
    assert mapping["minimal"].split(" (")[0] in ("minimal composition", "smooth texture")
    assert rec.passed, rec.rows


@pytest.mark.slow
def test_demo_end_to_end(tmp_path, monkeypatch):
    """`posterkg demo` on a small set: every stage, then the self-check must pass; with a planted
    bad model (or one that fails to load) the same demo must fail."""
    from click.testing import CliRunner

    from posterkg.cli import cli

    res = CliRunner().invoke(cli, ["demo", "--dir", str(tmp_path / "demo"), "--movies", "150",
                                   "--users", "150", "--seed", "1"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "SELF-CHECK PASSED" in res.output
    assert "low-key" in res.output          # the planted 'dark' trait became a concept
    # a second run finds everything up to date and checks again
    again = CliRunner().invoke(cli, ["demo", "--dir", str(tmp_path / "demo"), "--movies", "150",
                                     "--users", "150", "--seed", "1", "--json", str(tmp_path / "d.json")],
                               catch_exceptions=False)
    assert again.exit_code == 0 and "using the generated set" in again.output
    assert re.search(r"^ingest\s+skipped", again.output, re.M) and re.search(r"^tag\s+skipped", again.output, re.M)
    assert "SELF-CHECK PASSED" in again.output
    model_rows = [line for line in again.output.splitlines() if line.startswith("model ")]
    assert len(model_rows) == 2, again.output      # the trained model was checked
    doc = json.loads((tmp_path / "d.json").read_text())  # --json: what the README block is made from
    assert doc["passed"] and doc["model_passed"] and doc["verdict"] in again.output
    assert doc["params"] == {"n_movies": 150, "n_users": 150, "seed": 1}
    assert [r["horizon"] for r in doc["rows"]].count("model") == 2

    # a planted bad model: the real trained model, recommending its lowest-scored movies
    from posterkg.gnn import api

    real_load = api.load_model

    def worst_first(store, *a, **kw):
        model = real_load(store, *a, **kw)
        everything = model.recommend
        n = len(store.execute("SELECT movie_id FROM movies").fetchall())
        model.recommend = lambda user_id, k=10: everything(user_id, n)[::-1][:k]
        return model

    demo_args = ["demo", "--dir", str(tmp_path / "demo"), "--movies", "150", "--users", "150", "--seed", "1"]
    monkeypatch.setattr(api, "load_model", worst_first)
    bad = CliRunner().invoke(cli, demo_args + ["--json", str(tmp_path / "bad.json")], catch_exceptions=False)
    assert bad.exit_code == 1, bad.output
    assert json.loads((tmp_path / "bad.json").read_text())["passed"] is False
    assert "SELF-CHECK FAILED" in bad.output and "SELF-CHECK PASSED" not in bad.output
    assert "trained model's recommendations" in bad.output

    def no_model(store, *a, **kw):
        raise RuntimeError("state dict does not fit the graph")

    monkeypatch.setattr(api, "load_model", no_model)
    err = CliRunner().invoke(cli, demo_args, catch_exceptions=False)
    assert err.exit_code == 1 and "SELF-CHECK PASSED" not in err.output
    assert "could not be checked: loading the trained model failed: RuntimeError: state dict" in err.output
