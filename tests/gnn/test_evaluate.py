"""The evaluation protocol against metrics computed by hand on a tiny case."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from posterkg.gnn.data import from_frames
from posterkg.gnn.evaluate import evaluate, rank_metrics

# movies 10..15 -> indices 0..5; users 1, 2, 3 -> indices 0, 1, 2
RATINGS = [
    # user 1: train 10, valid 11, test 12 (5), 13 (4), 14 (2: not relevant)
    (1, 10, 5, "train"), (1, 11, 4, "valid"), (1, 12, 5, "test"), (1, 13, 4, "test"), (1, 14, 2, "test"),
    # user 2: no relevant test item (rating 1) -> excluded from the means
    (2, 12, 3, "train"), (2, 15, 1, "test"),
    # user 3: train 10, test 14 (5)
    (3, 10, 4, "train"), (3, 14, 5, "test"),
]
SCORES = torch.tensor([
    [9.0, 8.0, 1.0, 5.0, 7.0, 6.0],   # user 1
    [0.0, 0.0, 0.0, 0.0, 0.0, 9.0],   # user 2 (never evaluated)
    [0.0, 1.0, 2.0, 3.0, 4.0, 5.0],   # user 3
])


@pytest.fixture
def tiny():
    df = pd.DataFrame(RATINGS, columns=["user_id", "movie_id", "rating", "part"])
    df["ts"] = np.arange(len(df))
    return from_frames(df[["user_id", "movie_id", "rating", "ts"]], df[["user_id", "movie_id", "part"]],
                       movie_ids=range(10, 16))


def _score(users):
    return SCORES[users]


def test_hand_computed_metrics(tiny):
    # user 1: 10 (train) and 11 (valid) are excluded -> ranking 14, 15, 13, 12; relevant {12, 13}
    #   k=2: no hit -> recall 0, ndcg 0
    #   k=3: hit at rank 3 -> recall 1/2, DCG = 1/log2(4) = 0.5, IDCG = 1 + 1/log2(3) = 1.63093
    #   k=4: hits at ranks 3, 4 -> recall 1, DCG = 0.5 + 1/log2(5) = 0.93068
    # user 3: 10 (train) excluded -> ranking 15, 14, 13, ...; relevant {14} at rank 2
    #   every k >= 2: recall 1, ndcg = (1/log2(3)) / 1 = 0.63093
    # user 2 has no relevant test movie: excluded. Coverage@2: tops {14, 15} and {15, 14} -> 2/6.
    res = evaluate(_score, tiny, "test", ks=(2, 3, 4), coverage_k=2, batch_size=2)
    idcg2 = 1 + 1 / math.log2(3)
    assert res["n_users"] == 2
    assert res["recall@2"] == pytest.approx((0 + 1) / 2)
    assert res["ndcg@2"] == pytest.approx((0 + 1 / math.log2(3)) / 2)
    assert res["recall@3"] == pytest.approx((0.5 + 1) / 2)
    assert res["ndcg@3"] == pytest.approx((0.5 / idcg2 + 1 / math.log2(3)) / 2)
    assert res["recall@4"] == pytest.approx(1.0)
    assert res["ndcg@4"] == pytest.approx(((0.5 + 1 / math.log2(5)) / idcg2 + 1 / math.log2(3)) / 2)
    assert res["coverage@2"] == pytest.approx(2 / 6)


def test_valid_part_excludes_only_train(tiny):
    # valid: user 1 has relevant {11}; only 10 (train) is excluded, so 11 (score 8) ranks first.
    res = evaluate(_score, tiny, "valid", ks=(1,), coverage_k=1)
    assert res["n_users"] == 1
    assert res["recall@1"] == pytest.approx(1.0)
    assert res["ndcg@1"] == pytest.approx(1.0)


def test_seen_items_never_ranked(tiny):
    # a scorer that loves exactly the seen movies: none of them may appear in any top list
    seen = tiny.seen("test")
    scores = torch.as_tensor(seen.toarray() * 100.0) + torch.rand(3, 6)
    out = rank_metrics(scores, seen, tiny.relevant("test"), ks=(3,))
    for u in range(3):
        assert not set(out["top"][u]) & set(seen[u].indices)


def test_index_maps_and_matrices(tiny):
    assert list(tiny.user_ids) == [1, 2, 3] and tiny.n_movies == 6
    assert tiny.train_pos.toarray().sum() == 2      # (1,10,5) and (3,10,4); (2,12,3) is neutral
    assert tiny.relevant("test")[0].indices.tolist() == [2, 3]
    assert tiny.seen("test")[0].indices.tolist() == [0, 1]
