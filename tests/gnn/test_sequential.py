"""SASRec and posterkg-seq: causality, targets, the long/short split, and learning a planted order.

Expected values are computed independently of the models (by hand or with numpy)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from gnn_synth import protocol_data
from posterkg.gnn import registry
from posterkg.gnn.base import FitInfo, Graph, IdVocab, ModelInputs
from posterkg.errors import ConfigError
from posterkg.gnn.train import TrainConfig, train


def _inputs(ratings: pd.DataFrame, n_movies: int, concepts=None) -> ModelInputs:
    data, edges = protocol_data(ratings, n_movies)
    ids = IdVocab(data.user_ids, data.movie_ids, np.arange(1, 4) if concepts else np.zeros(0, np.int64))
    g = Graph(ids.sizes)
    for name, (u, m) in edges.items():
        g.add(name, u, m)
    if concepts:
        g.add("has", concepts[0], concepts[1], concepts[2])
    return ModelInputs(ids, data, g)


def _cycle_world(n_users=40, n_movies=12, length=30, seed=0):
    """Each user walks the catalogue in a fixed cyclic order from a random start: the next movie
    is fully determined by the last one (a planted sequential structure no popularity model
    can see: every movie is equally popular)."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(1, n_users + 1):
        start = int(rng.integers(0, n_movies))
        seen = set()
        for t in range(length):
            m = (start + t) % n_movies + 1
            if m in seen:   # one rating per movie: stop after a full cycle
                break
            seen.add(m)
            rows.append((u, m, 5.0, 1000 * t + u))
    return pd.DataFrame(rows, columns=["user_id", "movie_id", "rating", "ts"]), n_movies


def test_attention_is_causal_and_padding_is_inert():
    ratings, n = _cycle_world(n_users=6)
    inputs = _inputs(ratings, n)
    for kind in ("sasrec", "posterkg-seq"):
        m = registry.build(kind, inputs, registry.model_config(kind, {"dim": 16, "max_len": 8, "dropout": 0.0}))
        m.eval()
        table = m.movie_table(m.graph)
        tok = torch.tensor([[0, 0, 3, 4, 5, 6, 7, 8]])
        sgn = torch.tensor([[0, 0, 3, 3, 3, 3, 3, 3]])
        ts = torch.tensor([[0, 0, 10, 500, 9000, 9001, 90_000, 900_000]])
        if m.time_bias is not None:           # the time part (posterkg-seq's) biases every pair
            with torch.no_grad():
                m.time_bias.weight.normal_()
        h1 = m.user_states(tok, sgn, table, ts=ts)
        tok2, sgn2, ts2 = tok.clone(), sgn.clone(), ts.clone()
        tok2[0, -1], ts2[0, -1] = 11, 5_000_000      # change only the last token
        h2 = m.user_states(tok2, sgn2, table, ts=ts2)
        assert torch.allclose(h1[0, :-1], h2[0, :-1], atol=1e-6), kind     # earlier states unchanged
        assert not torch.allclose(h1[0, -1], h2[0, -1]), kind
        tok3 = tok.clone()
        tok3[0, 0] = 0
        assert torch.isfinite(h1).all(), kind


def test_horizon_targets_are_the_next_liked_movies():
    # one user: movies 1..6, movie 3 rated 2 (disliked); window of 6 tokens (max_len 5)
    ratings = pd.DataFrame({"user_id": [1] * 6 + [2] * 6, "movie_id": [1, 2, 3, 4, 5, 6] * 2,
                            "rating": [5, 5, 2, 5, 5, 5] * 2, "ts": list(range(6)) * 2})
    inputs = _inputs(ratings, 6)
    m = registry.build("sasrec", inputs, registry.model_config("sasrec", {"dim": 8, "max_len": 5, "dropout": 0.0,
                                                                          "inputs": "all", "horizon": 2,
                                                                          "softmax_chunk": 0}))
    win = torch.tensor([[1, 2, 3, 4, 5, 6]])
    wsg = torch.tensor([[3, 3, 1, 3, 3, 3]])
    captured = {}
    real = torch.log_softmax

    def spy(x, dim):
        captured["n_rows"] = x.shape[0]
        return real(x, dim=dim)

    torch.log_softmax, saved = spy, torch.log_softmax
    try:
        m.train_loss(win, wsg)
    finally:
        torch.log_softmax = saved
    # positions 0..4 (tokens 1..5); targets within the next 2 positions that are liked:
    # pos0 -> {2} (3 disliked), pos1 -> {4}, pos2 -> {4, 5}, pos3 -> {5, 6}, pos4 -> {6}: 5 rows
    assert captured["n_rows"] == 5
    # loss by hand with the model's own logits: mean over the 7 (position, target) pairs
    table = m.movie_table(m.graph)
    h = m.user_states(win[:, :-1], wsg[:, :-1], table)[0]
    logp = real(h @ table.T, dim=-1)
    pairs = [(0, 2), (1, 4), (2, 4), (2, 5), (3, 5), (3, 6), (4, 6)]
    want = -sum(float(logp[p, t - 1]) for p, t in pairs) / len(pairs)
    assert abs(float(m.train_loss(win, wsg)) - want) < 1e-5
    m.cfg.softmax_chunk = 2                                # chunked: the same pairs, the same loss
    assert abs(float(m.train_loss(win, wsg)) - want) < 1e-5


def _signed_user():
    """Two users who rate movies 1..6 in order with 5, 3, 2, 5, 1, 5; one window of them (movie
    index + 1, sign + 2)."""
    ratings = pd.DataFrame({"user_id": [1] * 6 + [2] * 6, "movie_id": [1, 2, 3, 4, 5, 6] * 2,
                            "rating": [5, 3, 2, 5, 1, 5] * 2, "ts": list(range(6)) * 2})
    return _inputs(ratings, 6), torch.tensor([[1, 2, 3, 4, 5, 6]]), torch.tensor([[3, 2, 1, 3, 1, 3]])


def _small_seq(kind, inputs, **over):
    # the plain catalogue softmax (the registry's posterkg-seq masks the window's movies, which
    # these hand-computed losses do not; mask_seen has its own tests)
    return registry.build(kind, inputs, registry.model_config(kind, {
        "dim": 8, "max_len": 5, "dropout": 0.0, "softmax_chunk": 0, "time_bias": False, "mask_seen": False, **over}))


def test_neutral_and_disliked_targets_are_weighted_next_movies():
    # movies 1..6 rated 5, 3, 2, 5, 1, 5: with neutral_target a and disliked_target b, the state at
    # position t predicts the movie at t+1 with weight 1 (liked), a (rated 3) or b (rated 1-2)
    inputs, win, wsg = _signed_user()
    for kind in ("sasrec-all", "posterkg-seq"):
        for a, b in [(0.0, 0.0), (0.5, 0.0), (1.0, 0.25)]:
            m = _small_seq(kind, inputs, neutral_target=a, disliked_target=b)
            m.eval()
            table = m.movie_table(m.graph)
            logp = torch.log_softmax(m.user_states(win[:, :-1], wsg[:, :-1], table)[0] @ table.T, -1)
            # (position, next movie, weight) by hand: next movies 2 (3), 3 (2), 4 (5), 5 (1), 6 (5)
            pairs = [(0, 2, a), (1, 3, b), (2, 4, 1.0), (3, 5, b), (4, 6, 1.0)]
            want = -sum(w * float(logp[p, t - 1]) for p, t, w in pairs) / sum(w for _, _, w in pairs)
            assert abs(float(m.train_loss(win, wsg)) - want) < 1e-5, (kind, a, b)
            m.cfg.softmax_chunk = 2
            assert abs(float(m.train_loss(win, wsg)) - want) < 1e-5, (kind, a, b)
    with pytest.raises(ValueError, match="neutral_target must be in"):
        registry.build("sasrec-all", inputs, registry.model_config("sasrec-all", {"neutral_target": 1.5}))
    with pytest.raises(ValueError, match="needs inputs = 'all'"):
        registry.build("sasrec", inputs, registry.model_config("sasrec", {"disliked_target": 0.5}))


def test_unlikelihood_pushes_down_next_movies_the_user_did_not_like():
    # the same user as above: movies 1..6 rated 5, 3, 2, 5, 1, 5. With disliked_unlikely b and
    # neutral_unlikely a, the state at position t predicting a movie rated 1-2 (3) adds
    # b (a) * -log(1 - p(that movie)); liked next movies keep their cross-entropy; the sum is
    # divided by the number of liked targets
    inputs, win, wsg = _signed_user()
    for kind in ("sasrec-all", "posterkg-seq"):
        for a, b in [(0.0, 3.0), (0.5, 20.0)]:
            m = _small_seq(kind, inputs, neutral_unlikely=a, disliked_unlikely=b)
            m.eval()
            tgt, ok = m._targets(win, wsg)
            assert ok[0, :, 0].tolist() == [-a, -b, 1.0, -b, 1.0]
            table = m.movie_table(m.graph)
            p = torch.softmax(m.user_states(win[:, :-1], wsg[:, :-1], table)[0] @ table.T, -1)
            liked = [(2, 4), (4, 6)]
            unliked = [(0, 2, a), (1, 3, b), (3, 5, b)]
            want = (-sum(float(torch.log(p[q, t - 1])) for q, t in liked)
                    - sum(w * float(torch.log1p(-p[q, t - 1])) for q, t, w in unliked)) / len(liked)
            assert abs(float(m.train_loss(win, wsg)) - want) < 1e-5, (kind, a, b)
            m.cfg.softmax_chunk = 2
            assert abs(float(m.train_loss(win, wsg)) - want) < 1e-5, (kind, a, b)
    # training with it lowers the probability of the disliked next movies against training without
    probs = {}
    for b in (0.0, 50.0):
        torch.manual_seed(0)
        m = registry.build("sasrec-all", inputs, registry.model_config("sasrec-all", {
            "dim": 8, "max_len": 5, "dropout": 0.0, "disliked_unlikely": b}), seed=0)
        opt = torch.optim.Adam(m.parameters(), lr=0.05)
        for _ in range(60):
            opt.zero_grad()
            m.train_loss(win, wsg).backward()
            opt.step()
        m.eval()
        with torch.no_grad():
            table = m.movie_table(m.graph)
            p = torch.softmax(m.user_states(win[:, :-1], wsg[:, :-1], table)[0] @ table.T, -1)
        probs[b] = (float(p[1, 2] + p[3, 4]), float(p[2, 3] + p[4, 5]))   # (disliked next, liked next)
    assert probs[50.0][0] < 0.5 * probs[0.0][0]
    assert probs[50.0][1] > 0.5 * probs[0.0][1]           # the liked targets are still learned
    with pytest.raises(ValueError, match="disliked_unlikely must be >= 0"):
        registry.build("sasrec-all", inputs, registry.model_config("sasrec-all", {"disliked_unlikely": -1.0}))
    with pytest.raises(ValueError, match="needs inputs = 'all'"):
        registry.build("sasrec", inputs, registry.model_config("sasrec", {"neutral_unlikely": 1.0}))
    with pytest.raises(ValueError, match="exclude each other"):
        registry.build("sasrec-all", inputs, registry.model_config(
            "sasrec-all", {"disliked_target": 0.5, "disliked_unlikely": 1.0}))


def test_label_smoothing_is_torchs_smoothed_cross_entropy():
    # liked next movies only (positions 2 -> movie 4, 4 -> movie 6): the loss and its gradients
    # equal torch's cross_entropy(label_smoothing=e) over the full [P, n_movies] logits, in the
    # one-shot and the chunked softmax
    inputs, win, wsg = _signed_user()
    for kind in ("sasrec-all", "posterkg-seq"):
        for eps in (0.1, 0.5):
            m = _small_seq(kind, inputs, label_smoothing=eps)
            m.eval()
            with torch.no_grad():                          # away from near-uniform logits
                for prm in m.parameters():
                    prm.mul_(3.0)
            table = m.movie_table(m.graph)
            logits = m.user_states(win[:, :-1], wsg[:, :-1], table)[0] @ table.T
            want = torch.nn.functional.cross_entropy(logits[[2, 4]], torch.tensor([3, 5]), label_smoothing=eps)
            grads = torch.autograd.grad(want, list(m.parameters()), allow_unused=True)
            for chunk in (0, 2):
                m.cfg.softmax_chunk = chunk
                got = m.train_loss(win, wsg)
                assert abs(float(got) - float(want)) < 1e-5, (kind, eps, chunk)
                for g, w in zip(torch.autograd.grad(got, list(m.parameters()), allow_unused=True), grads):
                    assert (g is None) == (w is None)
                    assert g is None or float((g - w).abs().max()) <= 1e-4 * float(w.abs().max()) + 1e-7
            m.cfg.label_smoothing = 0.0                   # off: the plain cross-entropy again
            plain = torch.nn.functional.cross_entropy(logits[[2, 4]], torch.tensor([3, 5]))
            assert abs(float(m.train_loss(win, wsg)) - float(plain)) < 1e-5
            assert abs(float(plain) - float(want)) > 1e-2
    with pytest.raises(ValueError, match="label_smoothing must be in"):
        registry.build("sasrec", inputs, registry.model_config("sasrec", {"label_smoothing": 1.0}))
    with pytest.raises(ValueError, match="full softmax"):
        registry.build("sasrec", inputs, registry.model_config("sasrec", {"label_smoothing": 0.1, "negatives": 8}))
    with pytest.raises(ValueError, match="mask_seen"):
        registry.build("posterkg-seq", inputs, registry.model_config("posterkg-seq", {"label_smoothing": 0.1}))


def test_long_term_part_is_a_running_mean_of_liked_minus_disliked():
    ratings, n = _cycle_world(n_users=4)
    inputs = _inputs(ratings, n)
    m = registry.build("posterkg-seq", inputs, registry.model_config(
        "posterkg-seq", {"dim": 8, "max_len": 4, "dropout": 0.0, "neg_weight": 0.5, "time_bias": False}))
    m.eval()
    table = m.movie_table(m.graph).detach()
    tok = torch.tensor([[2, 5, 7, 9]])
    sgn = torch.tensor([[3, 1, 3, 2]])        # liked, disliked, liked, neutral
    _, long = m._parts(tok, sgn, m.movie_table(m.graph))
    t = table.numpy()
    liked_mean = (t[1] + t[6]) / 2            # movies 2 and 7 (index = token - 1)
    want = (liked_mean - 0.5 * t[4]) @ m.long_map.weight.detach().numpy().T + m.long_map.bias.detach().numpy()
    assert np.allclose(long[0, -1].detach().numpy(), want, atol=1e-5)
    first = t[1] @ m.long_map.weight.detach().numpy().T + m.long_map.bias.detach().numpy()
    assert np.allclose(long[0, 0].detach().numpy(), first, atol=1e-5)     # only movie 2 so far


def test_explain_parts_add_up_to_the_score():
    ratings, n = _cycle_world(n_users=5)
    inputs = _inputs(ratings, n, concepts=(np.arange(12), np.arange(12) % 3, np.ones(12)))
    m = registry.build("posterkg-seq", inputs, registry.model_config("posterkg-seq", {"dim": 8, "max_len": 16}))
    m.eval()
    users = torch.tensor([0, 3])
    hist = inputs.data.history("test")
    parts = m.explain_parts(users, hist, torch.arange(n))
    total = m.score(users, hist)
    assert torch.allclose(parts["short"] + parts["long"], total, atol=1e-5)
    assert ((parts["gate"] > 0) & (parts["gate"] < 1)).all()


def test_sequence_models_learn_a_planted_order_popularity_cannot_see():
    ratings, n = _cycle_world(n_users=80, n_movies=12, length=7, seed=1)
    inputs = _inputs(ratings, n, concepts=(np.arange(12), np.arange(12) % 3, np.ones(12)))
    pop = registry.build("mostpop", inputs)
    for kind in ("sasrec", "posterkg-seq"):
        cfg = TrainConfig(model=kind, epochs=40, lr=0.01, batch_size=16, patience=40, seed=0)
        mc = registry.model_config(kind, {"dim": 16, "max_len": 12, "dropout": 0.0})
        res = train(inputs, cfg, model_cfg=mc)
        # the next movie after the last known one is the answer: top-1 must be it for most users
        hist = inputs.data.history("test")
        scores = res.model.score(torch.arange(inputs.n_users), hist)
        seen = hist.csr()
        scores[torch.from_numpy(seen.nonzero()[0]), torch.from_numpy(seen.nonzero()[1])] = -1e9
        last = np.array([hist.sequence(u, positives_only=False)[-1] for u in range(inputs.n_users)])
        expected = (last + 1) % n
        hit = (scores.argmax(1).numpy() == expected).mean()
        assert hit >= 0.8, (kind, hit)          # chance: 1 in 6 unseen movies
        pop_top = pop.score(torch.arange(inputs.n_users), hist)
        pop_top[torch.from_numpy(seen.nonzero()[0]), torch.from_numpy(seen.nonzero()[1])] = -1e9
        assert (pop_top.argmax(1).numpy() == expected).mean() < 0.5


def test_bucketed_batches_cover_every_window_once_and_group_similar_lengths():
    from posterkg.gnn.sequential import _batches

    rng = np.random.default_rng(0)
    lengths = torch.from_numpy(rng.integers(2, 201, size=1000))
    gen = torch.Generator().manual_seed(0)
    for bucket in (False, True):
        batches = _batches(lengths, 32, gen, bucket=bucket, chunk=8)
        idx = torch.cat(batches).sort().values
        assert torch.equal(idx, torch.arange(1000))          # each window exactly once
        assert all(len(b) <= 32 for b in batches)
    plain = _batches(lengths, 32, gen, bucket=False)
    bucketed = _batches(lengths, 32, gen, bucket=True, chunk=8)
    slots = lambda bs: sum(int(lengths[b].max()) * len(b) for b in bs)  # noqa: E731
    # similar lengths together: far fewer padded slots than random batches (computed by hand:
    # uniform lengths in [2, 200] -> random batch max ~194, bucketed ~ the chunk's quantiles)
    assert slots(bucketed) < 0.7 * slots(plain)


def _away_from_zero(m):
    """Random weights for a model's zero-initialised parts (time bias, stars), so a test sees them act."""
    with torch.no_grad():
        for emb in (m.time_bias, m.stars):
            if emb is not None:
                emb.weight.normal_()


def test_trimming_common_padding_leaves_the_loss_unchanged():
    ratings, n = _cycle_world(n_users=10)
    inputs = _inputs(ratings, n)
    for kind in ("sasrec", "posterkg-seq"):
        m = registry.build(kind, inputs, registry.model_config(kind, {"dim": 16, "max_len": 20, "dropout": 0.0}))
        m.eval()
        win, wsg, wts = m._train_windows(inputs.data.history("valid"), with_ts=True)
        _away_from_zero(m)                    # posterkg-seq's time and rating parts
        keep = int((win > 0).sum(1).max())
        assert keep < win.shape[1]                            # there is common padding to trim
        full = m.train_loss(win, wsg, wts=wts)
        trimmed = m.train_loss(win[:, -keep:], wsg[:, -keep:], wts=wts[:, -keep:])
        assert torch.allclose(full, trimmed, atol=1e-6), (kind, float(full), float(trimmed))


def test_loss_norm_weighs_every_target_alike():
    ratings, n = _cycle_world(n_users=10)
    inputs = _inputs(ratings, n)
    m = registry.build("sasrec", inputs, registry.model_config("sasrec", {"dim": 16, "max_len": 20, "dropout": 0.0}))
    m.eval()
    win, wsg = m._train_windows(inputs.data.history("valid"))
    count = int(m._targets(win, wsg)[1].sum())
    assert count == int(((wsg[:, 1:] == 3) & (win[:, 1:] > 0) & (win[:, :-1] > 0)).sum())   # horizon 1, by hand
    mean = m.train_loss(win, wsg)
    assert torch.allclose(m.train_loss(win, wsg, norm=float(count)), mean, atol=1e-6)
    # two halves, each divided by the same norm, add up to the loss of the whole
    a, b = win[:4], win[4:]
    sa, sb = wsg[:4], wsg[4:]
    half = m.train_loss(a, sa, norm=float(count)) + m.train_loss(b, sb, norm=float(count))
    assert torch.allclose(half, mean, atol=1e-5)


def test_dense_features_reduced_to_principal_components_and_rebuilt_for_new_rows():
    """``feature_dim``: a dense feature becomes its top principal components (unit variance over
    the movies that have it, zeros for the others); ``feature_rows`` rebuilds any movie's row with
    the statistics of init (how a movie's feature enters after training); 0 = the standardised
    feature, as before."""
    import dataclasses

    ratings, n = _cycle_world(n_movies=30, length=40)
    base = _inputs(ratings, n)
    rng = np.random.default_rng(0)
    low = rng.normal(size=(n, 3))                                       # a 3-d signal in 50 dims
    raw = (low @ rng.normal(size=(3, 50)) * 4 + rng.normal(size=(n, 50)) * 0.1 + 7).astype(np.float32)
    mask = np.ones(n, bool)
    mask[[4, 9]] = False
    raw[~mask] = 0.0
    inputs = dataclasses.replace(base, features={"poster": raw}, feature_mask={"poster": mask})
    cfg = registry.model_config("posterkg-seq", {"dim": 8, "features": ["poster"], "feature_dim": 3,
                                                 "concepts": False, "genres": False})
    model = registry.build("posterkg-seq", inputs, cfg)
    x = model.feat_poster
    assert tuple(x.shape) == (n, 3) and model.proj["poster"].in_features == 3
    assert torch.all(x[~torch.from_numpy(mask)] == 0)
    kept = x[torch.from_numpy(mask)].double()
    np.testing.assert_allclose(kept.std(0).numpy(), 1.0, rtol=1e-4)
    np.testing.assert_allclose(kept.mean(0).numpy(), 0.0, atol=1e-4)
    # 3 components hold the planted 3-d signal: a least-squares map from them recovers it
    coef, *_ = np.linalg.lstsq(kept.numpy(), low[mask] - low[mask].mean(0), rcond=None)
    resid = (low[mask] - low[mask].mean(0)) - kept.numpy() @ coef
    assert (resid ** 2).sum() / ((low[mask] - low[mask].mean(0)) ** 2).sum() < 0.01
    # a movie's row made later from its raw feature equals the one built at init
    again = model.feature_rows("poster", torch.from_numpy(raw[[0, 4, 7]]), torch.tensor([True, False, True]))
    torch.testing.assert_close(again, x[[0, 4, 7]])
    # the saved state has the rows, not the statistics (recomputed from the inputs at load)
    assert "feat_poster" in model.state_dict() and "feat_basis_poster" not in model.state_dict()
    plain = registry.build("posterkg-seq", inputs, dataclasses.replace(cfg, feature_dim=0))
    z = (torch.from_numpy(raw) - torch.from_numpy(raw).mean(0)) / torch.from_numpy(raw).std(0)
    z[~torch.from_numpy(mask)] = 0
    torch.testing.assert_close(plain.feat_poster, z)


def test_sampled_softmax_is_the_softmax_over_the_target_and_the_drawn_negatives():
    ratings, n = _cycle_world(n_users=10, n_movies=12)
    inputs = _inputs(ratings, n)
    for kind in ("sasrec", "posterkg-seq"):
        for horizon in (1, 3):
            mc = registry.model_config(kind, {"dim": 16, "max_len": 20, "dropout": 0.0, "negatives": 5,
                                              "horizon": horizon, "time_bias": False, "mask_seen": False})
            m = registry.build(kind, inputs, mc)
            m.eval()
            win, wsg = m._train_windows(inputs.data.history("valid"))
            m._neg_gen = torch.Generator().manual_seed(7)
            loss = m.train_loss(win, wsg)
            # by hand: the same 5 draws; per target, log-softmax over [target, negatives that
            # are not the target] (with 12 movies, draws often hit a target: they must drop out)
            neg = torch.randint(0, n, (5,), generator=torch.Generator().manual_seed(7))
            table = m.movie_table(m.graph)
            h = m.user_states(win[:, :-1], wsg[:, :-1], table)
            tgt, ok = m._targets(win, wsg)
            total, count, hits = 0.0, 0, 0
            for b, p, k in ok.nonzero().tolist():
                t = int(tgt[b, p, k])
                cand = [t] + [int(j) for j in neg if int(j) != t]
                hits += 6 - len(cand)
                logits = h[b, p] @ table[cand].T
                total += float(torch.log_softmax(logits, 0)[0])
                count += 1
            assert hits > 0                                   # the masking was exercised
            assert abs(float(loss) - (-total / count)) < 1e-4, (kind, horizon, float(loss), -total / count)
            # and it is not the full softmax
            m.cfg.negatives = 0
            assert abs(float(m.train_loss(win, wsg)) - float(loss)) > 1e-3


@pytest.mark.parametrize("softmax_chunk", [0, -1])          # one-shot and chunked (the default)
def test_bf16_logits_only_in_training_and_close_to_float32(softmax_chunk):
    ratings, n = _cycle_world(n_users=10, n_movies=12)
    inputs = _inputs(ratings, n)
    m = registry.build("posterkg-seq", inputs, registry.model_config(
        "posterkg-seq", {"dim": 16, "max_len": 20, "dropout": 0.0, "bf16_logits": True,
                         "softmax_chunk": softmax_chunk, "time_bias": False}))
    win, wsg = m._train_windows(inputs.data.history("valid"))
    m.train()
    low = m.train_loss(win, wsg)
    (g_low,) = torch.autograd.grad(low, m.item.weight)
    m.cfg.bf16_logits = False
    full = m.train_loss(win, wsg)
    (g_full,) = torch.autograd.grad(full, m.item.weight)
    assert low.dtype == torch.float32
    assert float(low) != float(full)                       # it did run in bfloat16
    assert abs(float(low) - float(full)) < 0.02 * abs(float(full))
    cos = torch.nn.functional.cosine_similarity(g_low.flatten(), g_full.flatten(), 0)
    assert cos > 0.99, float(cos)
    m.cfg.bf16_logits = True
    m.eval()                                              # evaluation: float32 as before
    assert torch.equal(m.train_loss(win, wsg), full.detach())


def test_chunked_catalogue_softmax_equals_the_one_shot_log_softmax():
    from posterkg.gnn.losses import catalogue_log_softmax_at

    g = torch.Generator().manual_seed(3)
    h0 = torch.randn(37, 8, generator=g, dtype=torch.float64)
    t0 = torch.randn(11, 8, generator=g, dtype=torch.float64)
    targets = torch.randint(0, 11, (37, 3), generator=g)
    targets[0] = torch.tensor([4, 4, 9])                  # a target twice in one row
    weight = torch.rand(37, 3, generator=g, dtype=torch.float64) * (torch.rand(37, 3, generator=g) > 0.3)

    def grads(fn):
        h, t = h0.clone().requires_grad_(), t0.clone().requires_grad_()
        out = fn(h, t)
        (out * weight).sum().backward()
        return out.detach(), h.grad, t.grad

    ref = grads(lambda h, t: torch.log_softmax(h @ t.T, -1).gather(1, targets))
    for chunk in (1, 5, 37, 64):
        got = grads(lambda h, t: catalogue_log_softmax_at(h.float(), t.float(), targets, chunk).double())
        for a, b in zip(got, ref):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    low = grads(lambda h, t: catalogue_log_softmax_at(h.float(), t.float(), targets, 5, bf16=True).double())
    assert not torch.equal(low[0], ref[0].float().double())   # bfloat16 products ran
    for a, b in zip(low, ref):
        torch.testing.assert_close(a, b, rtol=0.05, atol=0.05)


def test_excluded_catalogue_softmax_is_the_softmax_over_the_rest():
    """exclude = (sets, row): position p's softmax runs over the movies outside sets[row[p]],
    its own targets always in; the same values and gradients, by chunks, as a log-softmax over
    the kept movies computed row by row; excluded movies get no gradient."""
    from posterkg.gnn.losses import catalogue_log_softmax_at

    g = torch.Generator().manual_seed(4)
    h0 = torch.randn(23, 6, generator=g, dtype=torch.float64)
    t0 = torch.randn(9, 6, generator=g, dtype=torch.float64)
    targets = torch.randint(0, 9, (23, 1), generator=g)
    sets = torch.rand(4, 9, generator=g) < 0.4
    row = torch.randint(0, 4, (23,), generator=g)
    sets[row[0], targets[0, 0]] = True                     # a target inside its own set stays in

    def grads(fn):
        h, t = h0.clone().requires_grad_(), t0.clone().requires_grad_()
        out = fn(h, t)
        out.sum().backward()
        return out.detach(), h.grad, t.grad

    def by_hand(h, t):
        out = []
        for p in range(len(h)):
            keep = ~sets[row[p]]
            keep[targets[p, 0]] = True
            cols = torch.nonzero(keep).flatten()
            z = h[p] @ t[cols].T
            out.append(z[(cols == targets[p, 0]).nonzero()[0, 0]] - torch.logsumexp(z, 0))
        return torch.stack(out).unsqueeze(1)

    ref = grads(by_hand)
    for chunk in (1, 5, 64):
        got = grads(lambda h, t: catalogue_log_softmax_at(h.float(), t.float(), targets, chunk,
                                                          exclude=(sets, row)).double())
        for a, b in zip(got, ref):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    plain = catalogue_log_softmax_at(h0.float(), t0.float(), targets, 5)
    assert (plain < got[0].float() - 1e-4).any()           # leaving movies out raises log-probabilities
    # a movie excluded for every position and never a target gets no gradient
    sets[:, 8] = True
    targets[targets == 8] = 0
    _, _, gt = grads(lambda h, t: catalogue_log_softmax_at(h.float(), t.float(), targets, 5,
                                                           exclude=(sets, row)).double())
    assert torch.all(gt[8] == 0) and gt[:8].abs().sum() > 0


def test_mask_seen_leaves_the_windows_movies_out_of_the_models_softmax():
    """mask_seen: the model's loss is the softmax over each window's unseen movies (and the
    target), chunked or in one piece alike; without it the loss is the plain one."""
    from posterkg.gnn.losses import catalogue_log_softmax_at

    ratings, n = _cycle_world(n_users=10, n_movies=12)
    inputs = _inputs(ratings, n)
    for kind in ("sasrec-all", "posterkg-seq"):
        m = registry.build(kind, inputs, registry.model_config(
            kind, {"dim": 16, "max_len": 8, "dropout": 0.0, "softmax_chunk": 0, "mask_seen": True, "time_bias": False}))
        win, wsg = m._train_windows(inputs.data.history("valid"))
        params = [p for p in m.parameters() if p.requires_grad]
        masked = m.train_loss(win, wsg)
        g_one = torch.autograd.grad(masked, params, allow_unused=True)
        m.cfg.softmax_chunk = 7
        chunked = m.train_loss(win, wsg)
        torch.testing.assert_close(chunked, masked, rtol=1e-5, atol=1e-6)
        for a, b in zip(torch.autograd.grad(chunked, params, allow_unused=True), g_one):
            assert (a is None) == (b is None)
            if a is not None:
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
        m.cfg.mask_seen = False
        plain = m.train_loss(win, wsg)
        assert masked < plain - 1e-3
        # by hand: the windows' movies are each position's excluded set
        table = m.movie_table(m.graph)
        h = m.user_states(win[:, :-1], wsg[:, :-1], table)
        tgt, ok = m._targets(win, wsg)
        rows = (ok != 0).any(-1)
        sets = torch.zeros(len(win), n + 1, dtype=torch.bool).scatter_(1, win, True)[:, 1:]
        bidx = torch.arange(len(win)).unsqueeze(1).expand_as(rows)[rows]
        lp = catalogue_log_softmax_at(h[rows], table, tgt[rows].clamp(min=0), 5, exclude=(sets, bidx))
        torch.testing.assert_close(masked, -(lp * ok[rows]).sum() / ok[rows].sum(), rtol=1e-5, atol=1e-6)
    m.cfg.mask_seen, m.cfg.negatives = True, 4
    with pytest.raises(ConfigError, match="full softmax"):
        m.train_loss(win, wsg)


def test_models_chunked_softmax_gives_the_same_loss_and_gradients():
    ratings, n = _cycle_world(n_users=10, n_movies=12)
    inputs = _inputs(ratings, n)
    for kind in ("sasrec", "posterkg-seq"):
        for horizon in (1, 3):
            m = registry.build(kind, inputs, registry.model_config(
                kind, {"dim": 16, "max_len": 20, "dropout": 0.0, "horizon": horizon, "softmax_chunk": 0,
                       "time_bias": False}))
            win, wsg = m._train_windows(inputs.data.history("valid"))
            params = [p for p in m.parameters() if p.requires_grad]
            full = m.train_loss(win, wsg)
            g_full = torch.autograd.grad(full, params, allow_unused=True)
            for chunk in (7, -1):                          # -1: the default, 256 on a CPU
                m.cfg.softmax_chunk = chunk
                part = m.train_loss(win, wsg)
                g_part = torch.autograd.grad(part, params, allow_unused=True)
                torch.testing.assert_close(part, full, rtol=1e-5, atol=1e-6)
                for a, b in zip(g_part, g_full):
                    assert (a is None) == (b is None)
                    if a is not None:
                        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def _random_world(seed=0, n_users=30, n_movies=40, max_n=30):
    """Users with histories of 10 to max_n - 1 random movies (very different lengths), mixed
    signs; every movie shows one of 3 concepts."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(1, n_users + 1):
        n = int(rng.integers(10, max_n))
        for t, m in enumerate(rng.choice(n_movies, n, replace=False) + 1):
            rows.append((u, int(m), float(rng.choice([1, 3, 4, 5])), 10 ** 9 + 997 * t * t))   # gaps: minutes to hours
    return _inputs(pd.DataFrame(rows, columns=["user_id", "movie_id", "rating", "ts"]), n_movies,
                   concepts=(np.arange(n_movies), np.arange(n_movies) % 3, np.ones(n_movies)))


def test_scoring_shortcuts_give_the_full_encoder_scores():
    """score() batches users by history length, trims common padding and runs the last block for
    the last position only: the scores must equal the plain path's (every position of the
    untrimmed max_len window through every block, then the last state), row for row in the
    order asked."""
    from posterkg.gnn.sequential import _windows

    inputs = _random_world(max_n=40)
    hist = inputs.data.history("test")
    users = torch.from_numpy(np.random.default_rng(0).permutation(inputs.data.n_users))
    for kind in ("sasrec", "posterkg-seq"):
        m = registry.build(kind, inputs, registry.model_config(kind, {"dim": 16, "max_len": 48}))
        _away_from_zero(m)                    # posterkg-seq's time and rating parts
        m.eval()
        with torch.no_grad():
            table = m.movie_table(m.graph)
            tok, sgn, ts = _windows(hist, users.numpy(), 48, kind == "sasrec", with_ts=True,
                                    stars=m.cfg.rating_input)
            want = m.user_states(torch.from_numpy(tok), torch.from_numpy(sgn), table,
                                 ts=torch.from_numpy(ts))[:, -1] @ table.T
            got = m.score(users, hist)
        assert tok[:, 0].max() == 0                    # the plain path had padding to trim
        assert got.shape == want.shape
        assert torch.allclose(got, want, atol=1e-5), (kind, (got - want).abs().max())
        if kind == "posterkg-seq":   # explain_parts (last position only) still splits the same score
            parts = m.explain_parts(users[:5], hist, torch.arange(40))
            assert torch.allclose(parts["short"] + parts["long"], want[:5], atol=1e-5)


def test_id_dropout_drops_id_embeddings_in_training_only():
    ratings, n = _cycle_world(n_users=6)
    inputs = _inputs(ratings, n, concepts=(np.arange(n), np.arange(n) % 3, np.ones(n)))
    m = registry.build("posterkg-seq", inputs, registry.model_config("posterkg-seq", {"dim": 8, "id_dropout": 0.5}))
    with torch.no_grad():
        m.item.weight[1:] += 1.0                  # ids far from zero: a dropped one shows
        m.eval()
        full = m.movie_table(m.graph)
        m.item.weight[1:] -= m.item.weight[1:]    # what is left without ids: content only
        content = m.movie_table(m.graph)
        m.item.weight[1:] += (full - content)
        torch.manual_seed(0)
        m.train()
        drop = m.movie_table(m.graph)
    same_full = torch.isclose(drop, full, atol=1e-6).all(1)
    same_content = torch.isclose(drop, content, atol=1e-6).all(1)
    assert bool((same_full | same_content).all())           # each movie: all of its id, or none
    assert 0 < int(same_content.sum()) < n                   # some dropped, some kept
    m.eval()
    assert torch.allclose(m.movie_table(m.graph), full, atol=1e-6)


def _ease_by_hand(inputs, l2):
    """EASE's item-item matrix in numpy from the train rows (every rated movie), by the formula."""
    h = inputs.data.history("valid")
    x = np.zeros((inputs.n_users, inputs.n_movies))
    x[h.users, h.movies] = 1.0
    p = np.linalg.inv(x.T @ x + l2 * np.eye(inputs.n_movies))
    b = np.eye(inputs.n_movies) - p / np.diag(p)[None, :]
    np.fill_diagonal(b, 0.0)
    return b


@pytest.mark.parametrize("kind", ["sasrec-all", "posterkg-seq"])
def test_collaborative_part_blends_standardised_ease_scores(kind):

    inputs = _random_world()
    hist = inputs.data.history("test")
    users = torch.arange(inputs.n_users)
    m = registry.build(kind, inputs, registry.model_config(kind, {"dim": 16, "max_len": 48, "item_item": 0.3,
                                                                  "item_item_l2": 5.0, "item_item_scale": "user"}))
    m.eval()
    seq = m.score(users, hist)                     # no matrix yet: the sequence scores alone
    info = m._fit_item_item(inputs, lambda mm: {"ndcg@20": -1.0}, FitInfo([], 1, {"ndcg@20": -2.0}, 0.0), False)
    assert m.cfg.item_item == 0.3 and m.cfg.item_item_l2 == 5.0 and info.valid == {"ndcg@20": -1.0}
    np.testing.assert_allclose(m.ii_S.numpy(), _ease_by_hand(inputs, 5.0), atol=1e-4)
    x = np.zeros((inputs.n_users, inputs.n_movies))
    x[hist.users, hist.movies] = 1.0               # test-time history: train + valid
    e = torch.from_numpy(x @ _ease_by_hand(inputs, 5.0)).float()
    z = lambda a: (a - a.mean(1, keepdim=True)) / a.std(1, keepdim=True)   # noqa: E731
    want = z(seq) + 0.3 * z(e)
    assert torch.allclose(m.score(users, hist), want, atol=1e-4)
    assert torch.allclose(m.score_graph(users[:7], hist).detach(), want[:7], atol=1e-4)
    if kind == "posterkg-seq":     # the explanation's parts still add up to the (blended) score
        parts = m.explain_parts(users[:5], hist, torch.arange(inputs.n_movies))
        assert torch.allclose(parts["short"] + parts["long"], want[:5], atol=1e-4)
        assert torch.allclose(parts["item_item"], 0.3 * z(e)[:5], atol=1e-4)
        for only in ({"long_term": False}, {"short_term": False}):      # one sequence part alone
            one = registry.build(kind, inputs, dataclasses.replace(m.cfg, **only))
            one.load_state_dict(m.state_dict(), strict=False)
            one.eval()
            p1 = one.explain_parts(users[:5], hist, torch.arange(inputs.n_movies))
            assert torch.allclose(p1["short"] + p1["long"], one.score(users[:5], hist), atol=1e-4), only
    # a save/load round trip keeps the part; a state saved before the part existed still loads
    state = m.state_dict()
    again = registry.build(kind, inputs, m.cfg)
    again.load_state_dict(state)
    again.eval()
    assert torch.allclose(again.score(users, hist), want, atol=1e-4)
    old = {k: v for k, v in state.items() if k != "ii_S"}
    plain = registry.build(kind, inputs, registry.model_config(kind, {"dim": 16, "max_len": 48}))
    plain.load_state_dict(old)
    plain.eval()
    assert torch.allclose(plain.score(users, hist), seq, atol=1e-5)


@pytest.mark.parametrize("kind", ["sasrec-all", "posterkg-seq"])
def test_collaborative_part_on_one_global_scale(kind):
    """item_item_scale = "global": raw sequence scores + w * ratio * raw EASE scores, the ratio
    measured by fit on the train history (mean per-user std of each), again in a continuation."""
    inputs = _random_world()
    train_hist, hist = inputs.data.history("valid"), inputs.data.history("test")
    users = torch.arange(inputs.n_users)
    m = registry.build(kind, inputs, registry.model_config(kind, {"dim": 16, "max_len": 48, "item_item": 0.3,
                                                                  "item_item_l2": 5.0,
                                                                  "item_item_scale": "global"}))
    m.eval()
    seq, seq_train = m.score(users, hist), m.score(users, train_hist)
    m._fit_item_item(inputs, lambda mm: {"ndcg@20": -1.0}, FitInfo([], 1, {"ndcg@20": -2.0}, 0.0), False)
    s = _ease_by_hand(inputs, 5.0)

    def ease(h):
        x = np.zeros((inputs.n_users, inputs.n_movies))
        x[h.users, h.movies] = 1.0
        return torch.from_numpy(x @ s).float()

    has = torch.from_numpy(np.diff(train_hist.indptr) > 0)
    ratio = float(seq_train[has].std(1).mean() / ease(train_hist)[has].std(1).mean())
    assert m.cfg.item_item_ratio == pytest.approx(ratio, rel=1e-4)
    want = seq + 0.3 * ratio * ease(hist)
    got = m.score(users, hist)
    assert torch.allclose(got, want, atol=1e-3)
    # not a per-user z-score: the users' blends differ from the "user" rule's in ranking
    z = lambda a: (a - a.mean(1, keepdim=True)) / a.std(1, keepdim=True)   # noqa: E731
    zrule = z(seq) + 0.3 * z(ease(hist))
    assert not torch.equal(got.argsort(1)[:, -5:], zrule.argsort(1)[:, -5:])
    if kind == "posterkg-seq":     # the explanation's parts add up to the score
        parts = m.explain_parts(users[:5], hist, torch.arange(inputs.n_movies))
        assert torch.allclose(parts["short"] + parts["long"], want[:5], atol=1e-3)
        assert torch.allclose(parts["item_item"], 0.3 * ratio * ease(hist)[:5], atol=1e-3)
    # the ratio travels with the config (a save/load keeps the scores)
    again = registry.build(kind, inputs, m.cfg)
    again.load_state_dict(m.state_dict())
    again.eval()
    assert torch.allclose(again.score(users, hist), got, atol=1e-5)
    with pytest.raises(ValueError, match="item_item_scale"):
        registry.build(kind, inputs, registry.model_config(kind, {"item_item_scale": "users"}))


def test_collaborative_part_is_chosen_on_valid_and_kept_only_when_it_helps(monkeypatch):
    from posterkg.gnn import neighbours

    inputs = _random_world(seed=1)
    cfg = registry.model_config("posterkg-seq", {"dim": 8, "max_len": 48, "item_item": -1,
                                                 "item_item_grid": [0.1, 0.2], "item_item_lambdas": [1.0, 10.0]})
    base = FitInfo([], 3, {"ndcg@20": 0.5}, 0.0)
    # a valid score peaked at weight 0.2 with lambda 10 (read from the model as the search sets it)
    e10 = torch.from_numpy(_ease_by_hand(inputs, 10.0)).float()
    seen = []

    def valid_fn(mm):
        is10 = torch.allclose(mm.ii_S, e10, atol=1e-4)
        seen.append((mm.cfg.item_item, is10))
        return {"ndcg@20": 0.6 if (mm.cfg.item_item == 0.2 and is10) else 0.55}

    m = registry.build("posterkg-seq", inputs, dataclasses.replace(cfg))   # fit sets its choice
    info = m._fit_item_item(inputs, valid_fn, base, False)
    assert sorted(seen) == [(0.1, False), (0.1, True), (0.2, False), (0.2, True)]   # each pair once
    assert (m.cfg.item_item, m.cfg.item_item_l2, info.valid["ndcg@20"]) == (0.2, 10.0, 0.6)
    np.testing.assert_allclose(m.ii_S.numpy(), _ease_by_hand(inputs, 10.0), atol=1e-4)
    assert m._seq_cache is None
    # nothing beats the sequence scores alone: the part stays off
    m = registry.build("posterkg-seq", inputs, dataclasses.replace(cfg))   # fit sets its choice
    info = m._fit_item_item(inputs, lambda mm: {"ndcg@20": 0.4}, base, False)
    assert (m.cfg.item_item, m.ii_S.numel(), info.valid["ndcg@20"]) == (0.0, 0, 0.5)
    # a catalogue above item_item_max_movies, or whose dense matrix cannot fit in memory, skips it
    m = registry.build("posterkg-seq", inputs, dataclasses.replace(cfg, item_item_max_movies=39))
    assert m._fit_item_item(inputs, valid_fn, base, False) is base and m.cfg.item_item == 0.0
    monkeypatch.setattr(neighbours, "available_bytes", lambda: 1000)
    m = registry.build("posterkg-seq", inputs, dataclasses.replace(cfg))   # fit sets its choice
    assert m._fit_item_item(inputs, valid_fn, base, False) is base and m.cfg.item_item == 0.0
    with pytest.raises(ValueError, match="item_item must be"):
        registry.build("posterkg-seq", inputs, registry.model_config("posterkg-seq", {"item_item": -0.5}))


def test_training_with_the_collaborative_part_reports_the_blend_it_keeps():
    inputs = _random_world(seed=2)
    cfg = TrainConfig(model="posterkg-seq", epochs=2, min_epochs=1, patience=1, batch_size=16, threads=1)
    res = train(inputs, cfg, model_cfg=registry.model_config("posterkg-seq", {"dim": 8, "max_len": 48,
                                                                              "item_item": -1}))
    from posterkg.gnn.evaluate import evaluate_model

    again = evaluate_model(res.model, inputs.data, "valid")
    assert abs(again["ndcg@20"] - res.valid["ndcg@20"]) < 1e-9     # what fit reports is what scores
    assert res.model.cfg.item_item in (0.0, *res.model.cfg.item_item_grid)
    assert (res.model.ii_S.numel() > 0) == (res.model.cfg.item_item > 0)


def test_collaborative_part_on_real_movielens(ml1m_db):
    """../shared ML-1M: the part's EASE matrix is EASE's closed form on the train part (a slice
    checked against numpy), the blend scores test users from train + valid, and it carries
    EASE's signal: an untrained sequence model alone is near chance, blended with weight 3 (EASE dominates) it is
    not."""
    from posterkg.gnn.data import load_interactions
    from posterkg.gnn.evaluate import evaluate_model
    from posterkg.store import open_store

    with open_store(ml1m_db, read_only=True) as store:
        data = load_interactions(store)
    inputs = ModelInputs(IdVocab(data.user_ids, data.movie_ids), data, None)
    m = registry.build("sasrec-all", inputs, registry.model_config(
        "sasrec-all", {"dim": 16, "item_item": 3.0, "item_item_l2": 500.0}), seed=0).eval()
    alone = evaluate_model(m, data, "valid")
    info = m._fit_item_item(inputs, lambda mm: evaluate_model(mm, data, "valid"), FitInfo([], 0, alone, 0.0), False)
    assert alone["ndcg@20"] < 0.03 and info.valid["ndcg@20"] > 0.08          # EASE alone: ~0.11
    x = np.zeros((data.n_users, data.n_movies))
    p = data.parts["train"]
    x[p.users, p.movies] = 1.0
    pinv = np.linalg.inv(x.T @ x + 500.0 * np.eye(data.n_movies))
    cols = np.arange(0, data.n_movies, 97)
    b = -pinv[:, cols] / np.diag(pinv)[None, cols]
    b[cols, np.arange(len(cols))] = 0.0
    assert np.allclose(m.ii_S.numpy()[:, cols], b, atol=1e-4)
    hist = data.history("test")
    users = torch.from_numpy(np.random.default_rng(0).choice(data.n_users, 200, replace=False))
    m.cfg.item_item = 0.0
    seq = m.score(users, hist)
    m.cfg.item_item = 3.0
    e = torch.from_numpy(hist.csr()[users.numpy()].toarray()).float() @ m.ii_S
    z = lambda a: (a - a.mean(1, keepdim=True)) / a.std(1, keepdim=True)   # noqa: E731
    assert torch.allclose(m.score(users, hist), z(seq) + 3.0 * z(e), atol=1e-4)


def test_collaborative_part_on_one_global_scale_on_real_movielens(ml1m_db):
    """../shared ML-1M, item_item_scale = "global": the ratio fit measures on a sample of users is
    the mean per-user std of the sequence scores over that of EASE's over *every* user with a
    train history (numpy, within 3%); the test scores are raw sequence + w * ratio * raw EASE;
    users with longer histories get a larger EASE share (what the global scale is for; a per-user
    z-score gives every user the same share); and at w = 3 EASE's signal carries the blend."""
    from scipy.stats import spearmanr

    from posterkg.gnn.data import load_interactions
    from posterkg.gnn.evaluate import evaluate_model
    from posterkg.store import open_store

    with open_store(ml1m_db, read_only=True) as store:
        data = load_interactions(store)
    inputs = ModelInputs(IdVocab(data.user_ids, data.movie_ids), data, None)
    m = registry.build("sasrec-all", inputs, registry.model_config(
        "sasrec-all", {"dim": 16, "item_item": 3.0, "item_item_l2": 500.0, "item_item_scale": "global"}),
        seed=0).eval()
    alone = evaluate_model(m, data, "valid")
    info = m._fit_item_item(inputs, lambda mm: evaluate_model(mm, data, "valid"), FitInfo([], 0, alone, 0.0), False)
    assert alone["ndcg@20"] < 0.03 and info.valid["ndcg@20"] > 0.08          # EASE alone: ~0.11
    train_hist, hist = data.history("valid"), data.history("test")
    users = torch.from_numpy(np.flatnonzero(np.diff(train_hist.indptr) > 0))
    with torch.no_grad():
        seq_sd = torch.cat([m.sequence_scores(users[a:a + 1024], train_hist).std(1)
                            for a in range(0, len(users), 1024)])
    x = train_hist.csr()[users.numpy()]
    ease_sd = (torch.from_numpy(x.toarray()).float() @ m.ii_S.float()).std(1)
    ratio = float(seq_sd.mean() / ease_sd.mean())
    assert m.cfg.item_item_ratio == pytest.approx(ratio, rel=0.03)
    # the test scores: raw sequence scores + w * ratio * raw EASE scores, from train + valid
    some = users[np.random.default_rng(0).choice(len(users), 200, replace=False)]
    with torch.no_grad():
        seq = m.sequence_scores(some, hist)
        e = torch.from_numpy(hist.csr()[some.numpy()].toarray()).float() @ m.ii_S.float()
        got = m.score(some, hist)
    r = m.cfg.item_item_ratio
    assert torch.allclose(got, seq + 3.0 * r * e, atol=1e-3)
    share = (3.0 * r * e).std(1) / seq.std(1)
    n_hist = torch.from_numpy(np.diff(hist.indptr)[some.numpy()]).float()
    assert spearmanr(n_hist.numpy(), share.numpy())[0] > 0.8


# -- time (time_bias / time_input) ----------------------------------------------------------------

def _timed_world(seed=0, n_users=12, n_movies=30, max_n=20):
    """Ratings with gaps from seconds to months between them (a mixture of bursts and breaks)."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(1, n_users + 1):
        n = int(rng.integers(8, max_n))
        t = 10 ** 9
        for m in rng.choice(n_movies, n, replace=False) + 1:
            t += int(rng.choice([0, 5, 400, 20_000, 3_000_000]))
            rows.append((u, int(m), float(rng.choice([1, 3, 4, 5])), t))
    return _inputs(pd.DataFrame(rows, columns=["user_id", "movie_id", "rating", "ts"]), n_movies,
                   concepts=(np.arange(n_movies), np.arange(n_movies) % 3, np.ones(n_movies)))


def test_time_buckets_are_log2_minutes_capped():
    from posterkg.gnn.sequential import time_buckets

    gaps = torch.tensor([0, 1, 59, 60, 179, 180, 420, -60, 86_400, 10 ** 9])
    # floor(log2(1 + gap / 60)): 0 under a minute (the same second included), 1 for 1-3 min, ...
    want = [0, 0, 0, 1, 1, 2, 3, 1, 10, 15]
    assert time_buckets(gaps, 16).tolist() == want
    assert time_buckets(gaps, 4).tolist() == [min(w, 3) for w in want]


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
def test_time_buckets_are_exact_at_every_bucket_edge(dtype):
    """The buckets come from float64 bits: at and next to every edge 60 * (2^k - 1) they must
    equal the rule in exact integer arithmetic (k = bit length of (|gap| + 60) // 60, minus 1),
    for every int32 gap and int64 gaps up to 2^53 s (float64's exact integers)."""
    from posterkg.gnn.sequential import time_buckets

    top = 2 ** 31 - 1 if dtype == torch.int32 else 2 ** 53
    edges = [60 * (2 ** k - 1) + d for k in range(64) for d in (-2, -1, 0, 1, 2)]
    gaps = sorted({g for e in edges for g in (e, -e) if abs(g) <= top} | {top, -top})
    for n in (24, 64):
        want = [min(((abs(g) + 60) // 60).bit_length() - 1, n - 1) for g in gaps]
        got = time_buckets(torch.tensor(gaps, dtype=dtype), n)
        assert got.dtype == torch.int64 and got.tolist() == want


@pytest.mark.parametrize("kind", ["sasrec-all", "posterkg-seq"])
def test_time_parts_start_at_zero_and_then_change_the_scores(kind):
    inputs = _timed_world()
    hist = inputs.data.history("test")
    users = torch.arange(inputs.data.n_users)
    base = {"dim": 16, "max_len": 24, "item_item": 0.0}
    plain = registry.build(kind, inputs, registry.model_config(kind, base))
    timed = registry.build(kind, inputs, registry.model_config(kind, {**base, "time_bias": True, "time_input": True}))
    missing, unexpected = timed.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("time_") for k in missing)
    plain.eval(), timed.eval()
    assert torch.allclose(timed.score(users, hist), plain.score(users, hist), atol=1e-5)
    with torch.no_grad():
        timed.time_input.weight.normal_()
    with_input = timed.score(users, hist)
    assert not torch.allclose(with_input, plain.score(users, hist), atol=1e-3)
    with torch.no_grad():
        timed.time_bias.weight.normal_()
    assert not torch.allclose(timed.score(users, hist), with_input, atol=1e-3)
    with pytest.raises(ValueError, match="timestamps"):
        table = timed.movie_table(timed.graph)
        timed.user_states(torch.tensor([[1, 2]]), torch.tensor([[3, 3]]), table)


def test_rating_codes_keep_the_sign_in_the_low_bits_and_half_stars_above():
    from posterkg.gnn.sequential import rating_codes

    r = np.array([0.5, 1.0, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0])
    plain = rating_codes(r)
    assert plain.tolist() == [1, 1, 1, 1, 2, 2, 3, 3, 3]           # disliked < 3 <= neutral < 4 <= liked
    stars = rating_codes(r, stars=True)
    assert (stars & 3).tolist() == plain.tolist()
    assert (stars >> 2).tolist() == [1, 2, 4, 5, 6, 7, 8, 9, 10]


def _four_and_five_world():
    """Two users who rate movies 1..12 in the same order at the same times, one with 4 stars, the
    other with 5: the same windows to a model that reads only the rating's sign."""
    rows = [(u, m, r, 10 * m) for u, r in ((1, 4.0), (2, 5.0)) for m in range(1, 13)]
    return _inputs(pd.DataFrame(rows, columns=["user_id", "movie_id", "rating", "ts"]), 14)


@pytest.mark.parametrize("kind", ["sasrec-all", "posterkg-seq"])
def test_rating_input_starts_at_zero_then_tells_a_five_from_a_four(kind):
    inputs = _four_and_five_world()
    hist = inputs.data.history("test")
    users = torch.arange(2)
    base = {"dim": 16, "max_len": 24, "item_item": 0.0, "rating_input": False}
    plain = registry.build(kind, inputs, registry.model_config(kind, base))
    starred = registry.build(kind, inputs, registry.model_config(kind, {**base, "rating_input": True}))
    missing, unexpected = starred.load_state_dict(plain.state_dict(), strict=False)
    assert missing == ["stars.weight"] and not unexpected
    plain.eval(), starred.eval()
    s_plain = plain.score(users, hist)
    assert torch.allclose(s_plain[0], s_plain[1])                 # a sign-only model: 4 = 5
    assert torch.allclose(starred.score(users, hist), s_plain, atol=1e-5)
    with torch.no_grad():
        starred.stars.weight.normal_()
    s = starred.score(users, hist)
    assert not torch.allclose(s[0], s[1], atol=1e-3)
    # training sees the same signs, so the same targets and weights
    win_p, wsg_p, *_ = plain._train_windows(inputs.data.history("valid"), with_ts=plain.uses_time)
    win_s, wsg_s, *_ = starred._train_windows(inputs.data.history("valid"), with_ts=starred.uses_time)
    assert torch.equal(win_p, win_s) and torch.equal(wsg_s & 3, wsg_p)
    assert not torch.equal(wsg_s, wsg_p)
    for a, b in zip(plain._targets(win_p, wsg_p), starred._targets(win_s, wsg_s)):
        assert torch.equal(a, b)


def test_time_bias_weighs_attention_by_the_time_between_two_ratings():
    """A bias of -1e9 on every bucket but 'under 3 minutes' must act as a mask: the last state of
    a one-block model equals the model without time (same weights) reading only the ratings
    within 3 minutes of the last one (the others turned into padding)."""
    inputs = _timed_world()
    cfg = {"dim": 16, "max_len": 6, "layers": 1, "dropout": 0.0, "inputs": "all", "item_item": 0.0}
    plain = registry.build("sasrec", inputs, registry.model_config("sasrec", cfg))
    timed = registry.build("sasrec", inputs, registry.model_config("sasrec", {**cfg, "time_bias": True}))
    timed.load_state_dict(plain.state_dict(), strict=False)
    with torch.no_grad():
        timed.time_bias.weight.fill_(-1e9)
        timed.time_bias.weight[:2] = 0.0                       # buckets 0-1: under 3 minutes
    plain.eval(), timed.eval()
    tok = torch.tensor([[0, 4, 7, 2, 9, 5]])
    sgn = torch.tensor([[0, 3, 1, 3, 2, 3]])
    ts = torch.tensor([[0, 1000, 50_000, 99_000, 99_850, 100_000]])   # 4 and 7 far; 2 at 1000 s
    table = plain.movie_table(plain.graph)
    with torch.no_grad():
        got = timed.user_states(tok, sgn, table, last_only=True, ts=ts)[:, -1]
        near = torch.tensor([[0, 0, 0, 0, 9, 5]])
        want = plain.user_states(near, sgn * (near > 0), table, last_only=True)[:, -1]
        unmasked = plain.user_states(tok, sgn, table, last_only=True)[:, -1]
    assert torch.allclose(got, want, atol=1e-5)
    assert not torch.allclose(got, unmasked, atol=1e-3)


@pytest.mark.parametrize("kind", ["sasrec-all", "posterkg-seq"])
def test_time_aware_training_states_are_the_scoring_states(kind):
    """The state a training window gives after each user's last-but-one rating is the state
    scoring gives for the history without the last rating: timestamps line up in both paths."""
    from posterkg.gnn.data import History

    inputs = _timed_world()
    m = registry.build(kind, inputs, registry.model_config(kind, {"dim": 16, "max_len": 32, "item_item": 0.0,
                                                                  "time_bias": True, "time_input": True}))
    with torch.no_grad():
        m.time_input.weight.normal_()
        m.time_bias.weight.normal_()
    m.eval()
    hist = inputs.data.history("valid")
    win, wsg, wts = m._train_windows(hist, with_ts=True)
    assert len(win) == hist.n_users                  # one window per user (all shorter than max_len)
    last = np.zeros(len(hist.users), bool)
    last[hist.indptr[1:] - 1] = True
    short = History(hist.n_users, hist.n_movies, hist.users[~last], hist.movies[~last],
                    hist.ratings[~last], hist.ts[~last], "valid")
    users = torch.arange(hist.n_users)
    with torch.no_grad():
        table = m.movie_table(m.graph)
        train_states = m.user_states(win[:, :-1], wsg[:, :-1], table, ts=wts[:, :-1])[:, -1]
        assert torch.allclose(m.score(users, short), train_states @ table.T, atol=1e-4)
        loss = m.train_loss(win, wsg, wts=wts)
    assert torch.isfinite(loss)


@pytest.mark.parametrize("shape", [(4, 5, 5), (4, 1, 5)])
def test_bucket_bias_is_the_embedding_lookup_per_head_and_its_gradient(shape):
    """[B, heads, R, L] biases weight[idx, head]: the embedding lookup permuted, head-major in
    memory (what the attention kernel reads without a copy), with the same gradient."""
    from posterkg.gnn.sequential import _BucketBias

    g = torch.Generator().manual_seed(0)
    w = torch.randn(7, 3, generator=g, dtype=torch.float64)
    idx = torch.randint(0, 7, shape, generator=g)
    up = torch.randn(shape[0], 3, *shape[1:], generator=g, dtype=torch.float64)
    a, b = w.clone().requires_grad_(), w.clone().requires_grad_()
    out = _BucketBias.apply(a, idx)
    ref = torch.nn.functional.embedding(idx, b).permute(0, 3, 1, 2)
    assert torch.equal(out, ref)
    assert out.permute(1, 0, 2, 3).is_contiguous()          # each head's biases in one block
    (out * up).sum().backward()
    (ref * up).sum().backward()
    assert torch.allclose(a.grad, b.grad, atol=1e-12)
    assert torch.autograd.gradcheck(lambda x: _BucketBias.apply(x, idx), (w.clone().requires_grad_(),))
    # a column slice of a table (one layer's heads) and a strided index view (the last row)
    wide = torch.randn(7, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: _BucketBias.apply(x[:, 2:4], idx[:, -1:]), (wide,))


def test_pairwise_time_buckets_match_the_rule_in_int32_and_int64():
    from posterkg.gnn.sequential import _BucketBias, pairwise_time_buckets, time_buckets

    g = torch.Generator().manual_seed(1)
    ts = torch.cumsum(torch.randint(0, 10 ** 6, (3, 9), generator=g), 1) + 10 ** 9
    tok = torch.randint(1, 50, (3, 9), generator=g)
    tok[0, :4] = 0                                      # left padding
    want = time_buckets(ts.unsqueeze(2) - ts.unsqueeze(1), 24)
    got = pairwise_time_buckets(tok, ts, 24)
    real = (tok != 0).unsqueeze(2) & (tok != 0).unsqueeze(1)
    assert torch.equal(got[real], want[real])           # padding's buckets are masked: not compared
    assert torch.equal(pairwise_time_buckets(tok, ts, 24, last_row=True), got[:, -1:])
    wide = ts.clone()
    wide[:, 0] = 0                                      # a span over 2^30 s: the int64 path
    assert torch.equal(pairwise_time_buckets(torch.ones_like(tok), wide, 24),
                       time_buckets(wide.unsqueeze(2) - wide.unsqueeze(1), 24))
    w = torch.randn(24, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: _BucketBias.apply(x, got), (w,))


@pytest.mark.parametrize("scale", ["user", "global"])
def test_blend_search_scores_every_pair_with_its_own_lambda(scale):
    """The search caches the sequence scores and each lambda's EASE scores: what valid sees for
    every (weight, lambda) must still be z(seq) + w z(x @ S_lambda) ("user"), or seq + w r x @ S_lambda
    with r this lambda's ratio of mean per-user stds ("global"), computed here by hand."""
    inputs = _random_world(seed=2)
    hist = inputs.data.history("valid")
    users = torch.arange(inputs.data.n_users)
    cfg = registry.model_config("posterkg-seq", {"dim": 8, "max_len": 48, "item_item": -1, "item_item_scale": scale,
                                                 "item_item_grid": [0.1, 0.3], "item_item_lambdas": [1.0, 50.0]})
    m = registry.build("posterkg-seq", inputs, cfg).eval()
    with torch.no_grad():
        seq = m.score(users, hist)                            # the part is not on yet
    x = torch.from_numpy(hist.csr().toarray())
    z = lambda a: (a - a.mean(1, keepdim=True)) / a.std(1, keepdim=True)   # noqa: E731
    checked = []

    def valid_fn(mm):
        l2 = next(l for l in (1.0, 50.0) if np.allclose(mm.ii_S.numpy(), _ease_by_hand(inputs, l), atol=1e-4))
        for _ in range(2):                                    # the second call reads the caches
            got = mm.score(users, hist)
            e = x @ torch.from_numpy(_ease_by_hand(inputs, l2)).float()
            if scale == "user":
                want = z(seq) + mm.cfg.item_item * z(e)
            else:
                has = torch.from_numpy(np.diff(hist.indptr) > 0)
                ratio = float(seq[has].std(1).mean() / e[has].std(1).mean())
                assert mm.cfg.item_item_ratio == pytest.approx(ratio, rel=1e-4)
                want = seq + mm.cfg.item_item * ratio * e
            assert torch.allclose(got, want, atol=1e-4), (mm.cfg.item_item, l2)
        checked.append((mm.cfg.item_item, l2))
        return {"ndcg@20": 0.0}

    m._fit_item_item(inputs, valid_fn, FitInfo([], 1, {"ndcg@20": -1.0}, 0.0), False)
    assert sorted(checked) == [(0.1, 1.0), (0.1, 50.0), (0.3, 1.0), (0.3, 50.0)]
    assert m._seq_cache is None and m._ii_cache is None


def test_time_part_on_real_movielens(ml1m_db):
    """../shared ML-1M: the windows carry each user's own latest timestamps (from the split's
    rows, in the protocol's order), their pairwise buckets follow floor(log2(1 + gap / 60)) on
    real gaps (same-second ties included), and a training window's state after a user's
    last-but-one rating is the scoring state of the history without the last rating."""
    from posterkg.gnn.data import History, load_interactions
    from posterkg.gnn.sequential import pairwise_time_buckets, window_spans
    from posterkg.store import open_store

    with open_store(ml1m_db, read_only=True) as store:
        data = load_interactions(store)
    inputs = ModelInputs(IdVocab(data.user_ids, data.movie_ids), data, None)
    L = 32
    m = registry.build("sasrec-all", inputs, registry.model_config(
        "sasrec-all", {"dim": 16, "max_len": L, "time_bias": True}), seed=0)
    with torch.no_grad():
        m.time_bias.weight.normal_(generator=torch.Generator().manual_seed(0))
    m.eval()
    hist = data.history("valid")
    users = np.random.default_rng(0).choice(data.n_users, 150, replace=False)
    p = data.parts["train"]
    tok, _, ts = m._batch(hist, users, "cpu")
    assert ts is not None and ts.shape == tok.shape
    for i, u in enumerate(users):                 # the split's rows, sorted by (timestamp, movie)
        rows = np.flatnonzero(p.users == u)
        order = np.lexsort((p.movies[rows], p.ts[rows]))
        want = p.ts[rows][order][-L:]
        assert np.array_equal(ts[i, L - len(want):].numpy(), want)
        assert np.array_equal(tok[i, L - len(want):].numpy(), p.movies[rows][order][-L:] + 1)
    got = pairwise_time_buckets(tok, ts, 24).numpy()
    t = ts.numpy().astype(np.float64)
    want = np.minimum(np.floor(np.log2(1.0 + np.abs(t[:, :, None] - t[:, None, :]) / 60.0)), 23)
    real = (tok.numpy() != 0)[:, :, None] & (tok.numpy() != 0)[:, None, :]
    assert np.array_equal(got[real], want[real])
    assert (want[real] == 0).mean() > 0.1 and want[real].max() >= 10   # bursts and long breaks
    # training windows: each user's most recent one comes first among that user's windows
    win, wsg, wts = m._train_windows(hist, with_ts=True)
    lengths = np.diff(hist.indptr)
    first = np.concatenate([[0], np.cumsum([len(window_spans(int(n), L)) for n in lengths])[:-1]])
    last = np.zeros(len(hist.users), bool)
    last[hist.indptr[1:] - 1] = True
    short = History(hist.n_users, hist.n_movies, hist.users[~last], hist.movies[~last],
                    hist.ratings[~last], hist.ts[~last], "valid")
    idx = torch.from_numpy(first[users])
    with torch.no_grad():
        table = m.movie_table(None)
        train_states = m.user_states(win[idx, :-1], wsg[idx, :-1], table, ts=wts[idx, :-1])[:, -1]
        assert torch.allclose(m.score(torch.from_numpy(users), short), train_states @ table.T, atol=1e-4)


# -- seed ensembles (members) ----------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["sasrec-all", "posterkg-seq"])
def test_an_ensemble_trains_each_member_on_its_own_seed_and_scores_their_mean(kind):
    """members = 3: three models of the same settings, trained one after the other (seeds 5, 6,
    7: the second member is the model a one-member run with seed 6 trains), each with its own
    early stopping and optimizer; the ensemble's sequence scores are the mean of theirs; the
    collaborative part is chosen once, on the mean; a save/load round trip keeps the scores."""
    inputs = _random_world(seed=3)
    hist = inputs.data.history("test")
    users = torch.arange(inputs.n_users)
    over = {"dim": 8, "max_len": 48, "item_item": -1, "item_item_grid": [0.1, 0.2],
            "item_item_lambdas": [5.0], "item_item_scale": "global"}
    cfg = TrainConfig(model=kind, epochs=3, min_epochs=1, patience=5, batch_size=16, threads=1, seed=5, ema=0.5)
    res = train(inputs, cfg, model_cfg=registry.model_config(kind, {**over, "members": 3}))
    m = res.model
    assert len(m.extra) == 2 and all(e.cfg.members == 1 and e.cfg.item_item == 0.0 for e in m.extra)
    # every member trained and they differ (their own seeds)
    own = [mm._own_sequence_scores(users, hist) for mm in (m, *m.extra)]
    assert not torch.allclose(own[0], own[1]) and not torch.allclose(own[1], own[2])
    # the second member is what a one-member run with seed 6 gives (no collaborative part)
    solo = train(inputs, dataclasses.replace(cfg, seed=6),
                 model_cfg=registry.model_config(kind, {**over, "item_item": 0.0})).model
    assert torch.allclose(solo.sequence_scores(users, hist), own[1], atol=1e-5)
    # the scores are the mean of the members', blended once
    mean = (own[0] + own[1] + own[2]) / 3
    assert torch.allclose(m.sequence_scores(users, hist), mean, atol=1e-6)
    c = m.cfg
    want = mean + c.item_item * c.item_item_ratio * m.item_item_scores(users, hist) if c.item_item else mean
    assert torch.allclose(m.score(users, hist), want, atol=1e-5)
    # what fit reports on valid is what the ensemble scores there
    from posterkg.gnn.evaluate import evaluate_model

    assert abs(evaluate_model(m, inputs.data, "valid")["ndcg@20"] - res.valid["ndcg@20"]) < 1e-9
    # a save/load round trip (state and config, as the store keeps them) gives the same scores
    again = registry.build(kind, inputs, registry.stored_model_config(kind, dataclasses.asdict(m.cfg)))
    again.load_state_dict(m.state_dict())
    again.eval()
    assert torch.allclose(again.score(users, hist), m.score(users, hist), atol=1e-6)
    # the movie vectors are the members' side by side
    assert m.movie_vectors().shape == (inputs.n_movies, 8 * 3)


def test_an_ensemble_member_trains_only_its_own_parameters():
    """While the first member trains, the other members' parameters stay as they are (they are
    not in its optimizer or its weight average), and a one-member model has no extra state."""
    inputs = _random_world(seed=4)
    m = registry.build("posterkg-seq", inputs, registry.model_config(
        "posterkg-seq", {"dim": 8, "max_len": 48, "members": 2}))
    before = {k: v.clone() for k, v in m.extra.state_dict().items()}
    ids = {id(p) for p in m.trained_parameters()}
    assert not ids & {id(p) for p in m.extra.parameters()}
    assert len(ids) + len(list(m.extra.parameters())) == len(list(m.parameters()))
    m._solo = True
    m._fit_sequence(inputs, TrainConfig(model="posterkg-seq", epochs=2, min_epochs=1, patience=5,
                                        batch_size=16, ema=0.9), lambda mm: {"ndcg@20": 0.0}, False)
    after = m.extra.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    one = registry.build("posterkg-seq", inputs, registry.model_config("posterkg-seq", {"dim": 8, "max_len": 48}))
    assert not any(k.startswith("extra.") for k in one.state_dict())
    with pytest.raises(ValueError, match="members"):
        registry.build("posterkg-seq", inputs, registry.model_config("posterkg-seq", {"members": 0}))


def test_an_ensembles_blend_search_reuses_the_mean_it_just_scored(monkeypatch):
    """fit scores the members' mean on valid once: the blend search that follows takes those
    scores from the cache (per-user scale: no other scoring pass), and the cache is gone after."""
    from posterkg.gnn import sequential

    inputs = _random_world(seed=7)
    calls, in_search = [], []
    own, search = sequential.SASRec._own_sequence_scores, sequential.SASRec._fit_item_item

    def counted(self, users, history):
        calls.append(bool(in_search))
        return own(self, users, history)

    def searching(self, *a, **k):
        in_search.append(True)
        try:
            return search(self, *a, **k)
        finally:
            in_search.clear()

    monkeypatch.setattr(sequential.SASRec, "_own_sequence_scores", counted)
    monkeypatch.setattr(sequential.SASRec, "_fit_item_item", searching)
    cfg = TrainConfig(model="posterkg-seq", epochs=1, min_epochs=1, patience=5, batch_size=16, threads=1, seed=5)
    m = train(inputs, cfg, model_cfg=registry.model_config("posterkg-seq", {
        "dim": 8, "max_len": 48, "members": 2, "item_item": -1, "item_item_grid": [0.2, 0.3],
        "item_item_lambdas": [5.0], "item_item_scale": "user"})).model
    assert calls and True not in calls          # every blend candidate read the kept scores
    assert m._seq_cache is None and m.cfg.item_item in (0.0, 0.2, 0.3)


def test_saved_one_member_runs_become_an_ensemble_without_training():
    """adopt_members: two one-member runs (seeds 5 and 6, each with its own collaborative part)
    become the members = 2 model: its sequence scores are the mean of theirs, equal to what
    training members = 2 with seed 5 gives; their own EASE parts are dropped, and the part is
    chosen again on the mean. States that do not fit are refused."""
    inputs = _random_world(seed=6)
    hist = inputs.data.history("test")
    users = torch.arange(inputs.n_users)
    over = {"dim": 8, "max_len": 48, "item_item": -1, "item_item_grid": [0.2], "item_item_lambdas": [5.0],
            "item_item_scale": "global"}
    cfg = TrainConfig(model="posterkg-seq", epochs=2, min_epochs=1, patience=5, batch_size=16, threads=1, seed=5,
                      ema=0.5)
    solos = [train(inputs, dataclasses.replace(cfg, seed=s), model_cfg=registry.model_config(
        "posterkg-seq", {**over, "item_item": 0.2})).model for s in (5, 6)]
    assert all(s.ii_S.numel() for s in solos)
    ens = registry.build("posterkg-seq", inputs, registry.model_config("posterkg-seq", {**over, "members": 2}))
    ens.adopt_members([s.state_dict() for s in solos])
    ens.eval()
    assert ens.ii_S.numel() == 0
    mean = (solos[0].sequence_scores(users, hist) + solos[1].sequence_scores(users, hist)) / 2
    assert torch.allclose(ens.sequence_scores(users, hist), mean, atol=1e-6)
    trained = train(inputs, cfg, model_cfg=registry.model_config("posterkg-seq", {**over, "item_item": 0.0,
                                                                                  "members": 2})).model
    assert torch.allclose(trained.sequence_scores(users, hist), mean, atol=1e-5)
    # the collaborative part is chosen again, on the members' mean
    from posterkg.gnn.evaluate import evaluate_model

    ens._fit_item_item(inputs, lambda mm: evaluate_model(mm, inputs.data, "valid"),
                       FitInfo([], 1, {"ndcg@20": float("-inf")}, 0.0), False)
    assert ens.ii_S.numel() and ens.cfg.item_item == 0.2
    with pytest.raises(ValueError, match="1 states for an ensemble of 2"):
        ens.adopt_members([solos[0].state_dict()])
    with pytest.raises(ValueError, match="one-member states"):
        ens.adopt_members([ens.state_dict(), solos[1].state_dict()])
    other = registry.build("posterkg-seq", inputs, registry.model_config("posterkg-seq", {**over, "dim": 16}))
    with pytest.raises(RuntimeError, match="size mismatch"):
        ens.adopt_members([solos[0].state_dict(), other.state_dict()])
    novis = registry.build("sasrec-all", inputs, registry.model_config("sasrec-all", {"dim": 8, "max_len": 48}))
    with pytest.raises(ValueError, match="does not fit"):
        ens.adopt_members([solos[0].state_dict(), novis.state_dict()])


@pytest.mark.parametrize("scale", ["user", "global"])
def test_an_ensembles_explanation_parts_add_up_to_its_score(scale):
    inputs = _random_world(seed=5)
    hist = inputs.data.history("test")
    m = registry.build("posterkg-seq", inputs, registry.model_config("posterkg-seq", {
        "dim": 8, "max_len": 48, "members": 2, "item_item": 0.3, "item_item_l2": 5.0,
        "item_item_scale": scale, "item_item_ratio": 2.0}))
    for mm in (m, *m.extra):
        _away_from_zero(mm)
    m._fit_item_item(inputs, lambda mm: {"ndcg@20": 1.0}, FitInfo([], 1, {"ndcg@20": 0.0}, 0.0), False)
    m.eval()
    users, movies = torch.tensor([0, 4, 7]), torch.arange(inputs.n_movies)
    parts = m.explain_parts(users, hist, movies)
    total = m.score(users, hist)
    assert torch.allclose(parts["short"] + parts["long"], total, atol=1e-4)
    # and the parts are the members' means (global scale: raw parts, EASE on the long side)
    if scale == "global":
        each = [mm._part_vectors(users, hist, None) for mm in (m, *m.extra)]
        short = [s @ t[movies].T for s, _, _, t, _ in each]
        assert torch.allclose(parts["short"], (short[0] + short[1]) / 2, atol=1e-5)
        assert not torch.allclose(short[0], short[1])
    # the attributions' gradient path scores like score()
    assert torch.allclose(m.score_graph(users, hist), total, atol=1e-5)


def test_an_ensemble_on_real_movielens(ml1m_db):
    """../shared ML-1M: a two-member sasrec-all trains both members (a few steps each), scores
    real test users with the mean of the members' scores, and the valid figure fit reports is
    the ensemble's."""
    from posterkg.gnn.data import load_interactions
    from posterkg.gnn.evaluate import evaluate_model
    from posterkg.store import open_store

    with open_store(ml1m_db, read_only=True) as store:
        data = load_interactions(store)
    inputs = ModelInputs(IdVocab(data.user_ids, data.movie_ids), data, None)
    cfg = TrainConfig(model="sasrec-all", epochs=1, min_epochs=0, patience=5, batch_size=64, threads=1,
                      max_steps=4, seed=0)
    res = train(inputs, cfg, model_cfg=registry.model_config("sasrec-all", {"dim": 16, "max_len": 50, "members": 2}))
    m = res.model
    users = torch.from_numpy(np.random.default_rng(0).choice(data.n_users, 200, replace=False))
    hist = data.history("test")
    a, b = m._own_sequence_scores(users, hist), m.extra[0]._own_sequence_scores(users, hist)
    assert not torch.allclose(a, b)
    assert torch.allclose(m.score(users, hist), (a + b) / 2, atol=1e-6)
    assert abs(evaluate_model(m, data, "valid")["ndcg@20"] - res.valid["ndcg@20"]) < 1e-9


def test_catalogue_softmax_with_a_scaled_bias_is_log_softmax_of_the_biased_logits():
    """bias/scale: log_softmax(h @ table.T + scale * bias) at the targets, chunked, with and without
    excluded movies; gradients for h, table and the scale as autograd's on the one-shot form."""
    from posterkg.gnn.losses import catalogue_log_softmax_at, exclude_logits_

    g = torch.Generator().manual_seed(9)
    h0 = torch.randn(17, 5, generator=g)
    t0 = torch.randn(11, 5, generator=g)
    bias = torch.randn(17, 11, generator=g)
    targets = torch.randint(0, 11, (17, 2), generator=g)
    sets = torch.rand(3, 11, generator=g) < 0.3
    row = torch.randint(0, 3, (17,), generator=g)
    for exclude in (None, (sets, row)):
        def run(fn):
            h, t = h0.clone().requires_grad_(), t0.clone().requires_grad_()
            s = torch.tensor(0.7, requires_grad=True)
            out = fn(h, t, s)
            (out * torch.arange(1.0, 3.0)).sum().backward()
            return out.detach(), h.grad, t.grad, s.grad

        def one_shot(h, t, s):
            z = h @ t.T + s * bias
            if exclude is not None:
                z = exclude_logits_(z, targets, sets[row], inplace=False)
            return torch.log_softmax(z, -1).gather(1, targets)

        ref = run(one_shot)
        for chunk in (1, 4, 64):
            got = run(lambda h, t, s: catalogue_log_softmax_at(h, t, targets, chunk, exclude=exclude,
                                                               bias=bias, scale=s))
            for a, b in zip(got, ref):
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
        assert ref[3].abs() > 0
    with pytest.raises(ValueError, match="together"):
        catalogue_log_softmax_at(h0, t0, targets, 4, bias=bias)


def _prior_world():
    """Users of 6 to 25 ratings over 12 movies, so max_len 6 gives users several windows."""
    return _random_world(seed=3, n_users=14, n_movies=12, max_n=13)


def test_ii_prior_reads_the_other_halfs_ease_over_everything_rated_before_each_target():
    """ii_prior in training: at each target position, the prior is EASE (lambda / 2, solved on the
    other half of the users: leak-free) of every movie the user rated before the target, across
    window boundaries; scoring uses EASE on every user at lambda. By hand from the ratings."""
    inputs = _prior_world()
    hist = inputs.data.history("valid")
    kind = "posterkg-seq"
    m = registry.build(kind, inputs, registry.model_config(kind, {
        "dim": 8, "max_len": 6, "dropout": 0.0, "time_bias": False, "ii_prior": 1.5, "ii_prior_l2": 4.0}))
    win, wsg = m._train_windows(hist)
    base, fold, mats = m._prepare_prior(hist, m._window_layout(hist))
    n = inputs.n_movies
    x = np.zeros((inputs.n_users, n))
    x[hist.users, hist.movies] = 1.0

    def ease(rows, l2):
        p = np.linalg.inv(x[rows].T @ x[rows] + l2 * np.eye(n))
        b = np.eye(n) - p / np.diag(p)[None, :]
        np.fill_diagonal(b, 0.0)
        return b
    users = np.arange(inputs.n_users)
    half = [ease(users[users % 2 == f], 2.0) for f in (0, 1)]
    np.testing.assert_allclose(m.prior_S.numpy(), ease(users, 4.0), atol=1e-4)
    # every target position of every window, by hand: (window, position) -> the user's ratings so far
    tok = win[:, :-1]
    tgt, ok = m._targets(win, wsg)
    rows = (ok != 0).any(-1)
    got = m._prior_logits(tok, rows, (base, [mats[int(f)] for f in fold]))
    want, w = [], 0
    for u in range(inputs.n_users):
        movies = hist.movies[hist.indptr[u]:hist.indptr[u + 1]]
        from posterkg.gnn.sequential import window_spans
        for start, end in window_spans(len(movies), 6):
            assert int(fold[w]) == 1 - u % 2
            L = tok.shape[1]
            for p in range(L):
                if not rows[w, p]:
                    continue
                i = start + (p - (L - (end - start - 1)))    # history index of the input token at p
                assert int(tok[w, p]) == movies[i] + 1
                seen = np.zeros(n)
                seen[movies[:i + 1]] = 1.0
                want.append(seen @ half[u % 2 == 0])      # the other half's matrix
            w += 1
    assert w == len(win) and int((base.abs().sum(1) > 0).sum()) > 0     # some windows start later
    np.testing.assert_allclose(got.numpy(), np.stack(want), atol=1e-4)


@pytest.mark.parametrize("chunk", [0, 5])
def test_ii_prior_training_loss_and_scores_add_the_learned_weight_times_ease(chunk):
    """The loss is the softmax over h . table + w * prior (w learned: it gets a gradient); after
    fit, scores are the sequence model's + w * x_u @ S (S on every user), saved and loaded with the
    model; explanation parts still add up; off, the model has no prior state."""
    inputs = _prior_world()
    hist, test_hist = inputs.data.history("valid"), inputs.data.history("test")
    kind = "posterkg-seq"
    cfg = registry.model_config(kind, {"dim": 8, "max_len": 6, "dropout": 0.0, "time_bias": False, "mask_seen": False,
                                       "softmax_chunk": chunk, "ii_prior": 1.5, "ii_prior_l2": 4.0})
    m = registry.build(kind, inputs, cfg)
    _away_from_zero(m)
    win, wsg = m._train_windows(hist)
    base, fold, mats = m._prepare_prior(hist, m._window_layout(hist))
    pr = (base, [mats[int(f)] for f in fold])
    loss = m.train_loss(win, wsg, prior=pr)
    table = m.movie_table(m.graph)
    h = m.user_states(win[:, :-1], wsg[:, :-1], table)
    tgt, ok = m._targets(win, wsg)
    rows = (ok != 0).any(-1)
    z = h[rows] @ table.T + 1.5 * m._prior_logits(win[:, :-1], rows, pr)
    lp = torch.log_softmax(z, -1).gather(1, tgt[rows].clamp(min=0))
    torch.testing.assert_close(loss, -(lp * ok[rows]).sum() / ok[rows].sum(), rtol=1e-5, atol=1e-6)
    (gw,) = torch.autograd.grad(loss, [m.prior_w])
    assert gw.abs() > 0
    with pytest.raises(ValueError, match="prior"):
        m.train_loss(win, wsg)
    # scores: the sequence part + w * x_u @ S
    m.eval()
    users = torch.arange(inputs.n_users)
    x = np.zeros((inputs.n_users, inputs.n_movies), np.float32)
    x[test_hist.users, test_hist.movies] = 1.0
    prior = 1.5 * torch.from_numpy(x) @ m.prior_S
    off = registry.build(kind, inputs, dataclasses.replace(cfg, ii_prior=0.0))
    off.load_state_dict({k: v for k, v in m.state_dict().items() if k not in ("prior_w", "prior_S")})
    off.eval()
    assert "prior_S" not in off.state_dict() and prior.abs().sum() > 0
    torch.testing.assert_close(m.score(users, test_hist), off.score(users, test_hist) + prior, rtol=1e-4, atol=1e-5)
    again = registry.build(kind, inputs, cfg)
    again.load_state_dict(m.state_dict())
    again.eval()
    torch.testing.assert_close(again.score(users, test_hist), m.score(users, test_hist))
    parts = m.explain_parts(users[:5], test_hist, torch.arange(inputs.n_movies))
    torch.testing.assert_close(parts["short"] + parts["long"], m.score(users[:5], test_hist), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(parts["prior"], prior[:5], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="inputs = 'all'"):
        registry.build("sasrec", inputs, registry.model_config("sasrec", {"ii_prior": 1.0}))


def test_ii_prior_trains_end_to_end_and_keeps_its_part_under_the_continue_rule():
    """fit with the prior: the weight moves from its start, S is solved on train (and again on
    train + valid by the continue rule, which the test history then reads)."""
    from posterkg.gnn.train import continue_training

    inputs = _prior_world()
    kind = "sasrec-all"
    cfg = registry.model_config(kind, {"dim": 8, "max_len": 6, "ii_prior": 1.0, "ii_prior_l2": 4.0})
    res = train(inputs, TrainConfig(model=kind, epochs=2, batch_size=4, eval_from=1, min_epochs=1, seed=0),
                model_cfg=cfg)
    m = res.model
    assert m.prior_S.shape == (inputs.n_movies, inputs.n_movies) and float(m.prior_w) != 1.0
    more = continue_training(inputs, res, 1)
    x = np.zeros((inputs.n_users, inputs.n_movies))
    h = inputs.data.history("test")
    x[h.users, h.movies] = 1.0
    p = np.linalg.inv(x.T @ x + 4.0 * np.eye(inputs.n_movies))
    b = np.eye(inputs.n_movies) - p / np.diag(p)[None, :]
    np.fill_diagonal(b, 0.0)
    np.testing.assert_allclose(more.model.prior_S.numpy(), b, atol=1e-4)


def test_excluded_one_shot_softmax_counts_a_repeated_target_once():
    """exclude_logits_ out of place (the one-shot path) with a target twice in a row (padding's 0
    beside a real 0): the same gradients as the chunked softmax, which has its own backward."""
    from posterkg.gnn.losses import catalogue_log_softmax_at, exclude_logits_

    g = torch.Generator().manual_seed(2)
    h0, t0 = torch.randn(6, 4, generator=g), torch.randn(9, 4, generator=g)
    targets = torch.tensor([[0, 0], [3, 0], [5, 5], [1, 2], [0, 4], [7, 7]])
    sets = torch.rand(2, 9, generator=g) < 0.5
    row = torch.tensor([0, 1, 0, 1, 0, 1])
    grads = []
    for one_shot in (True, False):
        h = h0.clone().requires_grad_()
        if one_shot:
            z = exclude_logits_(h @ t0.T, targets, sets[row], inplace=False)
            out = torch.log_softmax(z, -1).gather(1, targets)
        else:
            out = catalogue_log_softmax_at(h, t0, targets, 4, exclude=(sets, row))
        (out * torch.tensor([1.0, 0.0])).sum().backward()     # the second target weighs 0 (padding)
        grads.append(h.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-6)


def test_user_embedding_starts_at_zero_then_adds_each_users_own_vector():
    """posterkg-seq's ``user_embedding``: zero-initialised (the model without it, to the
    digit), then each user's vector enters the long-term part of that user only; a user index
    past the table reads zeros; the explanation parts still add up to the score."""
    inputs = _random_world(n_users=12, max_n=20)
    hist = inputs.data.history("test")
    users = torch.arange(inputs.data.n_users)
    base = {"dim": 16, "max_len": 24, "item_item": 0.0, "mask_seen": False}
    plain = registry.build("posterkg-seq", inputs, registry.model_config("posterkg-seq", base))
    own = registry.build("posterkg-seq", inputs, registry.model_config("posterkg-seq", {**base, "user_embedding": True}))
    missing, unexpected = own.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing == ["user.weight"]
    plain.eval(), own.eval()
    assert torch.allclose(own.score(users, hist), plain.score(users, hist), atol=1e-6)
    with torch.no_grad():
        own.user.weight[3].normal_()
    got, want = own.score(users, hist), plain.score(users, hist)
    changed = ~torch.isclose(got, want, atol=1e-4).all(1)
    assert changed.tolist() == [u == 3 for u in range(len(users))]
    # by hand: the long-term part of user 3 gains its vector, fused by the gate as before
    from posterkg.gnn.sequential import _windows
    tok, sgn, ts = (torch.from_numpy(a) for a in _windows(hist, np.array([3]), 24, False, with_ts=True,
                                                           stars=own.cfg.rating_input))
    with torch.no_grad():
        table = own.movie_table(own.graph)
        short, long = plain._parts(tok, sgn, table, last_only=True, ts=ts)
        h, _ = plain._fuse(short, long + own.user.weight[3])
        assert torch.allclose(got[3], (h[:, -1] @ table.T)[0], atol=1e-5)
        with pytest.raises(ValueError, match="pass users"):
            own.user_states(tok, sgn, table, ts=ts)
        past = own.user_states(tok, sgn, table, ts=ts, users=torch.tensor([10 ** 6]), last_only=True)
        assert torch.allclose(past, plain.user_states(tok, sgn, table, ts=ts, last_only=True), atol=1e-6)
    parts = own.explain_parts(users[:5], hist, torch.arange(40))
    assert torch.allclose(parts["short"] + parts["long"], got[:5], atol=1e-5)
    with pytest.raises(ValueError, match="long_term"):
        registry.build("posterkg-seq", inputs, registry.model_config("posterkg-seq", {
            **base, "user_embedding": True, "long_term": False}))
    with pytest.raises(ValueError, match="user_sse"):
        registry.build("posterkg-seq", inputs, registry.model_config("posterkg-seq", {
            **base, "user_embedding": True, "user_sse": 1.0}))


def test_each_training_window_knows_its_user_and_the_user_vectors_learn():
    """The windows' users line up with ``_train_windows`` (every window's movies are its user's),
    and training moves the user table from zero (with and without SSE's swaps)."""
    inputs = _random_world(n_users=10, max_n=30)
    hist = inputs.data.history("valid")
    for cfg in ({"inputs": "all"}, {"inputs": "positives"}):
        m = registry.build("posterkg-seq", inputs, registry.model_config("posterkg-seq", {
            "dim": 8, "max_len": 6, "user_embedding": True, **cfg}))
        win, _ = m._train_windows(hist)
        wus = m._window_layout(hist)[0]
        assert len(wus) == len(win) > inputs.data.n_users       # several windows per user
        for w, u in zip(win, wus.tolist()):
            rated = set((hist.movies[hist.indptr[u]:hist.indptr[u + 1]] + 1).tolist())
            assert set(w[w > 0].tolist()) <= rated
    for sse in (0.0, 0.5):
        torch.manual_seed(0)
        m = registry.build("posterkg-seq", inputs, registry.model_config("posterkg-seq", {
            "dim": 8, "max_len": 12, "user_embedding": True, "user_sse": sse, "item_item": 0.0}))
        got = train(inputs, TrainConfig(model="posterkg-seq", epochs=2, batch_size=8, min_epochs=1), model=m)
        assert got.model.user.weight.abs().sum() > 0


def test_svd_item_init_spans_the_top_eigenvectors_of_the_cosine_co_rating_matrix():
    """``item_init = "svd"``: the id table (padding row aside) is the top-``dim`` eigenvectors
    of the training part's cosine item-item matrix times the square roots of their eigenvalues,
    at std 0.02 (checked with numpy, column by column up to sign); the default stays random."""
    inputs = _random_world(n_users=20, max_n=30)
    dim = 6
    m = registry.build("posterkg-seq", inputs, registry.model_config("posterkg-seq", {"dim": dim, "item_init": "svd"}))
    hist = inputs.data.history("valid")
    x = np.zeros((inputs.data.n_users, inputs.data.n_movies))
    for u in range(inputs.data.n_users):
        x[u, hist.movies[hist.indptr[u]:hist.indptr[u + 1]]] = 1.0
    g = x.T @ x
    d = np.sqrt(np.maximum(np.diag(g), 1.0))
    vals, vecs = np.linalg.eigh(g / d[:, None] / d[None, :])
    want = vecs[:, -dim:] * np.sqrt(np.maximum(vals[-dim:], 0.0))
    want *= 0.02 / want.std(ddof=1)
    got = m.item.weight.detach().numpy()
    assert np.all(got[0] == 0)
    for j in range(dim):
        a, b = got[1:, j], want[:, j]
        assert min(np.abs(a - b).max(), np.abs(a + b).max()) < 1e-5, j
    rand = registry.build("posterkg-seq", inputs, registry.model_config("posterkg-seq", {"dim": dim}))
    assert not np.allclose(rand.item.weight.detach().numpy()[1:, 0], got[1:, 0], atol=1e-3)
    with pytest.raises(ValueError, match="item_init"):
        registry.build("posterkg-seq", inputs, registry.model_config("posterkg-seq", {"item_init": "pca"}))
    from posterkg.errors import InputError
    with pytest.raises(InputError, match="item_item_max_movies"):
        registry.build("posterkg-seq", inputs, registry.model_config("posterkg-seq", {
            "item_init": "svd", "item_item_max_movies": 10}))


def test_window_targets_cover_every_rating_once_with_the_context_the_stride_leaves():
    from posterkg.gnn.sequential import window_spans, window_targets

    for n in range(0, 40):
        for L in (1, 2, 5, 8):
            chunks = window_targets(n, L, L)
            assert window_spans(n, L) == [(a, b) for a, b, _ in chunks]
            assert all(f == a + 1 for a, _, f in chunks)            # chunks: every rating a target
            for stride in range(1, L + 1):
                spans = window_targets(n, L, stride)
                targets = sorted(t for _, b, f in spans for t in range(f, b))
                assert targets == list(range(1, n)), (n, L, stride)
                for a, b, f in spans:
                    assert 0 <= a < f <= b - 1 and b - a <= L + 1
                    assert a == 0 or (b - f <= stride and f - a >= L - stride + 1)
    assert window_targets(450, 200, 100) == [(249, 450, 350), (149, 350, 250), (49, 250, 150), (0, 150, 1)]
    with pytest.raises(ValueError, match="stride"):
        window_targets(10, 4, 5)


def test_strided_windows_train_on_each_liked_rating_once_with_more_context():
    """``window_stride``: the (user, target) pairs the loss sees are the chunked windows' pairs,
    each once, and a target outside a user's earliest window reads at least max_len - stride
    ratings before it."""
    inputs = _random_world(n_users=12, max_n=30)
    hist = inputs.data.history("valid")
    L = 8

    def pairs(model):
        win, wsg = model._train_windows(hist)
        wus = model._window_layout(hist)[0]
        n_tgt = torch.from_numpy(model._window_layout(hist)[2]) if model.cfg.window_stride else None
        tgt, ok = model._targets(win, wsg, n_tgt)
        got, context = [], []
        for w in range(len(win)):
            for p in np.flatnonzero(ok[w, :, 0].numpy() > 0):
                got.append((int(wus[w]), int(tgt[w, p, 0])))
                context.append(int((win[w, :p + 1] > 0).sum()))
        return sorted(got), context, len(win)

    chunked = registry.build("posterkg-seq", inputs, registry.model_config("posterkg-seq", {"dim": 8, "max_len": L}))
    slid = registry.build("posterkg-seq", inputs, registry.model_config("posterkg-seq", {
        "dim": 8, "max_len": L, "window_stride": 3}))
    want, ctx_chunked, n_chunked = pairs(chunked)
    got, ctx_slid, n_slid = pairs(slid)
    assert got == want and len(got) > 0 and n_slid > n_chunked
    assert sum(ctx_slid) > sum(ctx_chunked)
    assert len(slid._window_layout(hist)[2]) == n_slid
    # training runs on the strided windows and its loss is normalised over the same targets
    res = train(inputs, TrainConfig(model="posterkg-seq", epochs=1, batch_size=8, min_epochs=1), model=slid)
    assert res.history[0]["targets"] == len(got)
    with pytest.raises(ValueError, match="window_stride"):
        registry.build("posterkg-seq", inputs, registry.model_config("posterkg-seq", {"max_len": L, "window_stride": L + 1}))


def test_crop_drops_a_drawn_number_of_each_hit_windows_oldest_ratings():
    from posterkg.gnn.sequential import crop_mask

    rng = np.random.default_rng(0)
    lengths = rng.integers(0, 12, 400)
    win = torch.zeros(400, 12, dtype=torch.int64)
    for i, n in enumerate(lengths):
        win[i, 12 - n:] = torch.arange(1, n + 1)
    g = torch.Generator().manual_seed(0)
    kept = crop_mask(win, 0.5, g)
    out = win * kept
    n_out = (out > 0).sum(1).numpy()
    for i, n in enumerate(lengths):
        row = out[i].numpy()
        # still one run of the window's newest ratings, right-aligned, at least 2 kept when n >= 2
        assert np.array_equal(row[12 - n_out[i]:], np.arange(n - n_out[i] + 1, n + 1))
        assert n_out[i] >= min(n, 2) and n_out[i] <= n
        assert kept[i].tolist() == [c >= 12 - n_out[i] for c in range(12)]
    cropped = n_out < lengths
    assert 0.3 < cropped.mean() < 0.5                    # p = 0.5, less the draws of 0
    assert torch.equal(crop_mask(win, 0.0, g), win > 0)  # p = 0: every rating kept


def test_cropped_training_reads_crops_and_leaves_scoring_alone():
    """``crop``: off, training is the same to the digit; on, it trains from the cropped windows
    (a different model), and scoring still reads whole windows."""
    inputs = _random_world(n_users=12, max_n=30)
    base = {"dim": 8, "max_len": 12, "item_item": 0.0}

    def trained(**over):
        torch.manual_seed(0)
        m = registry.build("posterkg-seq", inputs, registry.model_config("posterkg-seq", {**base, **over}), seed=0)
        return train(inputs, TrainConfig(model="posterkg-seq", epochs=2, batch_size=8, min_epochs=1), model=m).model

    plain, zero, cropped = trained(), trained(crop=0.0), trained(crop=0.5)
    users = torch.arange(inputs.data.n_users)
    hist = inputs.data.history("valid")
    assert torch.equal(plain.score(users, hist), zero.score(users, hist))
    assert not torch.allclose(plain.score(users, hist), cropped.score(users, hist), atol=1e-4)
    with pytest.raises(ValueError, match="crop"):
        registry.build("posterkg-seq", inputs, registry.model_config("posterkg-seq", {**base, "crop": 1.0}))
    with pytest.raises(ValueError, match="ii_prior"):
        registry.build("posterkg-seq", inputs, registry.model_config("posterkg-seq", {**base, "crop": 0.5, "ii_prior": 1.0}))
