"""EASE and ItemKNN against closed forms computed here with numpy, on a hand-made matrix."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from posterkg.gnn import registry
from posterkg.gnn.base import Graph, IdVocab, ModelInputs
from posterkg.gnn.data import from_frames
from posterkg.gnn.train import TrainConfig, train


def _world(seed=0, n_users=30, n_movies=9):
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(1, n_users + 1):
        ms = rng.choice(n_movies, 10, replace=False) + 1 if n_movies >= 10 else rng.permutation(n_movies)[:8] + 1
        for t, m in enumerate(ms):
            rows.append((u, int(m), float(rng.choice([1, 3, 4, 5])), t))
    ratings = pd.DataFrame(rows, columns=["user_id", "movie_id", "rating", "ts"])
    parts = []
    for _, g in ratings.groupby("user_id", sort=True):
        parts += ["train"] * (len(g) - 2) + ["valid", "test"]
    split = ratings.sort_values(["user_id", "ts"])[["user_id", "movie_id"]].assign(part=parts)
    data = from_frames(ratings, split, movie_ids=np.arange(1, n_movies + 1))
    ids = IdVocab(data.user_ids, data.movie_ids)
    g = Graph(ids.sizes)
    g.add("pos", *data.train_edges(1))
    return ModelInputs(ids, data, g)


def test_ease_matches_the_closed_form_and_folds_in_valid():
    inputs = _world()
    res = train(inputs, TrainConfig(model="ease"), model_cfg=registry.model_config("ease", {"lambdas": [7.0]}))
    d = inputs.data
    x = np.zeros((d.n_users, d.n_movies))
    p = d.parts["train"]
    x[p.users, p.movies] = 1.0
    g = x.T @ x + 7.0 * np.eye(d.n_movies)
    pinv = np.linalg.inv(g)
    b = -pinv / np.diag(pinv)[None, :]
    np.fill_diagonal(b, 0.0)
    assert np.allclose(res.model.S.numpy(), b, atol=1e-5)
    # test-time history = train + valid: the valid row changes the score by its row of B
    hist = d.history("test")
    xv = x.copy()
    v = d.parts["valid"]
    xv[v.users, v.movies] = 1.0
    got = res.model.score(torch.arange(d.n_users), hist).numpy()
    assert np.allclose(got, xv @ b, atol=1e-4)
    assert not np.allclose(got, x @ b, atol=1e-4)


def test_ease_chooses_lambda_on_valid():
    inputs = _world(seed=2)
    res = train(inputs, TrainConfig(model="ease"), model_cfg=registry.model_config("ease", {"lambdas": [1.0, 50.0]}))
    assert res.model.cfg.l2 in (1.0, 50.0)
    assert [h["l2"] for h in res.history] == [1.0, 50.0]
    best = max(res.history, key=lambda h: h["valid_ndcg@20"])
    assert res.model.cfg.l2 == best["l2"]


def test_itemknn_keeps_the_k_most_similar_items_with_shrinkage():
    inputs = _world(seed=1)
    res = train(inputs, TrainConfig(model="itemknn"),
                model_cfg=registry.model_config("itemknn", {"ks": [3], "shrinks": [2.0]}))
    d = inputs.data
    x = np.zeros((d.n_users, d.n_movies))
    p = d.parts["train"]
    x[p.users, p.movies] = 1.0
    co = x.T @ x
    n = np.sqrt(np.diag(co))
    sim = co / (n[:, None] * n[None, :] + 2.0)
    np.fill_diagonal(sim, 0.0)
    S = res.model.S.numpy()
    for j in range(d.n_movies):
        keep = np.argsort(-sim[:, j], kind="stable")[:3]
        assert np.allclose(np.sort(S[:, j][S[:, j] != 0]), np.sort(sim[keep, j][sim[keep, j] != 0]), atol=1e-5)
        assert (S[:, j] != 0).sum() <= 3


def test_dense_fits_that_cannot_fit_in_memory_are_refused_with_one_line():
    import pytest

    from posterkg.errors import InputError
    from posterkg.gnn.neighbours import check_memory

    # ML-25M's 62,423 movies: EASE needs 40 bytes per entry (float64 Gram, copy, inverse, result)
    with pytest.raises(InputError, match=r"ease needs about 145\.2 GB for 62,423 movies.*23\.0 GB"):
        check_memory("ease", 62_423, available=23 * 2**30)
    check_memory("ease", 3_883, available=23 * 2**30)        # ML-1M: 0.6 GB, fine
    with pytest.raises(InputError, match="itemknn"):
        check_memory("itemknn", 62_423, available=23 * 2**30)
