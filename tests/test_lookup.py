"""posterkg.lookup: the vectorised id lookup every id -> index conversion goes through, checked
against a dict, and the callers that raise or drop on a missing id."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from posterkg.lookup import find, find_sorted


def _world(seed=0):
    rng = np.random.default_rng(seed)
    keys = rng.permutation(np.arange(0, 4000, 3))            # unique, unsorted
    values = rng.integers(-5, 4005, 5000)                   # many absent, some below / above all keys
    return keys, values


def test_find_is_a_dict_lookup_for_keys_in_any_order():
    keys, values = _world()
    at, ok = find(keys, values)
    ref = {int(k): i for i, k in enumerate(keys)}
    assert ok.tolist() == [int(v) in ref for v in values]
    assert at[ok].tolist() == [ref[int(v)] for v in values[ok]]
    assert 0 < ok.mean() < 1 and (at >= 0).all() and (at < len(keys)).all()   # clipped, never past the end
    at, ok = find(np.array([], np.int64), values)
    assert not ok.any() and at.shape == values.shape


def test_find_sorted_keeps_the_values_shape_and_clips_missing_positions():
    keys, values = _world(1)
    table = np.sort(keys)
    grid = values[:600].reshape(20, 30)                     # e.g. a [users, top-k] block of keys
    pos, ok = find_sorted(table, grid)
    assert pos.shape == ok.shape == (20, 30)
    ref = {int(k): i for i, k in enumerate(table)}
    for p, o, v in zip(pos.ravel(), ok.ravel(), grid.ravel()):
        assert o == (int(v) in ref) and (not o or p == ref[int(v)])
    assert (table[pos[ok]] == grid[ok]).all() and pos.max() <= len(table) - 1
    # a value above every key is not found (searchsorted alone would point past the end)
    pos, ok = find_sorted(np.array([1, 5, 9]), np.array([9, 10, 0, 5]))
    assert ok.tolist() == [True, False, False, True] and pos.tolist() == [2, 2, 0, 1]


def test_id_vocab_marks_unknown_ids():
    from posterkg.gnn.base import IdVocab

    vocab = IdVocab(np.array([3, 7, 11]), np.array([2, 4]))
    idx, ok = vocab.lookup("user", [11, 4, 3, 12])
    assert idx.tolist() == [2, -1, 0, -1] and ok.tolist() == [True, False, True, False]
    idx, ok = vocab.lookup("concept", [1, 2])               # no concepts at all
    assert idx.tolist() == [-1, -1] and not ok.any()
    assert [vocab.index("user", u) for u in (3, 7, 11)] == [0, 1, 2]
    assert vocab.index("movie", np.int64(4)) == 1
    assert vocab.has("movie", 2) and not vocab.has("movie", 3) and not vocab.has("concept", 0)
    for kind, bad in (("user", 12), ("user", 4), ("concept", 0)):
        with pytest.raises(KeyError, match=f"{kind} {bad} is not"):
            vocab.index(kind, bad)


def test_interactions_remap_to_a_saved_vocabulary_drops_the_unknown():
    from posterkg.gnn.data import from_frames

    ratings = pd.DataFrame({"user_id": [1, 1, 2, 5], "movie_id": [10, 20, 10, 30],
                            "rating": [5.0, 4.0, 3.0, 5.0], "ts": [1, 2, 3, 4]})
    split = ratings[["user_id", "movie_id"]].assign(part="train")
    data = from_frames(ratings, split)
    again, dropped = data.restricted(np.array([1, 2]), np.array([10, 30]))
    p = again.parts["train"]
    kept = sorted(zip(again.user_ids[p.users].tolist(), again.movie_ids[p.movies].tolist()))
    assert kept == [(1, 10), (2, 10)]                      # user 5 and movie 20 are not in the vocabulary
    assert dropped == {"users": 1, "movies": 1}


def test_graph_edges_to_a_missing_node_raise():
    from posterkg.errors import InputError
    from posterkg.graphs.hetero import _lookup

    nodes = np.array([2, 4, 8])
    assert _lookup(nodes, [8, 2]).tolist() == [2, 0]
    for bad in ([3], [9], [1]):
        with pytest.raises(InputError, match="missing from its node table"):
            _lookup(nodes, bad)
    assert _lookup(nodes, []).tolist() == []
