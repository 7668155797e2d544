"""Baselines: MostPop, BPR-MF, LightGCN (ids and genre graph) against hand-computed expectations,
and learning planted tastes in the shared harness."""

import numpy as np
import pytest
import torch

from gnn_synth import make_db, planted, planted_gaps
from torch_threads import one_torch_thread  # noqa: F401
from posterkg.gnn.baselines import LightGCN, MostPop
from posterkg.gnn.evaluate import evaluate_model
from posterkg.gnn.inputs import assemble
from posterkg.gnn.sparse import sym_norm_adj
from posterkg.gnn.train import TrainConfig, build_model, train
from posterkg.store import open_store


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    db = make_db(tmp_path_factory.mktemp("synth") / "s.duckdb")
    with open_store(db, read_only=True) as store:
        yield assemble(store).inputs, planted(store)


def test_sym_norm_adj_matches_dense_formula():
    # path graph 0-1, 1-2: degrees 1, 2, 1 -> A_01 = 1/sqrt(1*2)
    adj = sym_norm_adj(3, np.array([0, 1]), np.array([1, 2])).to_dense()
    d = np.array([1.0, 2.0, 1.0])
    a = np.array([[0, 1, 0], [1, 0, 1], [0, 1, 0]], float)
    np.testing.assert_allclose(adj.numpy(), a / np.sqrt(np.outer(d, d)), rtol=1e-6)


def test_mostpop_ranks_by_train_positives(synth):
    inputs, _ = synth
    data = inputs.data
    model = MostPop(inputs)
    pop = np.asarray(data.train_pos.sum(0)).ravel()
    scores = model.score(torch.arange(3), data.history("test"))
    assert torch.equal(scores[0], torch.as_tensor(pop, dtype=torch.float32))
    res = evaluate_model(model, data, "test")
    assert 0 < res["n_users"] <= data.n_users
    # every user gets the same list: coverage is at most ~20 movies (+ the seen ones pushed out)
    assert res["coverage@20"] * data.n_movies <= 20 + max(np.diff(data.seen("test").indptr))


def test_lightgcn_layers_are_propagation_means(synth):
    # expectation from the graph's pos edges in numpy, not from the model's adjacency
    inputs, _ = synth
    torch.manual_seed(0)
    model = LightGCN(inputs, LightGCN.Config(dim=8, layers=2))
    nu, nm = inputs.n_users, inputs.n_movies
    pos = inputs.graph.get("pos")
    a = np.zeros((nu + nm, nu + nm))
    a[pos.src.numpy(), nu + pos.dst.numpy()] = 1
    a = a + a.T
    d = a.sum(1)
    inv = np.where(d > 0, 1 / np.sqrt(np.maximum(d, 1)), 0)
    p = inv[:, None] * a * inv[None, :]
    e = model.emb.weight.detach().double().numpy()
    want = (e + p @ e + p @ (p @ e)) / 3
    u, m = model.embeddings(inputs.graph)
    np.testing.assert_allclose(torch.cat([u, m]).detach().double().numpy(), want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kind", ["bprmf", "lightgcn", "lightgcn-genre"])
def test_trained_baselines_learn_planted_tastes(synth, kind):
    inputs, fav = synth
    data = inputs.data
    cfg = TrainConfig(model=kind, dim=16, epochs=20, batch_size=256, lr=0.02, patience=20, seed=1, threads=1)
    res = train(inputs, cfg)
    assert res.history[-1]["loss"] < res.history[0]["loss"]
    gaps = planted_gaps(res.model, inputs, fav)
    assert (gaps > 0).mean() >= 0.9, (kind, np.mean(gaps > 0))
    got = evaluate_model(res.model, data, "test")
    pop = evaluate_model(MostPop(inputs), data, "test")
    assert got["ndcg@20"] > pop["ndcg@20"], (kind, got, pop)


def test_genre_graph_adds_genre_nodes(synth):
    inputs, _ = synth
    model = build_model(TrainConfig(model="lightgcn-genre", dim=8), inputs)
    assert model.emb.num_embeddings == inputs.n_users + inputs.n_movies + 4
    assert model.name == "lightgcn-genre"
