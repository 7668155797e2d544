"""Baselines: MostPop, BPR-MF, LightGCN (ids and genre graph) in the shared harness."""

import numpy as np
import pytest
import torch

from gnn_synth import make_db
from posterkg.gnn.baselines import LightGCN, MostPop, sym_norm_adj
from posterkg.gnn.data import load_interactions
from posterkg.gnn.evaluate import evaluate
from posterkg.gnn.train import TrainConfig, build_model, train
from posterkg.store import open_store


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    db = make_db(tmp_path_factory.mktemp("synth") / "s.duckdb")
    store = open_store(db, read_only=True)
    yield store, load_interactions(store)
    store.close()


def test_sym_norm_adj_matches_dense_formula():
    # path graph 0-1, 1-2: degrees 1, 2, 1 -> A_01 = 1/sqrt(1*2)
    adj = sym_norm_adj(3, np.array([0, 1]), np.array([1, 2])).to_dense()
    d = np.array([1.0, 2.0, 1.0])
    a = np.array([[0, 1, 0], [1, 0, 1], [0, 1, 0]], float)
    np.testing.assert_allclose(adj.numpy(), a / np.sqrt(np.outer(d, d)), rtol=1e-6)


def test_mostpop_ranks_by_train_positives_and_skips_seen(synth):
    store, data = synth
    model = MostPop(data)
    pop = np.asarray(data.train_pos.sum(0)).ravel()
    scores = model.score(torch.arange(3))
    assert torch.equal(scores[0], torch.as_tensor(pop, dtype=torch.float32))
    res = evaluate(model.score, data, "test")
    assert 0 < res["n_users"] <= data.n_users
    # every user gets the same list: coverage is at most ~20 movies (+ the seen ones pushed out)
    assert res["coverage@20"] * data.n_movies <= 20 + max(np.diff(data.seen("test").indptr))


def test_lightgcn_layers_are_propagation_means(synth):
    _, data = synth
    torch.manual_seed(0)
    model = LightGCN(data, dim=8, layers=2)
    e = model.emb.weight.detach()
    a = model.adj.to_dense()
    want = (e + a @ e + a @ (a @ e)) / 3
    u, m = model.embeddings()
    torch.testing.assert_close(torch.cat([u, m]).detach(), want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["bprmf", "lightgcn", "lightgcn-genre"])
def test_trained_baselines_beat_mostpop_on_planted_tastes(synth, kind):
    store, data = synth
    pop = evaluate(MostPop(data).score, data, "test")
    cfg = TrainConfig(model=kind, dim=16, epochs=40, batch_size=256, lr=0.02, patience=40, seed=1)
    res = train(data, cfg, store=store)
    assert res.history[-1]["loss"] < res.history[0]["loss"]
    got = evaluate(res.model.score, data, "test")
    assert got["ndcg@20"] > pop["ndcg@20"], (kind, got, pop)


def test_genre_graph_adds_genre_nodes(synth):
    store, data = synth
    model = build_model(TrainConfig(model="lightgcn-genre", dim=8), data, store=store)
    assert model.emb.num_embeddings == data.n_users + data.n_movies + 4
    assert model.kind == "lightgcn-genre"


@pytest.mark.slow
def test_real_lightgcn_beats_mostpop(ml1m_db_copy):
    """Short LightGCN run on ../shared ML-1M (temporal split): the loss falls and NDCG@20 on the
    full test protocol beats MostPop's."""
    with open_store(ml1m_db_copy, read_only=True) as store:
        data = load_interactions(store)
        pop = evaluate(MostPop(data).score, data, "test")
        # big BPR batches (8 full-graph steps per epoch) keep this well under a minute on 2 cores
        cfg = TrainConfig(model="lightgcn", dim=64, layers=2, epochs=6, lr=0.05, batch_size=32768,
                          patience=6, seed=0)
        res = train(data, cfg)
    assert res.history[-1]["bpr"] < res.history[0]["bpr"]
    got = evaluate(lambda u: res.model.score(u), data, "test")
    assert got["ndcg@20"] > pop["ndcg@20"], (got, pop)
