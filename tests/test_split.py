import math
import random

import pandas as pd
import pytest

from posterkg.errors import ConfigError, InputError
from posterkg.ingest.movielens import ensure_schema
from posterkg.split import make_split
from posterkg.store import open_store

SIZES = [3, 9, 10, 11, 19, 20, 29, 30, 35, 57, 100]


def _ratings_db(path):
    """Users with the sizes above; timestamps with ties, so the movie_id tie-break matters."""
    rng = random.Random(7)
    rows = []
    for uid, n in enumerate(SIZES, start=1):
        movies = rng.sample(range(1, 500), n)
        for m in movies:
            rows.append((uid, m, float(rng.randint(1, 5)), 1_000_000 + rng.randint(0, n // 2)))
    s = open_store(path)
    ensure_schema(s)
    s.insert_df("ratings", pd.DataFrame(rows, columns=["user_id", "movie_id", "rating", "ts"]))
    return s, rows


def _parts(s):
    return {(u, m): p for u, m, p in s.execute("SELECT user_id, movie_id, part FROM split").fetchall()}


def test_temporal_split_follows_the_floor_rule_exactly(tmp_path):
    s, rows = _ratings_db(tmp_path / "db.duckdb")
    with s:
        summary = make_split(s, "temporal", 0.1, 0.1)
        parts = _parts(s)
        for uid, n in enumerate(SIZES, start=1):
            mine = sorted((t, m) for u, m, _, t in rows if u == uid)
            if n < 10:
                assert not any(u == uid for u, _ in parts), "users with < 10 ratings are dropped"
                continue
            k = max(1, math.floor(n / 10))
            want = ["train"] * (n - 2 * k) + ["valid"] * k + ["test"] * k
            assert [parts[(uid, m)] for _, m in mine] == want, f"user {uid} with {n} ratings"
        assert summary["dropped_users"] == 2 and summary["users"] == len(SIZES) - 2
        kept = [n for n in SIZES if n >= 10]
        assert summary["parts"]["test"] == sum(max(1, n // 10) for n in kept)
        assert sum(summary["parts"].values()) == sum(kept)


def test_split_is_deterministic_and_replaced_not_appended(tmp_path):
    s, _ = _ratings_db(tmp_path / "db.duckdb")
    with s:
        make_split(s, "temporal")
        first = _parts(s)
        make_split(s, "temporal")
        assert _parts(s) == first
        assert s.count("split") == len(first)
        make_split(s, "random", seed=3)
        r3 = _parts(s)
        make_split(s, "random", seed=3)
        assert _parts(s) == r3
        make_split(s, "random", seed=4)
        r4 = _parts(s)
        assert r4 != r3 and r3 != first
        # same per-user proportions whatever the order
        for parts in (r3, r4):
            for p in ("train", "valid", "test"):
                assert sum(v == p for v in parts.values()) == sum(v == p for v in first.values())
        assert s.execute("SELECT scheme, seed FROM split_info").fetchall() == [("random", 4)]


def test_random_split_is_a_shuffle_not_the_time_order(tmp_path):
    s, rows = _ratings_db(tmp_path / "db.duckdb")
    with s:
        make_split(s, "random", seed=0)
        parts = _parts(s)
        uid = 11
        ts_sorted = [m for _, m in sorted((t, m) for u, m, _, t in rows if u == uid)]
        assert [parts[(uid, m)] for m in ts_sorted[-10:]].count("test") < 10


def test_random_order_is_the_documented_integer_hash(tmp_path):
    """The SQL shuffle equals the pure-Python shuffle_key: the split is reproducible anywhere."""
    from posterkg.split import shuffle_key

    s, rows = _ratings_db(tmp_path / "db.duckdb")
    with s:
        make_split(s, "random", seed=5)
        parts = _parts(s)
        for uid, n in enumerate(SIZES, start=1):
            if n < 10:
                continue
            order = [m for _, m in sorted((shuffle_key(5, uid, m), m) for u, m, _, _ in rows if u == uid)]
            k = max(1, n // 10)
            assert [parts[(uid, m)] for m in order] == ["train"] * (n - 2 * k) + ["valid"] * k + ["test"] * k


def test_other_fractions_and_zero_valid(tmp_path):
    s, _ = _ratings_db(tmp_path / "db.duckdb")
    with s:
        summary = make_split(s, "temporal", valid=0.0, test=0.2)
        kept = [n for n in SIZES if n >= 10]
        assert "valid" not in summary["parts"]
        assert summary["parts"]["test"] == sum(max(1, math.floor(n * 2 / 10)) for n in kept)


def test_bad_arguments(tmp_path):
    with open_store(tmp_path / "db.duckdb") as s:
        with pytest.raises(InputError, match="ingest"):
            make_split(s)
        with pytest.raises(ConfigError, match="scheme"):
            make_split(s, "weekly")
        with pytest.raises(ConfigError, match="below 1"):
            make_split(s, valid=0.5, test=0.5)


def test_ml1m_temporal_split(ml1m_db):
    with open_store(ml1m_db, read_only=True) as s:
        counts = s.df("SELECT user_id, count(*) AS n FROM ratings GROUP BY 1")
        kept = counts[counts.n >= 10]
        k = (kept.n // 10).clip(lower=1)
        got = dict(s.execute("SELECT part, count(*) FROM split GROUP BY 1").fetchall())
        assert got == {"test": int(k.sum()), "valid": int(k.sum()), "train": int((kept.n - 2 * k).sum())}
        assert s.scalar("SELECT count(DISTINCT user_id) FROM split") == len(kept)
        # temporal: nobody's train rating is later than their own test ratings
        leaks = s.scalar("""
            WITH x AS (SELECT s.user_id, s.part, r.ts FROM split s JOIN ratings r USING (user_id, movie_id))
            SELECT count(*) FROM (SELECT user_id, max(ts) FILTER (part = 'train') AS tr,
                                         min(ts) FILTER (part = 'test') AS te FROM x GROUP BY 1)
            WHERE tr > te""")
        assert leaks == 0
        assert s.execute("SELECT scheme, valid, test, seed FROM split_info").fetchone() == ("temporal", 0.1, 0.1, 0)
