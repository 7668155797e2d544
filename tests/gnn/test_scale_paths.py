"""The bounded-memory paths for ML-25M-size data give exactly what the plain ones give.

* ``load_interactions`` reads numpy columns (``part`` as a uint8 code) and builds the same
  arrays as a pandas frame of the same query (the former loader);
* ``evaluate`` in user batches of any size equals a reference computed here from the full
  users x movies score matrix with numpy;
* ``recommend`` / ``write_recommendations`` in batches equal the top k of the full masked matrix;
* ``[gnn] max_steps`` cuts training after that many optimizer steps, evaluates, and stops.
"""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from gnn_synth import make_db
from torch_threads import one_torch_thread  # noqa: F401
from posterkg.errors import ConfigError
from posterkg.gnn.api import load_model, save_model, write_recommendations
from posterkg.gnn.data import PARTS, read_split_rows, load_interactions
from posterkg.gnn.evaluate import _hits, evaluate, evaluate_model
from posterkg.gnn.inputs import assemble
from posterkg.gnn.train import TrainConfig, train
from posterkg.store import open_store


@pytest.fixture(scope="module")
def synth_db(tmp_path_factory):
    return make_db(tmp_path_factory.mktemp("scale") / "s.duckdb", n_users=60, n_movies=90, per_user=30)


@pytest.fixture(scope="module")
def trained(synth_db, tmp_path_factory):
    """A BPR-MF trained for one short epoch (continuous scores: no ties), stored in a copy."""
    db = tmp_path_factory.mktemp("scale_model") / "m.duckdb"
    shutil.copy(synth_db, db)
    with open_store(db) as store:
        inputs = assemble(store).inputs
        res = train(inputs, TrainConfig(model="bprmf", dim=8, epochs=1, batch_size=64, seed=3, threads=1))
        save_model(store, res, inputs)
    return db


def test_part_is_read_as_a_small_integer_code(synth_db):
    with open_store(synth_db, read_only=True) as store:
        rows = read_split_rows(store)
        ref = store.df("SELECT s.user_id, s.movie_id, s.part, r.rating, r.ts FROM split s "
                       "JOIN ratings r USING (user_id, movie_id) ORDER BY s.user_id, r.ts, s.movie_id")
    assert rows["part"].dtype == np.uint8 and rows["part"].nbytes == len(ref)
    assert rows["user_id"].dtype == np.int32 and rows["movie_id"].dtype == np.int32
    assert not any(a.dtype == object for a in rows.values())
    np.testing.assert_array_equal(np.asarray(PARTS)[rows["part"]], ref["part"].to_numpy())
    np.testing.assert_array_equal(rows["user_id"], ref["user_id"].to_numpy())
    np.testing.assert_array_equal(rows["movie_id"], ref["movie_id"].to_numpy())
    np.testing.assert_array_equal(rows["rating"], ref["rating"].to_numpy(np.float32))
    np.testing.assert_array_equal(rows["ts"], ref["ts"].to_numpy(np.int64))


def test_load_interactions_matches_the_frame_built_arrays(synth_db):
    with open_store(synth_db, read_only=True) as store:
        data = load_interactions(store)
        ref = store.df("SELECT s.user_id, s.movie_id, s.part, r.rating, r.ts FROM split s "
                       "JOIN ratings r USING (user_id, movie_id) ORDER BY s.user_id, r.ts, s.movie_id")
        movie_ids = store.df("SELECT movie_id FROM movies ORDER BY movie_id")["movie_id"].to_numpy(np.int64)
    user_ids = np.unique(ref["user_id"].to_numpy(np.int64))
    np.testing.assert_array_equal(data.user_ids, user_ids)
    np.testing.assert_array_equal(data.movie_ids, movie_ids)
    for name in PARTS:
        r = ref[ref["part"] == name]
        p = data.parts[name]
        assert len(p) == len(r) > 0
        assert p.users.dtype == p.movies.dtype == np.int64 and p.ratings.dtype == np.float32
        np.testing.assert_array_equal(p.users, np.searchsorted(user_ids, r["user_id"].to_numpy()))
        np.testing.assert_array_equal(p.movies, np.searchsorted(movie_ids, r["movie_id"].to_numpy()))
        np.testing.assert_array_equal(p.ratings, r["rating"].to_numpy(np.float32))
        np.testing.assert_array_equal(p.ts, r["ts"].to_numpy(np.int64))


def _reference_metrics(scores: np.ndarray, data, part: str, ks=(10, 20), coverage_k=20) -> dict:
    """The protocol on the full dense matrix, by plain numpy (no batching, no torch)."""
    seen = data.seen(part).toarray() > 0
    rel = data.relevant(part).toarray() > 0
    s = np.where(seen, -np.inf, scores.astype(np.float32))
    order = np.argsort(-s, axis=1, kind="stable")
    users = np.flatnonzero(rel.sum(1) > 0)
    out = {}
    for k in sorted(set(ks) | {coverage_k}):
        top = order[users, :k]
        hits = np.take_along_axis(rel[users], top, 1)
        n_rel = rel[users].sum(1)
        disc = 1 / np.log2(np.arange(k) + 2)
        idcg = np.array([disc[:min(n, k)].sum() for n in n_rel])
        out[f"recall@{k}"] = float((hits.sum(1) / n_rel).mean())
        out[f"ndcg@{k}"] = float(((hits * disc).sum(1) / idcg).mean())
    covered = np.zeros(data.n_movies, bool)
    covered[order[users, :coverage_k].ravel()] = True
    out[f"coverage@{coverage_k}"] = float(covered.mean())
    out["n_users"] = len(users)
    return out


@pytest.mark.parametrize("part", ["valid", "test"])
def test_batched_evaluation_equals_the_full_matrix_reference(synth_db, part):
    with open_store(synth_db, read_only=True) as store:
        data = load_interactions(store)
    rng = np.random.default_rng(0)
    full = rng.standard_normal((data.n_users, data.n_movies)).astype(np.float32)   # no ties
    want = _reference_metrics(full, data, part)
    table = torch.from_numpy(full)
    for bs in (1, 7, data.n_users):
        got = evaluate(lambda u: table[u], data, part, batch_size=bs)
        assert got.keys() == want.keys()
        for key in want:
            assert got[key] == pytest.approx(want[key], rel=1e-6, abs=1e-9), (bs, key)


def test_hits_lookup_equals_a_dense_mask():
    import scipy.sparse as sp

    rng = np.random.default_rng(1)
    b, n = 13, 50
    rel = sp.random(b, n, density=0.1, format="csr", random_state=2)
    rel.data[:] = 1.0
    top = np.stack([rng.permutation(n)[:20] for _ in range(b)])
    dense = rel.toarray() > 0
    np.testing.assert_array_equal(_hits(top, rel, n), np.take_along_axis(dense, top, 1).astype(np.float32))
    np.testing.assert_array_equal(_hits(top, sp.csr_matrix((b, n)), n), np.zeros((b, 20), np.float32))


def test_batched_recommendations_equal_the_full_masked_matrix(trained, tmp_path):
    k = 7
    with open_store(trained) as store:
        tm = load_model(store)
        users = [int(u) for u in tm.user_ids]
        full = tm.score(users).numpy()
        seen = tm.history.csr().toarray() > 0
        s = np.where(seen, -np.inf, full)
        order = np.argsort(-s, axis=1, kind="stable")[:, :k]
        want = pd.DataFrame({"user_id": np.repeat(users, k), "movie_id": tm.movie_ids[order].ravel(),
                             "rank": np.tile(np.arange(1, k + 1), len(users))})
        # the per-user API, and the streamed writer in uneven batches, with a TSV
        recs = tm.recommend_many(users, k)
        assert [m for u in users for m, _ in recs[u]] == want["movie_id"].tolist()
        out = tmp_path / "recs.tsv"
        n = write_recommendations(store, tm, users, k, batch=11, out=out)
        assert n == len(want)
        db_rows = store.df("SELECT user_id, movie_id, rank, score FROM recommendations "
                           "WHERE model_id = ? ORDER BY user_id, rank", [tm.model_id])
    tsv = pd.read_csv(out, sep="\t")
    assert not (tmp_path / "recs.tsv.partial").exists()
    for got in (db_rows, tsv):
        np.testing.assert_array_equal(got[["user_id", "movie_id", "rank"]].to_numpy(), want.to_numpy())
        np.testing.assert_allclose(got["score"].to_numpy(), np.take_along_axis(s, order, 1).ravel(), rtol=1e-6)
    # batch 1 gives the same rows
    with open_store(trained) as store:
        tm = load_model(store)
        one = pd.concat(list(tm.iter_recommendations(users, k, batch=1)), ignore_index=True)
    np.testing.assert_array_equal(one[["user_id", "movie_id", "rank"]].to_numpy(), want.to_numpy())


def test_rewriting_recommendations_replaces_the_models_rows(trained):
    with open_store(trained) as store:
        tm = load_model(store)
        users = [int(u) for u in tm.user_ids]
        write_recommendations(store, tm, users, 5, batch=16)
        n = write_recommendations(store, tm, users[:10], 3, batch=4)
        assert n == 30
        assert store.count("recommendations", f"WHERE model_id = '{tm.model_id}'") == 30 + 5 * (len(users) - 10)


@pytest.fixture(scope="module")
def synth_inputs(synth_db):
    with open_store(synth_db, read_only=True) as store:
        return assemble(store).inputs


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_max_steps_cuts_training_evaluates_and_stops(synth_inputs):
    base = TrainConfig(model="bprmf", dim=8, epochs=5, batch_size=64, seed=2, patience=10, threads=1)
    n_batches = -(-int(synth_inputs.data.train_pos.nnz) // base.batch_size)
    assert n_batches >= 3
    steps = n_batches + 2                                   # one whole epoch and two steps of the next
    res = train(synth_inputs, dataclasses.replace(base, max_steps=steps))
    assert [h["epoch"] for h in res.history] == [1, 2]
    assert [h["steps"] for h in res.history] == [n_batches, steps]
    assert all("valid_ndcg@20" in h for h in res.history)  # the cut epoch is evaluated too
    assert res.valid and res.epochs_run == 2


def test_max_steps_over_whole_epochs_changes_nothing(synth_inputs):
    base = TrainConfig(model="bprmf", dim=8, epochs=2, batch_size=64, seed=2, patience=10, threads=1)
    n_batches = -(-int(synth_inputs.data.train_pos.nnz) // base.batch_size)
    a = train(synth_inputs, base)
    b = train(synth_inputs, dataclasses.replace(base, max_steps=2 * n_batches))
    sa, sb = _state(a.model), _state(b.model)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert [h["loss"] for h in a.history] == [h["loss"] for h in b.history]
    # one step fewer gives a different model (one epoch: the kept state is that epoch's)
    one = dataclasses.replace(base, epochs=1)
    d, c = train(synth_inputs, one), train(synth_inputs, dataclasses.replace(one, max_steps=n_batches - 1))
    assert c.history[-1]["steps"] == n_batches - 1
    sd, sc = _state(d.model), _state(c.model)
    assert not all(torch.equal(sd[k], sc[k]) for k in sd)


def test_max_steps_must_not_be_negative():
    with pytest.raises(ConfigError, match="max_steps"):
        TrainConfig(model="bprmf", max_steps=-1).validate()


def test_max_steps_bounds_the_sequence_models_too(synth_inputs):
    cfg = TrainConfig(model="sasrec", dim=8, epochs=3, batch_size=8, lr=0.003, seed=0, patience=5,
                      threads=1, max_steps=3)
    res = train(synth_inputs, cfg)
    assert [h["epoch"] for h in res.history] == [1] and res.history[0]["steps"] == 3
    assert "valid_ndcg@20" in res.history[0]
