"""The posterkg GNN (posterkg/gnn/model.py) against expectations computed independently with
numpy on a hand-made graph, then learning on planted tastes.

Hand-made graph (indices): users 0, 1, 2; movies 0..3; concepts 0..2.
pos: (0,0) (0,1) (1,1) (1,3); neu: (1,2); neg: (0,2) (2,0) (2,3)
has: movie 0 -> c0 (1.0), c1 (0.5); movie 1 -> c1 (0.8); movie 2 -> c2 (1.0); movie 3 -> c0 (0.4), c2 (0.6)
likes: user 0 -> c0 (0.9), c1 (0.3); user 1 -> c1 (0.5)
dislikes: user 0 -> c2 (0.7); user 2 -> c2 (0.8)   (user 2 has only negative edges)
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from gnn_synth import make_db, planted, planted_gaps
from torch_threads import one_torch_thread  # noqa: F401
from posterkg.gnn.base import Graph, IdVocab, ModelInputs
from posterkg.gnn.baselines import MostPop
from posterkg.gnn.evaluate import evaluate_model
from posterkg.gnn.inputs import assemble
from posterkg.gnn.model import ModelConfig, PosterKG, knowledge
from posterkg.gnn.train import TrainConfig, train
from posterkg.store import open_store

POS = [(0, 0), (0, 1), (1, 1), (1, 3)]
NEU = [(1, 2)]
NEG = [(0, 2), (2, 0), (2, 3)]
HAS = [(0, 0, 1.0), (0, 1, 0.5), (1, 1, 0.8), (2, 2, 1.0), (3, 0, 0.4), (3, 2, 0.6)]
LIKES = [(0, 0, 0.9), (0, 1, 0.3), (1, 1, 0.5)]
DISLIKES = [(0, 2, 0.7), (2, 2, 0.8)]
NU, NM, NC = 3, 4, 3


def hand_inputs() -> ModelInputs:
    ids = IdVocab(np.array([1, 2, 3]), np.array([10, 11, 12, 13]), np.array([100, 101, 102]))
    g = Graph(ids.sizes)
    for name, edges in (("pos", POS), ("neu", NEU), ("neg", NEG)):
        g.add(name, [u for u, _ in edges], [m for _, m in edges])
    for name, edges in (("has", HAS), ("likes", LIKES), ("dislikes", DISLIKES)):
        g.add(name, [a for a, _, _ in edges], [b for _, b, _ in edges], np.array([w for *_, w in edges], np.float32))
    return ModelInputs(ids, None, g)


def sym_norm(edges, n_users, n) -> np.ndarray:
    """D^-1/2 (A + A^T) D^-1/2 of user-movie edges over users + movies, dense numpy."""
    a = np.zeros((n, n))
    for u, m in edges:
        a[u, n_users + m] += 1
        a[n_users + m, u] += 1
    d = a.sum(1)
    inv = np.where(d > 0, 1 / np.sqrt(np.maximum(d, 1e-12)), 0)
    return inv[:, None] * a * inv[None, :]


def row_norm(edges, n_rows, n_cols) -> np.ndarray:
    a = np.zeros((n_rows, n_cols))
    for r, c, w in edges:
        a[r, c] += w
    s = a.sum(1, keepdims=True)
    return np.where(s > 0, a / np.maximum(s, 1e-12), 0)


def model_with(cfg: ModelConfig, seed: int = 0) -> tuple[PosterKG, ModelInputs]:
    inputs = hand_inputs()
    torch.manual_seed(seed)
    return PosterKG(inputs, cfg).eval(), inputs


def np_(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


# -- stage 1 ---------------------------------------------------------------------------------
def test_signed_propagation_matches_numpy():
    # x_{l+1} = P x_l - neg_weight N x_l (+ neutral_weight Z x_l), output the layer mean
    cfg = ModelConfig(dim=4, item_side=False, user_side=False, stage2=False, signed_layers=2,
                      neg_weight=0.5, neutral_weight=0.25)
    m, inputs = model_with(cfg)
    n = NU + NM
    P, N, Z = sym_norm(POS, NU, n), sym_norm(NEG, NU, n), sym_norm(NEU, NU, n)
    x = np.concatenate([np_(m.user.weight), np_(m.movie.weight)])
    acc = x.copy()
    for _ in range(2):
        x = P @ x - 0.5 * (N @ x) + 0.25 * (Z @ x)
        acc += x
    want = acc / 3
    u, mv, _ = m.embeddings(inputs.graph)
    np.testing.assert_allclose(np.concatenate([np_(u), np_(mv)]), want, rtol=1e-5, atol=1e-6)


def test_negative_edges_push_apart():
    # one layer, negative edges only: a user's vector moves against the movie they disliked
    cfg = ModelConfig(dim=4, item_side=False, user_side=False, stage2=False, signed_layers=1, neg_weight=1.0)
    m, inputs = model_with(cfg)
    g = inputs.graph.without("pos", "neu")
    with torch.no_grad():
        m.user.weight.zero_()
    u, mv, _ = m.embeddings(g)
    # user 2 disliked movies 0 and 3 (each of degree 1 in neg; user 2 has degree 2)
    want = -(np_(m.movie.weight[0]) + np_(m.movie.weight[3])) / np.sqrt(2) / 2
    np.testing.assert_allclose(np_(u[2]), want, rtol=1e-5, atol=1e-6)
    assert float(u[2] @ m.movie.weight[0]) < 0


def test_user_and_item_sides_match_numpy():
    # user side: likes mean minus dislikes mean (row-normalised weights); item side: concepts mean
    cfg = ModelConfig(dim=4, interaction_side=False, stage2=False)
    m, inputs = model_with(cfg)
    ec = np_(m.concept.weight)
    a, b = float(m.side_scale[0]), float(m.side_scale[1])
    want_u = np_(m.user.weight) + a * (row_norm(LIKES, NU, NC) @ ec - row_norm(DISLIKES, NU, NC) @ ec)
    want_m = np_(m.movie.weight) + b * (row_norm(HAS, NM, NC) @ ec)
    u, mv, c = m.embeddings(inputs.graph)
    np.testing.assert_allclose(np_(u), want_u, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np_(mv), want_m, rtol=1e-5, atol=1e-6)
    # user 2 only dislikes concept 2: with a zero id embedding it points away from it
    with torch.no_grad():
        m.user.weight.zero_()
    u, _, _ = m.embeddings(inputs.graph)
    assert float(u[2] @ m.concept.weight[2]) < 0


# -- stage 2 ---------------------------------------------------------------------------------
def test_stage2_suppresses_through_neg_and_dislikes():
    # stage 2 only, plain means: user 2 (only negative edges) receives
    #   (x_u + gate_neg * mean(disliked movies) + gate_dislikes * wmean(disliked concepts)) / 2
    # with both gates negative; a zero user embedding and orthogonal inputs isolate each part
    cfg = ModelConfig(dim=4, interaction_side=False, item_side=False, user_side=False, attention=False,
                      stage2_layers=1)
    m, inputs = model_with(cfg)
    with torch.no_grad():
        m.user.weight.zero_()
        m.movie.weight.zero_()
        m.concept.weight.zero_()
        m.movie.weight[0, 0] = 1.0     # disliked by user 2
        m.movie.weight[3, 1] = 1.0     # disliked by user 2
        m.concept.weight[2, 2] = 1.0   # disliked concept of user 2
    sp = torch.nn.functional.softplus
    g_neg, g_dis = float(sp(m.gate["neg"])), float(sp(m.gate["dislikes"]))
    u, _, _ = m.embeddings(inputs.graph)
    want = np.array([-g_neg * 0.5, -g_neg * 0.5, -g_dis * 1.0, 0.0]) / 2
    np.testing.assert_allclose(np_(u[2]), want, rtol=1e-5, atol=1e-7)
    assert float(u[2] @ m.movie.weight[0]) < 0 and float(u[2] @ m.concept.weight[2]) < 0
    # without signed gates the suppressing relations are dropped from stage 2
    m2, _ = model_with(dataclasses.replace(cfg, signed_gates=False))
    ops = m2.operators(inputs.graph)
    assert {r for r, _, _ in ops["rels"]} == {"pos", "has", "likes"}


def test_gate_signs():
    m, _ = model_with(ModelConfig(dim=4))
    for rel in ("pos", "neu", "has", "likes"):
        assert float(m._gate(rel)) > 0
    for rel in ("neg", "dislikes"):
        assert float(m._gate(rel)) < 0


# -- the graph is an argument ----------------------------------------------------------------
def test_graph_argument_cached_masked_and_deleted():
    m, inputs = model_with(ModelConfig(dim=4))
    g = inputs.graph
    assert m.operators(g) is m.operators(g)           # cached on the graph without a gradient
    base = torch.cat(m.embeddings(g)[:2]).detach()
    masks = {r: torch.ones(len(g.get(r)), requires_grad=True) for r in ("has", "likes", "dislikes", "pos")}
    mg = g.masked(masks)
    assert m.operators(mg) is not m.operators(mg)      # rebuilt: the gradient must reach the masks
    out = m.embeddings(mg)
    torch.testing.assert_close(torch.cat(out[:2]).detach(), base, rtol=1e-6, atol=1e-6)
    s = out[0][0] @ out[1][3]
    grads = torch.autograd.grad(s, list(masks.values()))
    assert all(torch.isfinite(x).all() for x in grads) and float(grads[0].abs().sum()) > 0
    # deleting movie 3's concept edges (mask 0) changes movie 3 only through its edges
    zero = torch.ones(len(g.get("has")))
    zero[[4, 5]] = 0.0
    emb_del = m.embeddings(g.masked({"has": zero}))
    emb_without = m.embeddings(Graph(g.sizes, {**g.relations, "has": _subset(g.get("has"), [0, 1, 2, 3])}))
    torch.testing.assert_close(emb_del[1], emb_without[1], rtol=1e-6, atol=1e-6)
    assert not torch.allclose(emb_del[1][3], m.embeddings(g)[1][3])


def _subset(rel, keep):
    from posterkg.gnn.base import Relation

    k = torch.tensor(keep)
    return Relation(rel.src[k], rel.dst[k], rel.weight[k])


def test_novisual_uses_no_concepts():
    m, inputs = model_with(ModelConfig(dim=4, concepts=False))
    ops = m.operators(inputs.graph)
    assert ops["n_concepts"] == 0 and "item_side" not in ops
    assert not {r for r, _, _ in ops["rels"]} & {"has", "likes", "dislikes"}


# -- planted tastes --------------------------------------------------------------------------
FAST = dict(dim=16, batch_size=256, lr=0.02, threads=1)   # one thread: tiny sparse products spin on more


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    db = make_db(tmp_path_factory.mktemp("synth") / "s.duckdb")
    with open_store(db, read_only=True) as store:
        yield assemble(store).inputs, planted(store)


def test_genre_fallback_recovers_planted_favourites(synth):
    inputs, fav = synth
    kg = knowledge(inputs.graph)
    assert kg.source == "genres" and kg.n_concepts == 4
    assert (kg.likes.weight > 0).all() and (kg.dislikes.weight > 0).all()
    top = {}
    for u, c, w in zip(kg.likes.src.tolist(), kg.likes.dst.tolist(), kg.likes.weight.tolist()):
        if w > top.get(u, (None, -1))[1]:
            top[u] = (c, w)
    names = inputs.ids.genre_names
    hit = np.mean([names[top[i][0]] == fav[int(uid)] for i, uid in enumerate(inputs.ids.user_ids) if i in top])
    assert hit >= 0.9, hit


@pytest.mark.parametrize("switch", [
    {"stage2": False}, {"attention": False, "signed_gates": False}, {"interaction_side": False},
    {"cl_weight": 0.0, "struct_weight": 0.0, "hard_negative_weight": 0.1, "neutral_weight": 0.3, "stage2_layers": 2},
])
def test_every_switch_trains(synth, switch):
    inputs, _ = synth
    res = train(inputs, TrainConfig(model="posterkg", epochs=2, patience=2, **FAST),
                model_cfg=ModelConfig(dim=16, **switch))
    assert all(np.isfinite(h["loss"]) for h in res.history)
    u, m, _ = res.model.embeddings(inputs.graph)
    assert u.shape == (inputs.n_users, 16) and m.shape == (inputs.n_movies, 16)


def test_posterkg_recovers_planted_tastes(synth):
    """Trained on the planted world (each user loves one genre): for nearly every user the unseen
    movies of the planted genre outscore the others by more than a standard deviation, which
    popularity cannot do, and test NDCG@20 beats MostPop's."""
    inputs, fav = synth
    data = inputs.data
    res = train(inputs, TrainConfig(model="posterkg", epochs=6, patience=6, **FAST))
    assert res.history[-1]["bpr"] < 0.6 * res.history[0]["bpr"]
    gaps = planted_gaps(res.model, inputs, fav)
    assert (gaps > 0).mean() >= 0.95 and np.median(gaps) > 1.0, (np.mean(gaps > 0), np.median(gaps))
    pop_gaps = planted_gaps(MostPop(inputs), inputs, fav)
    assert np.median(pop_gaps) < 0.5                   # the planted structure is not popularity
    # scored from the graph it was trained on (train only): what the planted structure is about
    got = evaluate_model(res.model, data, "test", history_of="valid")
    pop = evaluate_model(MostPop(inputs), data, "test", history_of="valid")
    assert got["ndcg@20"] > pop["ndcg@20"] + 0.02, (got, pop)
