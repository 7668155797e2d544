"""The cold-start split (whole movies held out) and its evaluation on hand-made cases."""

from __future__ import annotations

import math
import random
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from posterkg.errors import InputError
from posterkg.evaluation.coldstart import coldstart_eval, random_scores
from posterkg.ingest.movielens import ensure_schema
from posterkg.split import coldstart_movies, make_split, movie_key
from posterkg.store import open_store


def _db(path, n_users=40, n_movies=120, seed=3):
    rng = random.Random(seed)
    rows = []
    for u in range(1, n_users + 1):
        k = 5 if u <= 3 else rng.randint(10, 60)       # users 1-3 have < 10 ratings
        for m in rng.sample(range(1, n_movies + 1), k):
            rows.append((u, m, float(rng.randint(1, 5)), 1_000_000 + rng.randint(0, 9999)))
    s = open_store(path)
    ensure_schema(s)
    s.insert_df("ratings", pd.DataFrame(rows, columns=["user_id", "movie_id", "rating", "ts"]))
    return s, rows


def test_coldstart_split_holds_out_whole_movies(tmp_path):
    s, rows = _db(tmp_path / "c.duckdb")
    with s:
        summary = make_split(s, "coldstart", valid=0.1, test=0.1, seed=0)
        split = s.execute("SELECT user_id, movie_id, part FROM split").fetchall()
        info = s.execute("SELECT scheme, valid, test, seed FROM split_info").fetchone()
        test_movies, valid_movies = coldstart_movies(s, "test"), coldstart_movies(s, "valid")
    kept_users = {u for u in {r[0] for r in rows} if sum(1 for r in rows if r[0] == u) >= 10}
    rated = sorted({m for u, m, _, _ in rows if u in kept_users})
    n = math.floor(len(rated) * 0.1)
    assert summary["movies"] == {"train": len(rated) - 2 * n, "valid": n, "test": n}
    # the seeded order: the first n by movie_key are test, the next n valid
    order = sorted(rated, key=lambda m: (movie_key(0, m), m))
    assert test_movies == sorted(order[:n]) and valid_movies == sorted(order[n:2 * n])
    part_of = {}
    for u, m, p in split:
        assert part_of.setdefault(m, p) == p            # one part per movie: all its ratings
    assert set(part_of) == set(rated)
    # every rating of the kept users is there, none of the dropped users
    assert len(split) == sum(1 for r in rows if r[0] in kept_users)
    assert {u for u, _, _ in split} == kept_users and summary["dropped_users"] == 3
    assert info == ("coldstart", 0.1, 0.1, 0)
    assert summary["parts"]["test"] == sum(1 for u, m, _ in split if m in set(test_movies))


def test_coldstart_split_is_seeded_and_checked(tmp_path):
    s, _ = _db(tmp_path / "c.duckdb")
    with s:
        make_split(s, "coldstart", seed=0)
        a = coldstart_movies(s, "test")
        make_split(s, "coldstart", seed=0)
        assert coldstart_movies(s, "test") == a
        make_split(s, "coldstart", seed=1)
        assert coldstart_movies(s, "test") != a
        make_split(s, "coldstart", valid=0, test=0.25, seed=1)
        assert coldstart_movies(s, "valid") == []
        make_split(s, "temporal")
        with pytest.raises(InputError, match="not coldstart"):
            coldstart_movies(s, "test")


def test_coldstart_split_needs_movies_left_for_training(tmp_path):
    s = open_store(tmp_path / "two.duckdb")
    with s:
        ensure_schema(s)
        s.insert_df("ratings", pd.DataFrame({"user_id": [1, 1, 2, 2], "movie_id": [10, 11, 10, 11],
                                             "rating": [4.0] * 4, "ts": [1, 2, 3, 4]}))
        # 2 rated movies: max(1, floor(0.2)) test + max(1, floor(0.2)) valid leaves none to train on
        with pytest.raises(InputError, match="leave some for training"):
            make_split(s, "coldstart", valid=0.1, test=0.1, min_ratings=1)
        summary = make_split(s, "coldstart", valid=0, test=0.1, min_ratings=1)
        assert summary["movies"] == {"train": 1, "valid": 0, "test": 1}


def test_cli_coldstart(tmp_path):
    s, _ = _db(tmp_path / "c.duckdb")
    s.close()
    p = subprocess.run([sys.executable, "-m", "posterkg", "split", "--db", str(tmp_path / "c.duckdb"),
                        "--scheme", "coldstart", "--valid", "0.1", "--test", "0.1", "--seed", "0"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert "coldstart" in p.stdout and "movies" in p.stdout


def test_coldstart_eval_known_answers():
    # 3 users, 6 movies; the test part holds cold movies 3, 4, 5
    users = np.array([0, 0, 1, 2])
    movies = np.array([3, 4, 5, 4])
    ratings = np.array([5.0, 2.0, 4.0, 3.0])    # user 2 has no relevant movie: not evaluated
    table = torch.tensor([
        [9.0, 0, 0, 1.0, 3.0, 2.0],   # user 0: train movie 0 scores highest but is no candidate;
                                      # cold order 4, 5, 3 -> relevant 3 at rank 3 (its own
                                      # low-rated movie 4 stays in as a negative)
        [0.0, 0, 0, 5.0, 1.0, 4.0],   # user 1: cold order 3, 5, 4 -> relevant 5 at rank 2
        [0.0, 0, 0, 0.0, 0.0, 0.0],
    ])
    fn = lambda u: table[u]   # noqa: E731
    res = coldstart_eval(fn, (users, movies, ratings), "test", ks=(1, 2, 3))
    assert res["n_users"] == 2 and res["n_candidates"] == 3
    assert res["recall@1"] == 0.0
    assert res["recall@2"] == pytest.approx(0.5)
    assert res["recall@3"] == pytest.approx(1.0)
    assert res["ndcg@2"] == pytest.approx(0.5 * (1 / math.log2(3)))
    assert res["ndcg@3"] == pytest.approx(0.5 * (1 / math.log2(4) + 1 / math.log2(3)))
    # k beyond the 3 candidates: all of them
    assert coldstart_eval(fn, {"users": users, "movies": movies, "ratings": ratings})["recall@10"] == 1.0
    # batching and the users filter
    assert coldstart_eval(fn, (users, movies, ratings), ks=(2,), batch_size=1)["ndcg@2"] == pytest.approx(res["ndcg@2"])
    only1 = coldstart_eval(fn, (users, movies, ratings), ks=(2,), users=[1])
    assert only1["n_users"] == 1 and only1["recall@2"] == 1.0
    with pytest.raises(ValueError, match="n_movies"):
        coldstart_eval(lambda u: table[u][:, :4], (users, movies, ratings))


def test_coldstart_eval_on_interactions_and_random_floor(tmp_path):
    from posterkg.gnn.data import load_interactions

    s, _ = _db(tmp_path / "c.duckdb", n_users=200, n_movies=300, seed=5)
    with s:
        s.execute("CREATE OR REPLACE TABLE movies AS SELECT DISTINCT movie_id, '' AS title FROM ratings")
        make_split(s, "coldstart", seed=0)
        data = load_interactions(s)
    cold = np.unique(data.parts["test"].movies)
    rand = coldstart_eval(random_scores(data.n_movies, seed=0), data, "test")
    again = coldstart_eval(random_scores(data.n_movies, seed=0), data, "test", batch_size=7)
    assert rand == pytest.approx(again, rel=1e-6)           # the floor does not depend on batching
    assert rand["n_candidates"] == len(cold) and rand["n_users"] > 50
    # an oracle that knows each user's ratings beats the random floor by far
    p = data.parts["test"]
    oracle = torch.zeros(data.n_users, data.n_movies)
    oracle[torch.as_tensor(p.users), torch.as_tensor(p.movies)] = torch.as_tensor(p.ratings, dtype=torch.float32)
    best = coldstart_eval(lambda u: oracle[u], data, "test")
    assert best["recall@20"] > 0.99 and best["ndcg@20"] > 0.99 > 3 * rand["ndcg@20"]
    # the expected recall@10 of a random order is 10 / candidates
    assert abs(rand["recall@10"] - 10 / len(cold)) < 0.06
