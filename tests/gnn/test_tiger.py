"""TIGER (posterkg/gnn/tiger.py) and its trie-constrained beam search (posterkg/gnn/trie.py).

Expected values are computed here independently: by enumerating every valid ID of a hand-made
trie, from the code matrix the test wrote, or from the planted order of a synthetic world."""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from contract_world import make_world
from gnn_synth import protocol_data
from torch_threads import one_torch_thread  # noqa: F401
from posterkg.errors import InputError
from posterkg.gnn import registry
from posterkg.gnn.api import load_model, save_model
from posterkg.gnn.base import Graph, IdVocab, ModelInputs
from posterkg.gnn.evaluate import evaluate_model
from posterkg.gnn.inputs import assemble, load_semantic_ids
from posterkg.gnn.stage import feature_spec
from posterkg.gnn.tiger import FLOOR
from posterkg.gnn.train import TrainConfig, train
from posterkg.gnn.trie import CodeTrie, beam_search
from posterkg.store import open_store


def _inputs(ratings: pd.DataFrame, n_movies: int, codes: np.ndarray) -> ModelInputs:
    data, edges = protocol_data(ratings, n_movies)
    ids = IdVocab(data.user_ids, data.movie_ids)
    g = Graph(ids.sizes)
    for name, (u, m) in edges.items():
        g.add(name, u, m)
    return ModelInputs(ids, data, g, semantic_ids=codes, semantic_version="test")


def _random_codes(n_movies: int, sizes=(4, 4), rng=None, missing=()) -> np.ndarray:
    """Unique IDs: distinct random (c0, c1) prefixes may repeat; the last code disambiguates."""
    rng = rng or np.random.default_rng(0)
    pre = rng.integers(0, sizes[0], (n_movies, 1)), rng.integers(0, sizes[1], (n_movies, 1))
    codes = np.concatenate(pre, 1)
    dis = np.zeros(n_movies, np.int64)
    seen: dict = {}
    for i, key in enumerate(map(tuple, codes)):
        dis[i] = seen.get(key, 0)
        seen[key] = dis[i] + 1
    out = np.concatenate([codes, dis[:, None]], 1).astype(np.int64)
    out[list(missing)] = -1
    return out


# -- the trie and the beam search ----------------------------------------------------------------
VALID = [(0, 0), (0, 1), (1, 2), (2, 0), (2, 1)]           # movies 0..4
STEP0 = np.log([0.5, 0.3, 0.2])
STEP1 = {0: np.log([0.4, 0.35, 0.25]), 1: np.log([0.05, 0.05, 0.9]), 2: np.log([0.1, 0.1, 0.8])}


def _planted_step(prefix: torch.Tensor) -> torch.Tensor:
    b, w, d = prefix.shape
    if d == 0:
        return torch.tensor(STEP0, dtype=torch.float32).expand(b, w, 3)
    rows = [STEP1[int(c)] for c in prefix[..., 0].reshape(-1)]
    return torch.tensor(np.stack(rows), dtype=torch.float32).view(b, w, 3)


def _brute(exclude=()) -> list[tuple[int, float]]:
    """Every valid, non-excluded movie with its sequence log-probability, best first."""
    out = [(m, STEP0[c0] + STEP1[c0][c1]) for m, (c0, c1) in enumerate(VALID) if m not in exclude]
    return sorted(out, key=lambda x: -x[1])


def test_beam_search_returns_the_known_best_sequences():
    trie = CodeTrie(np.array(VALID), [3, 3])
    movies, scores = beam_search(_planted_step, trie, 1, 5)
    want = _brute()
    assert movies[0].tolist()[:3] == [m for m, _ in want][:3]          # (1,2) .27, (0,0) .2, (0,1) .175
    assert set(movies[0].tolist()[3:]) == {3, 4}                         # (2,0) and (2,1) tie at .02
    np.testing.assert_allclose(scores[0].numpy(), [s for _, s in want], rtol=1e-6)
    # greedy (width 1) follows the most likely first code and misses the best sequence; the
    # invalid (2, 2), the likeliest continuation of code 2, never comes out
    g, gs = beam_search(_planted_step, trie, 1, 1)
    assert g[0].tolist() == [0] and math.isclose(float(gs[0, 0]), math.log(0.5 * 0.4), rel_tol=1e-6)


def test_beam_search_drops_seen_movies_without_wasting_the_beam():
    trie = CodeTrie(np.array(VALID), [3, 3])
    # row 0 has seen movie 2 = (1, 2); row 1 has seen both movies under code 0: with width 2 the
    # beam must skip prefix 0 at the first step (else only one movie could come out)
    seen = (np.array([0, 1, 1]), np.array([2, 0, 1]))
    movies, scores = beam_search(_planted_step, trie, 2, 2, seen)
    assert movies[0].tolist() == [m for m, _ in _brute({2})][:2] == [0, 1]
    assert movies[1, 0] == 2 and movies[1, 1] in (3, 4)
    assert torch.isfinite(scores).all()
    # more beam than unseen movies: the rest is -1 / -inf
    movies, scores = beam_search(_planted_step, trie, 1, 8, (np.array([0, 0]), np.array([3, 4])))
    assert sorted(movies[0, :3].tolist()) == [0, 1, 2] and (movies[0, 3:] == -1).all()
    assert torch.isinf(scores[0, 3:]).all()
    # only allowed movies (the cold-start candidates) come out; seen ones among them still do not
    allowed = np.zeros(5, bool)
    allowed[[1, 3, 4]] = True
    movies, scores = beam_search(_planted_step, trie, 2, 3, (np.array([1]), np.array([3])), allowed=allowed)
    assert movies[0].tolist() == [1, 3, 4] or movies[0].tolist() == [1, 4, 3]
    assert movies[1].tolist() == [1, 4, -1]


def test_renormalised_beam_gives_a_distribution_over_the_movies_left():
    """With ``renorm`` every step is renormalised over the codes that lead somewhere, so with a
    beam over the whole catalogue the probabilities of the movies that come out sum to 1: over
    every movie ("trie"), or over the unseen ones ("left"); each movie's score is the product
    of its codes' renormalised probabilities, computed here from the planted tables."""
    trie = CodeTrie(np.array(VALID), [3, 3])
    movies, scores = beam_search(_planted_step, trie, 1, 5, renorm="trie")
    assert sorted(movies[0].tolist()) == [0, 1, 2, 3, 4]
    assert float(scores[0].exp().sum()) == pytest.approx(1.0, abs=1e-6)
    kids = {0: [0, 1], 1: [2], 2: [0, 1]}
    p0 = np.exp(STEP0) / np.exp(STEP0).sum()
    want = {m: p0[c0] * np.exp(STEP1[c0][c1]) / np.exp(STEP1[c0][kids[c0]]).sum() for m, (c0, c1) in enumerate(VALID)}
    got = dict(zip(movies[0].tolist(), scores[0].exp().tolist()))
    assert got == pytest.approx(want, abs=1e-6)
    # movie 2 (1, 2) seen: code 1 has nothing left, so "left" renormalises the first step over
    # codes 0 and 2; the unseen movies' probabilities still sum to 1
    seen = (np.array([0]), np.array([2]))
    movies, scores = beam_search(_planted_step, trie, 1, 5, seen, renorm="left")
    ok = movies[0] >= 0
    assert sorted(movies[0][ok].tolist()) == [0, 1, 3, 4]
    assert float(scores[0][ok].exp().sum()) == pytest.approx(1.0, abs=1e-6)
    q0 = np.exp(STEP0[[0, 2]]) / np.exp(STEP0[[0, 2]]).sum()
    assert dict(zip(movies[0][ok].tolist(), scores[0][ok].exp().tolist()))[0] == pytest.approx(q0[0] * want[0] / p0[0])
    # unnormalised (the default) is the plain sum of the step log-probabilities: not a distribution
    _, raw = beam_search(_planted_step, trie, 1, 5)
    assert float(raw[0].exp().sum()) < 0.9
    with pytest.raises(ValueError, match="renorm must be"):
        beam_search(_planted_step, trie, 1, 5, renorm="all")


def test_trie_rejects_duplicate_and_out_of_range_ids():
    with pytest.raises(ValueError, match="share one semantic ID"):
        CodeTrie(np.array([[0, 1], [0, 1]]), [2, 2])
    with pytest.raises(ValueError, match="outside"):
        CodeTrie(np.array([[0, 2]]), [2, 2])
    trie = CodeTrie(np.array([[1, 0], [-1, -1], [0, 1]]), [2, 2])
    assert len(trie) == 2 and trie.codes_of(1) is None and trie.codes_of(2) == (0, 1)


def _enc(encoder: str) -> dict:
    """"full", "causal", or "causal+movies" (the causal encoder with one position per history
    movie, ``history_input = "movies"``), each optionally "+tie" (``tie_output``) and "+all"
    (``inputs = "all"``: every rated movie with its sign), as model settings."""
    parts = encoder.split("+")
    unit = next((p for p in parts[1:] if p not in ("tie", "all", "id", "trie", "unseen")), "codes")
    soft = next((p for p in parts if p in ("trie", "unseen")), "full")
    return {"encoder": parts[0], "history_input": unit, "tie_output": "tie" in parts,
            "inputs": "all" if "all" in parts else "positives", "id_input": "id" in parts, "code_softmax": soft}


@pytest.mark.parametrize("encoder", ["full", "causal", "causal+movies", "causal+movies+tie", "causal+movies+all",
                                     "causal+all", "causal+movies+id", "full+trie", "causal+movies+unseen"])
def test_untrained_model_only_emits_valid_unseen_ids(encoder):
    rng = np.random.default_rng(3)
    n_users, n_movies = 60, 50
    rows = []
    for u in range(1, n_users + 1):
        for t, m in enumerate(rng.choice(np.arange(1, 41), 15, replace=False)):   # movies 41..50: never rated
            rows.append((u, int(m), float(rng.integers(1, 6)), t))
    ratings = pd.DataFrame(rows, columns=["user_id", "movie_id", "rating", "ts"])
    codes = _random_codes(n_movies, rng=rng, missing=(5, 17))
    inputs = _inputs(ratings, n_movies, codes)
    model = registry.build("tiger", inputs, registry.model_config("tiger", {"dim": 16, "layers": 1, "beam": 12,
                                                                            **_enc(encoder)}))
    model.eval()
    trie = model.trie()
    for part in ("valid", "test"):
        hist = inputs.data.history(part)
        scores = model.score(torch.arange(n_users), hist)
        movies, logp = model.generate(torch.arange(n_users), hist)
        seen = hist.csr()
        for u in range(n_users):
            got = movies[u][movies[u] >= 0].numpy()
            assert len(got) == len(set(got.tolist())) == 12
            assert not set(got) & set(seen[u].indices) and not set(got) & {5, 17}
            for m in got:
                assert trie.codes_of(int(m)) == tuple(codes[m])             # decodes to its own ID
            assert (scores[u, got] > FLOOR).all() and (scores[u, got] <= 0).all()
            rest = np.setdiff1d(np.arange(n_movies), got)
            assert (scores[u, rest] == FLOOR).all()
    cand = np.arange(30, 50)
    movies, _ = model.generate(torch.arange(n_users), inputs.data.history("test"), candidates=cand)
    assert set(movies.reshape(-1).tolist()) <= set(cand.tolist()) - {-1}
    # cold start: with a beam over the whole catalogue the never-rated movies come out too
    wide = registry.build("tiger", inputs, registry.model_config("tiger", {"dim": 16, "layers": 1, "beam": 64,
                                                                           **_enc(encoder)}))
    movies, _ = wide.eval().generate(torch.arange(5), inputs.data.history("test"))
    assert set(range(40, 50)) <= set(movies.reshape(-1).tolist())


def _cycle_world(n_users=80, n_movies=12, length=7, seed=1):
    """Each user walks the catalogue in a fixed cyclic order from a random start (every movie
    equally popular: only the order tells the next movie)."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(1, n_users + 1):
        start = int(rng.integers(0, n_movies))
        for t in range(length):
            rows.append((u, (start + t) % n_movies + 1, 5.0, 1000 * t + u))
    return pd.DataFrame(rows, columns=["user_id", "movie_id", "rating", "ts"]), n_movies


@pytest.mark.parametrize("encoder, epochs", [("full", 8), ("causal", 16), ("causal+movies", 16),
                                             ("causal+movies+tie", 16), ("causal+movies+unseen", 16),
                                             ("full+trie", 8)])
def test_tiger_learns_a_planted_order(encoder, epochs):
    """Both encoders. The causal one trains on windows (one step per 16 windows of 4 movies,
    where the full one steps per 16 targets), so it gets more epochs for as many steps."""
    ratings, n = _cycle_world()
    codes = _random_codes(n, sizes=(3, 3), rng=np.random.default_rng(7))
    inputs = _inputs(ratings, n, codes)
    cfg = TrainConfig(model="tiger", epochs=epochs, lr=0.005, batch_size=16, patience=40, seed=0,
                      eval_every=epochs // 2)
    # a window of 3 movies: training targets with 3 earlier movies exist, so valid and test
    # (5 and 6 known movies) read windows of a length seen in training
    mc = registry.model_config("tiger", {"dim": 32, "layers": 1, "heads": 2, "max_len": 3, "dropout": 0.0,
                                         "beam": 10, **_enc(encoder)})
    res = train(inputs, cfg, model_cfg=mc)
    hist = inputs.data.history("test")
    movies, _ = res.model.generate(torch.arange(inputs.n_users), hist)
    last = np.array([hist.sequence(u, positives_only=False)[-1] for u in range(inputs.n_users)])
    hit = (movies[:, 0].numpy() == (last + 1) % n).mean()
    assert hit >= 0.9, hit                        # chance: 1 in the 6 unseen movies
    seen = hist.csr()
    assert all(not set(movies[u][movies[u] >= 0].numpy()) & set(seen[u].indices) for u in range(inputs.n_users))
    # valid, under the harness's protocol: one relevant movie among the 7 unseen ones; a random
    # ranking's expected NDCG is the mean discount over the 7 ranks
    random_ndcg = float(np.mean(1 / np.log2(np.arange(2, 9))))
    assert evaluate_model(res.model, inputs.data, "valid")["ndcg@10"] >= 0.9 > random_ndcg + 0.3
    assert res.history[-1]["loss"] < res.history[0]["loss"]


# -- the database side -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("tiger") / "world.duckdb")


def test_semantic_ids_are_read_by_version_and_missing_ones_name_the_command(world, tmp_path):
    from contract_world import semantic_codes

    with open_store(world, read_only=True) as store:
        asm = assemble(store, features=feature_spec(registry.model_config("tiger-text"))).inputs
        assert asm.semantic_version == "text"
        mids = asm.ids.movie_ids
        assert [tuple(r) for r in asm.semantic_ids] == [tuple(semantic_codes(int(m), "text")) for m in mids]
        with pytest.raises(InputError, match=r"posterkg semantic-ids build --version nope"):
            load_semantic_ids(store, asm.ids, "nope")
    db = tmp_path / "bare.duckdb"
    shutil.copy(world, db)
    with open_store(db) as store:
        store.execute("DROP TABLE semantic_ids")
        with pytest.raises(InputError, match=r"semantic_ids is missing: run `posterkg semantic-ids build "
                                             r"--version poster` first"):
            assemble(store, features={"semantic_ids": "poster"})


def test_a_stored_model_keeps_its_ids_when_the_table_changes(world, tmp_path):
    db = tmp_path / "w.duckdb"
    shutil.copy(world, db)
    mcfg = registry.model_config("tiger", {"dim": 8, "layers": 1, "max_len": 8})
    with open_store(db) as store:
        inputs = assemble(store, features=feature_spec(mcfg)).inputs
        res = train(inputs, TrainConfig(model="tiger", epochs=2, batch_size=32, seed=0, threads=1), model_cfg=mcfg)
        res.model.feature_spec = feature_spec(mcfg)
        mid = save_model(store, res, inputs)
        users = [int(u) for u in inputs.ids.user_ids]
        before = load_model(store, mid).score(users)
        # the tokenizer is rebuilt with other IDs (a permutation): the stored model is unchanged
        store.execute("UPDATE semantic_ids SET codes = [codes[2], codes[1], codes[3]] WHERE version = 'poster'")
        tm = load_model(store, mid)
        torch.testing.assert_close(tm.score(users), before, rtol=0, atol=0)
        assert (tm.model.codes.numpy() == inputs.semantic_ids).all()


# -- the causal encoder: one pass trains every position of a window --------------------------------
def test_causal_windows_cover_every_target_once():
    ratings, n = _cycle_world(n_users=5, n_movies=40, length=23)
    inputs = _inputs(ratings, n, _random_codes(n, sizes=(8, 8)))
    model = registry.build("tiger", inputs, registry.model_config("tiger", {"dim": 16, "layers": 1, "max_len": 4,
                                                                            "encoder": "causal"}))
    flat, _, starts, targets = model.train_sequences(inputs.data.history("valid"))
    wins = model.train_windows(flat, starts).numpy()
    assert wins.shape[1] == 5
    # every (previous movie, target) pair of the targets comes out of exactly one window position
    got = sorted((int(w[i]) - 1, int(w[i + 1]) - 1) for w in wins for i in range(4) if w[i] > 0 and w[i + 1] > 0)
    want = sorted((int(flat[t - 1]), int(flat[t])) for t in targets)
    assert got == want and len(got) == len(targets)
    # and each window is a run of one user's liked movies in time order
    for w in wins:
        real = w[w > 0] - 1
        k = len(real)
        assert any((flat[s:s + k] == real).all() and starts[s] == starts[s + k - 1]
                   for s in range(len(flat) - k + 1))


def test_tied_output_head_scores_codes_by_their_token_embeddings():
    """``tie_output``: the logits of ID position d are the decoder state times the embeddings of
    d's code tokens plus a bias (no separate head in the state), and the output loss trains those
    embeddings."""
    rng = np.random.default_rng(2)
    ratings, n = _cycle_world(n_users=4, n_movies=12, length=6)
    codes = _random_codes(n, sizes=(4, 5), rng=rng)
    inputs = _inputs(ratings, n, codes)
    torch.manual_seed(0)
    model = registry.build("tiger", inputs, registry.model_config(
        "tiger", {"dim": 8, "layers": 1, "heads": 2, "max_len": 4, **_enc("causal+movies+tie")}))
    assert not any(k.startswith("out.") for k in model.state_dict())
    sizes = model.cfg.code_sizes
    h = torch.randn(3, 8)
    with torch.no_grad():
        model.out_bias[1].copy_(torch.arange(sizes[1], dtype=torch.float))
    for d in range(model.D):
        start = 3 + sum(sizes[:d])                       # 3 special tokens, then each position's codes
        want = h @ model.tok.weight[start:start + sizes[d]].T + model.out_bias[d]
        assert torch.allclose(model.logits(h, d), want)
    # the output loss alone reaches the code embeddings of the target's position
    model.tok.weight.grad = None
    F_ = torch.nn.functional
    F_.cross_entropy(model.logits(h, 1), torch.tensor([0, 1, 2])).backward()
    grad = model.tok.weight.grad
    start = 3 + sizes[0]
    assert grad[start:start + sizes[1]].abs().sum() > 0
    assert grad[:start].abs().sum() == 0


@pytest.mark.parametrize("history_input, inputs, smoothing", [
    ("codes", "positives", 0.0), ("movies", "positives", 0.0), ("codes", "all", 0.0), ("movies", "all", 0.0),
    ("movies+id", "positives", 0.0), ("movies", "positives", 0.3), ("codes", "all", 0.3)])
def test_causal_loss_equals_each_prefix_read_alone(history_input, inputs, smoothing):
    """The window loss (one encoder pass) equals the mean, over every target, of the loss of the
    target's prefix encoded on its own (later movies blanked, positions kept); with the history
    read as code tokens or as one position per movie; with every rated movie read (``inputs =
    "all"``), only liked next movies are targets and each prefix carries its signs. With label
    smoothing e each code's loss is (1 - e) * -log p(code) + e * the mean of -log p over the
    position's codes."""
    rng = np.random.default_rng(5)
    ratings, n = _cycle_world(n_users=6, n_movies=30, length=9)
    codes = _random_codes(n, sizes=(5, 6), rng=rng)
    inputs_ = _inputs(ratings, n, codes)
    torch.manual_seed(0)
    history_input, id_input = history_input.split("+")[0], history_input.endswith("+id")
    model = registry.build("tiger", inputs_, registry.model_config("tiger", {"dim": 16, "layers": 2, "heads": 2,
                                                                             "max_len": 6, "encoder": "causal",
                                                                             "history_input": history_input,
                                                                             "inputs": inputs, "id_input": id_input,
                                                                             "label_smoothing": smoothing,
                                                                             # the paper's softmax over every
                                                                             # code, computed by hand below (the
                                                                             # registry's "unseen": the next test)
                                                                             "code_softmax": "full"}))
    model.eval()
    shape = model.window_tokens(torch.zeros(1, 6, dtype=torch.long)).shape
    assert shape == ((1, 6 * model.D) if history_input == "codes" else (1, 6, model.D + id_input))
    win = torch.tensor([[0, 0, 3, 7, 1, 9, 4], [5, 8, 2, 11, 12, 6, 10], [0, 0, 0, 0, 0, 14, 15]])
    # signs + 2 (1 disliked, 2 neutral, 3 liked); positives-only windows are all liked
    wsg = (torch.tensor([[0, 0, 3, 1, 3, 2, 3], [3, 2, 1, 3, 3, 1, 3], [0, 0, 0, 0, 0, 1, 3]])
           if inputs == "all" else (win > 0).long() * 3)
    with torch.no_grad():
        fast = float(model.train_loss_windows(win, wsg if inputs == "all" else None))
        losses = []
        D = model.D
        for b in range(len(win)):
            for i in range(6):
                if win[b, i] == 0 or win[b, i + 1] == 0 or wsg[b, i + 1] != 3:
                    continue
                inp = win[b:b + 1, :-1].clone()
                inp[:, i + 1:] = 0                                     # blank the later movies
                sg = wsg[b:b + 1, :-1].clone()
                sg[:, i + 1:] = 0
                memory, mask = model.encode(model.window_tokens(inp), sg if inputs == "all" else None)
                target = model.codes[win[b, i + 1] - 1].unsqueeze(0)
                h = model.decode(memory, mask, target[:, :-1])
                logp = [torch.log_softmax(model.logits(h[0, d], d), -1) for d in range(D)]
                losses.append(sum(-(1 - smoothing) * float(logp[d][target[0, d]]) - smoothing * float(logp[d].mean())
                                  for d in range(D)) / D)
    assert len(losses) == (4 + 6 + 1 if inputs == "positives" else 2 + 3 + 1)
    assert fast == pytest.approx(float(np.mean(losses)), abs=1e-5)


@pytest.mark.parametrize("mode", ["trie", "unseen"])
def test_code_softmax_runs_over_the_trie_children_and_leaves_out_the_windows_movies(mode):
    """``code_softmax``: the window loss equals, target by target, the cross-entropy of each ID
    position over the codes computed here from the code matrix: the children of the target's own
    prefix ("trie"), less those whose every movie is one of the window's other movies ("unseen");
    the decoder states come from each prefix read alone, as in the test above."""
    rng = np.random.default_rng(8)
    ratings, n = _cycle_world(n_users=6, n_movies=30, length=9)
    codes = _random_codes(n, sizes=(3, 4), rng=rng)
    inputs_ = _inputs(ratings, n, codes)
    torch.manual_seed(0)
    model = registry.build("tiger", inputs_, registry.model_config("tiger", {
        "dim": 16, "layers": 2, "heads": 2, "max_len": 6, "encoder": "causal", "history_input": "movies",
        "code_softmax": mode}))
    model.eval()
    win = torch.tensor([[0, 0, 3, 7, 1, 9, 4], [5, 8, 2, 11, 12, 6, 10], [0, 0, 0, 0, 0, 14, 15]])
    D = model.D
    n_cut = 0
    with torch.no_grad():
        fast = float(model.train_loss_windows(win))
        losses = []
        for b in range(len(win)):
            window = {int(m) - 1 for m in win[b] if m > 0}
            for i in range(6):
                if win[b, i] == 0 or win[b, i + 1] == 0:
                    continue
                inp = win[b:b + 1, :-1].clone()
                inp[:, i + 1:] = 0
                memory, mask = model.encode(model.window_tokens(inp))
                movie = int(win[b, i + 1]) - 1
                target = model.codes[movie].unsqueeze(0)
                h = model.decode(memory, mask, target[:, :-1])
                loss = 0.0
                for d in range(D):
                    same = [m for m in range(n) if tuple(codes[m, :d]) == tuple(codes[movie, :d])]
                    if mode == "unseen":
                        same = [m for m in same if m == movie or m not in window]
                    allowed = sorted({int(codes[m, d]) for m in same})
                    n_cut += len({int(codes[m, d]) for m in range(n) if tuple(codes[m, :d]) == tuple(codes[movie, :d])}) - len(allowed)
                    z = model.logits(h[0, d], d)[allowed]
                    loss += -float(torch.log_softmax(z, -1)[allowed.index(int(codes[movie, d]))])
                losses.append(loss / D)
        full = copy.deepcopy(model)
        full.cfg = dataclasses.replace(full.cfg, code_softmax="full")
        plain = float(full.train_loss_windows(win))
    assert fast == pytest.approx(float(np.mean(losses)), abs=1e-5)
    assert fast < plain                                   # a softmax over fewer codes
    assert (n_cut > 0) == (mode == "unseen")              # the windows do share prefixes here


def test_unseen_softmax_decodes_as_the_trie_one():
    """``code_softmax = "unseen"`` changes training only: decoding renormalises over the trie's
    children as ``"trie"`` does (seen movies are cut, not renormalised over), so the two give the
    same beams; with a beam over the whole catalogue the unseen movies' probabilities sum to 1 less
    the seen movies' mass."""
    ratings, n = _cycle_world(n_users=5, n_movies=20, length=6)
    codes = _random_codes(n, sizes=(3, 4), rng=np.random.default_rng(2))
    inputs_ = _inputs(ratings, n, codes)
    torch.manual_seed(0)
    model = registry.build("tiger", inputs_, registry.model_config("tiger", {
        "dim": 16, "layers": 1, "heads": 2, "max_len": 4, "encoder": "causal", "history_input": "movies",
        "code_softmax": "unseen", "beam": n}))
    model.eval()
    hist = inputs_.data.history("test")
    users = torch.arange(5)
    movies, logp = model.generate(users, hist)
    trie_model = copy.deepcopy(model)
    trie_model.cfg = dataclasses.replace(model.cfg, code_softmax="trie")
    m2, l2 = trie_model.generate(users, hist)
    assert torch.equal(movies, m2) and torch.allclose(logp, l2)
    _, everything = trie_model.generate(users, None)                # nothing seen: all n movies
    assert torch.allclose(everything.exp().sum(1), torch.ones(5), atol=1e-5)
    mass = torch.where(movies >= 0, logp.exp(), torch.zeros_like(logp)).sum(1)
    assert (mass < 1 - 1e-3).all()                                  # the seen movies keep their mass


def test_causal_encoder_is_a_checked_option():
    ratings, n = _cycle_world(n_users=3)
    with pytest.raises(ValueError, match="encoder must be"):
        registry.build("tiger", _inputs(ratings, n, _random_codes(n)), registry.model_config("tiger", {"encoder": "lstm"}))
    with pytest.raises(ValueError, match="history_input must be"):
        registry.build("tiger", _inputs(ratings, n, _random_codes(n)),
                       registry.model_config("tiger", {"encoder": "causal", "history_input": "items"}))
    with pytest.raises(ValueError, match="needs encoder = 'causal'"):
        registry.build("tiger", _inputs(ratings, n, _random_codes(n)),
                       registry.model_config("tiger", {"encoder": "full", "history_input": "movies"}))
    with pytest.raises(ValueError, match="inputs must be"):
        registry.build("tiger", _inputs(ratings, n, _random_codes(n)),
                       registry.model_config("tiger", {"encoder": "causal", "inputs": "liked"}))
    with pytest.raises(ValueError, match="label_smoothing must be in"):
        registry.build("tiger", _inputs(ratings, n, _random_codes(n)), registry.model_config("tiger", {"label_smoothing": -0.1}))
    with pytest.raises(ValueError, match="id_input needs history_input = 'movies'"):
        registry.build("tiger", _inputs(ratings, n, _random_codes(n)),
                       registry.model_config("tiger", {"encoder": "causal", "history_input": "codes", "id_input": True}))
    with pytest.raises(ValueError, match="code_softmax must be"):
        registry.build("tiger", _inputs(ratings, n, _random_codes(n)), registry.model_config("tiger", {"code_softmax": "seen"}))
    with pytest.raises(ValueError, match="'unseen' needs encoder = 'causal'"):
        registry.build("tiger", _inputs(ratings, n, _random_codes(n)),
                       registry.model_config("tiger", {"encoder": "full", "history_input": "codes",
                                                       "code_softmax": "unseen"}))
    with pytest.raises(ValueError, match="label_smoothing goes with code_softmax = 'full'"):
        registry.build("tiger", _inputs(ratings, n, _random_codes(n)),
                       registry.model_config("tiger", {"code_softmax": "trie", "label_smoothing": 0.1}))
    with pytest.raises(ValueError, match="inputs = 'all' needs encoder = 'causal'"):
        registry.build("tiger", _inputs(ratings, n, _random_codes(n)),
                       registry.model_config("tiger", {"encoder": "full", "history_input": "codes", "inputs": "all"}))


def _mixed_world(n_users=6, n_movies=30, length=12, seed=4) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = [(u, int(m), float(rng.integers(1, 6)), t) for u in range(1, n_users + 1)
            for t, m in enumerate(rng.choice(np.arange(1, n_movies + 1), length, replace=False))]
    return pd.DataFrame(rows, columns=["user_id", "movie_id", "rating", "ts"])


def test_all_inputs_windows_read_every_rating_and_train_liked_targets_once():
    """``inputs = "all"``: the sequences hold every rated movie with its sign; each liked movie
    with an earlier rating is a target exactly once, after the movie rated just before it
    (whatever its sign), and the signs' windows line up with the movies'."""
    ratings = _mixed_world(length=14)
    n = 30
    inputs = _inputs(ratings, n, _random_codes(n, sizes=(8, 8)))
    model = registry.build("tiger", inputs, registry.model_config("tiger", {"dim": 16, "layers": 1, "max_len": 4,
                                                                            **_enc("causal+movies+all")}))
    hist = inputs.data.history("valid")
    flat, sg, starts, targets = model.train_sequences(hist)
    assert len(flat) == len(hist.movies)                           # every rating read
    assert set(sg.tolist()) == {1, 2, 3} and ((sg == 3) == (hist.ratings >= 4)).all()
    assert (sg[targets] == 3).all() and len(targets) == int(((sg == 3) & (np.arange(len(flat)) > starts)).sum())
    wins, wsg = model.train_windows(flat, starts).numpy(), model.train_windows(sg - 1, starts).numpy()
    assert ((wins > 0) == (wsg > 0)).all()
    nxt_liked = (wins[:, :-1] > 0) & (wins[:, 1:] > 0) & (wsg[:, 1:] == 3)
    got = sorted(zip((wins[:, :-1][nxt_liked] - 1).tolist(), (wins[:, 1:][nxt_liked] - 1).tolist()))
    want = sorted(zip(flat[targets - 1].tolist(), flat[targets].tolist()))
    assert got == want
    # and the training loss runs on them
    with torch.no_grad():
        assert torch.isfinite(model.train_loss_windows(torch.from_numpy(wins), torch.from_numpy(wsg)))


def test_all_inputs_scores_depend_on_disliked_movies_only_when_read():
    """A disliked movie changes the generated movies' scores with ``inputs = "all"`` and not
    with positives only."""
    ratings = _mixed_world()
    n = 30
    codes = _random_codes(n, sizes=(6, 6))
    inputs = _inputs(ratings, n, codes)
    hist = inputs.data.history("test")
    # a user whose last history rating is a dislike
    user = next(u for u in range(inputs.n_users)
                if hist.ratings[hist.indptr[u + 1] - 1] < 3 and (hist.ratings[hist.indptr[u]:hist.indptr[u + 1]] >= 4).any())
    for mode, changes in (("positives", False), ("all", True)):
        torch.manual_seed(0)
        model = registry.build("tiger", inputs, registry.model_config(
            "tiger", {"dim": 16, "layers": 1, "beam": 10, **_enc(f"causal+movies" + ("+all" if mode == "all" else ""))})).eval()
        before = model.score(torch.tensor([user]), hist)
        other = copy.deepcopy(hist)
        other.ratings[hist.indptr[user + 1] - 1] = 2.0 if other.ratings[hist.indptr[user + 1] - 1] == 1.0 else 1.0
        assert torch.equal(before, model.score(torch.tensor([user]), other))     # same sign, same scores
        other.ratings[hist.indptr[user + 1] - 1] = 3.0                             # disliked -> neutral
        after = model.score(torch.tensor([user]), other)
        assert (not torch.equal(before, after)) == changes, mode


@pytest.mark.parametrize("history_input", ["codes", "movies"])
def test_causal_tiger_scores_a_user_without_liked_movies(history_input):
    """No history at all: the causal encoder has no end-of-history token, so every memory
    position is padding; the decoder must still produce finite scores over valid IDs."""
    ratings, n = _cycle_world(n_users=4, n_movies=20)
    codes = _random_codes(n, sizes=(4, 5))
    inputs = _inputs(ratings, n, codes)
    model = registry.build("tiger", inputs, registry.model_config("tiger", {"dim": 16, "layers": 1, "beam": 8,
                                                                            "encoder": "causal",
                                                                            "history_input": history_input})).eval()
    movies, logp = model.generate(torch.arange(3), None)
    assert (movies >= 0).all() and torch.isfinite(logp).all()
    assert {model.trie().codes_of(int(m)) for m in movies[0]} <= set(map(tuple, codes))


def test_causal_windows_on_real_movielens(ml1m_db):
    """../shared ML-1M (random IDs; the windows depend on the ratings only): the causal encoder's
    windows train every liked target exactly once, each after the liked movie just before it,
    and the window loss is finite on real histories."""
    from posterkg.gnn.data import load_interactions

    with open_store(ml1m_db, read_only=True) as store:
        data = load_interactions(store)
    ids = IdVocab(data.user_ids, data.movie_ids)
    codes = _random_codes(data.n_movies, sizes=(16, 16), rng=np.random.default_rng(0))
    inputs = ModelInputs(ids, data, None, semantic_ids=codes, semantic_version="test")
    model = registry.build("tiger", inputs, registry.model_config("tiger", {"dim": 16, "layers": 1,
                                                                            "encoder": "causal"})).eval()
    flat, _, starts, targets = model.train_sequences(data.history("valid"))
    wins = model.train_windows(flat, starts)
    w = wins.numpy()
    pairs = (w[:, :-1] > 0) & (w[:, 1:] > 0)
    def rows_sorted(prev, nxt):                        # (previous movie, target) pairs, sorted as rows
        order = np.lexsort((nxt, prev))
        return np.stack([prev[order], nxt[order]], 1)

    got = rows_sorted(w[:, :-1][pairs] - 1, w[:, 1:][pairs] - 1)
    want = rows_sorted(flat[targets - 1], flat[targets])
    assert pairs.sum() == len(targets) > 100_000 and np.array_equal(got, want)
    assert (w[:, -1] > 0).all()                          # every window ends on a real movie
    with torch.no_grad():
        assert torch.isfinite(model.train_loss_windows(wins[:32]))


def test_id_input_adds_each_history_movies_own_embedding():
    """``id_input``: a history position is its code embeddings plus the movie's own embedding:
    changing one movie's embedding changes the states of a history that reads it and of no
    other, and training moves the embeddings of the movies read (not of the last target)."""
    ratings, n = _cycle_world(n_users=4, n_movies=12, length=6)
    codes = _random_codes(n, sizes=(3, 4), rng=np.random.default_rng(1))
    torch.manual_seed(0)
    model = registry.build("tiger", _inputs(ratings, n, codes),
                           registry.model_config("tiger", {"dim": 16, "heads": 2, "max_len": 4, "encoder": "causal",
                                                           "history_input": "movies", "id_input": True})).eval()
    base = model._id_start
    assert model.tok.num_embeddings == base + n
    tok = model.window_tokens(torch.tensor([[0, 1, 3], [0, 0, 2]]))
    assert tok[0, 0].tolist() == [0] * (model.D + 1)                       # padding stays padding
    assert tok[0, 1, -1] == base + 0 and tok[0, 2, -1] == base + 2 and tok[1, 2, -1] == base + 1
    with torch.no_grad():
        reads0, reads1 = torch.tensor([[0, 1]]), torch.tensor([[0, 2]])
        a, b = model._encoder_states(model.window_tokens(reads0)), model._encoder_states(model.window_tokens(reads1))
        model.tok.weight[base + 0].add_(0.5)              # movie 0's own embedding only
        a2, b2 = model._encoder_states(model.window_tokens(reads0)), model._encoder_states(model.window_tokens(reads1))
    assert not torch.allclose(a, a2) and torch.equal(b, b2)
    model.train()
    model.tok.weight.grad = None
    model.train_loss_windows(torch.tensor([[0, 4, 5, 6, 7]])).backward()
    g = model.tok.weight.grad
    assert all(g[base + m].abs().sum() > 0 for m in (3, 4, 5))   # the read history movies (index + 1 in windows)
    assert g[base + 6].abs().sum() == 0 and g[base + 0].abs().sum() == 0   # the last target is never read
