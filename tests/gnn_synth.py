"""A small synthetic database with planted tastes, shared by the gnn tests (not a test module)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from posterkg.store import open_store

GENRES = ["Red", "Blue", "Green", "Dark"]


def make_db(path, n_users: int = 80, n_movies: int = 120, per_user: int = 40, seed: int = 0):
    """Movies carry 1-2 of four genres; each user loves one genre (rates it 4-5) and dislikes the
    others (1-3). Per-user temporal split 80/10/10. Tables: movies, users, ratings, split; the
    planted favourite genre of each user is in ``users.occupation`` (read by :func:`planted`)."""
    rng = np.random.default_rng(seed)
    movie_genres = [sorted(set(rng.choice(len(GENRES), rng.integers(1, 3), replace=False).tolist()))
                    for _ in range(n_movies)]
    movies = pd.DataFrame({"movie_id": np.arange(1, n_movies + 1), "title": [f"M{i}" for i in range(n_movies)],
                           "year": 2000, "genres": [[GENRES[g] for g in gs] for gs in movie_genres]})
    pop = rng.zipf(1.6, n_movies).astype(float)
    rows, favs = [], []
    for u in range(1, n_users + 1):
        fav = int(rng.integers(len(GENRES)))
        favs.append(GENRES[fav])
        p = pop / pop.sum()
        seen = rng.choice(n_movies, per_user, replace=False, p=p)
        for t, m in enumerate(seen):
            r = int(rng.integers(4, 6)) if fav in movie_genres[m] else int(rng.integers(1, 4))
            rows.append((u, int(m) + 1, float(r), 1000 * u + t))
    ratings = pd.DataFrame(rows, columns=["user_id", "movie_id", "rating", "ts"])
    ratings = ratings.sort_values(["user_id", "ts"])
    rk = ratings.groupby("user_id").cumcount()
    n = ratings.groupby("user_id")["movie_id"].transform("size")
    q = rk / n
    ratings["part"] = np.where(q >= 0.9, "test", np.where(q >= 0.8, "valid", "train"))
    with open_store(path) as s:
        s.execute("CREATE TABLE movies(movie_id INTEGER PRIMARY KEY, title VARCHAR, year INTEGER, genres VARCHAR[])")
        s.insert_df("movies", movies)
        s.execute("CREATE TABLE users(user_id INTEGER PRIMARY KEY, gender VARCHAR, age INTEGER, "
                  "occupation VARCHAR, zip VARCHAR)")
        s.insert_df("users", pd.DataFrame({"user_id": np.arange(1, n_users + 1), "occupation": favs}))
        s.execute("CREATE TABLE ratings(user_id INTEGER, movie_id INTEGER, rating DOUBLE, ts BIGINT, "
                  "PRIMARY KEY (user_id, movie_id))")
        s.insert_df("ratings", ratings[["user_id", "movie_id", "rating", "ts"]])
        s.execute("CREATE TABLE split(user_id INTEGER, movie_id INTEGER, part VARCHAR, PRIMARY KEY (user_id, movie_id))")
        s.insert_df("split", ratings[["user_id", "movie_id", "part"]])
    return path


def planted(store) -> dict[int, str]:
    """user_id -> the favourite genre :func:`make_db` planted."""
    return {int(u): str(g) for u, g in store.execute("SELECT user_id, occupation FROM users").fetchall()}


def planted_gaps(model, inputs, fav) -> np.ndarray:
    """Per user: (mean score of the unseen movies of the planted genre - mean score of the other
    unseen movies) / std of the unseen scores."""
    data = inputs.data
    s = model.score(torch.arange(inputs.n_users), data.history("test")).numpy()
    genres = _movie_genres(inputs)
    seen = data.history("test").csr()
    gaps = []
    for i, uid in enumerate(inputs.ids.user_ids):
        unseen = np.setdiff1d(np.arange(inputs.n_movies), seen[i].indices)
        liked = np.array([fav[int(uid)] in genres[j] for j in unseen])
        x = s[i, unseen]
        gaps.append((x[liked].mean() - x[~liked].mean()) / max(x.std(), 1e-9))
    return np.array(gaps)


def _movie_genres(inputs) -> list[set[str]]:
    g = inputs.graph.get("genre")
    out = [set() for _ in range(inputs.n_movies)]
    for m, k in zip(g.src.tolist(), g.dst.tolist()):
        out[m].add(inputs.ids.genre_names[k])
    assert set(inputs.ids.genre_names) == set(GENRES)
    return out


def protocol_data(ratings: pd.DataFrame, n_movies: int):
    """Interactions of a (user_id, movie_id, rating, ts) frame under the fixed protocol's split
    (per user, by (ts, movie id): test the last max(1, n // 10), valid the same before) and the
    train graph's interaction relations: (data, pos/neu/neg edges per relation name)."""
    from posterkg.gnn.data import from_frames

    ratings = ratings.sort_values(["user_id", "ts", "movie_id"]).reset_index(drop=True)
    parts = []
    for _, g in ratings.groupby("user_id", sort=False):
        n = len(g)
        k = max(1, n // 10)
        parts += ["train"] * (n - 2 * k) + ["valid"] * k + ["test"] * k
    split = ratings[["user_id", "movie_id"]].assign(part=parts)
    data = from_frames(ratings, split, movie_ids=np.arange(1, n_movies + 1))
    return data, {name: data.train_edges(sign) for name, sign in (("pos", 1), ("neu", 0), ("neg", -1))}
