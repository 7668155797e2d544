"""The refit rule (train again on train + valid for the epoch count chosen on valid) and the
shifted protocol that chooses between refit and fold-in on valid. Expected values are worked out
here from the raw rows (numpy), not by the code under test."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from gnn_synth import protocol_data
from torch_threads import one_torch_thread  # noqa: F401
from posterkg.gnn import registry
from posterkg.gnn.base import Graph, IdVocab, ModelInputs
from posterkg.gnn.train import TrainConfig, continue_training, refit, refit_inputs, train


def _ratings(n_users=12, n_movies=15, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(1, n_users + 1):
        n = int(rng.integers(10, 15))
        for t, m in enumerate(rng.choice(n_movies, n, replace=False) + 1):
            rows.append((u, int(m), float(rng.choice([1, 2, 3, 4, 5])), 100 * t + int(rng.integers(0, 2))))
    return pd.DataFrame(rows, columns=["user_id", "movie_id", "rating", "ts"]), n_movies


def _inputs(ratings, n_movies, concepts: int = 0):
    data, edges = protocol_data(ratings, n_movies)
    ids = IdVocab(data.user_ids, data.movie_ids, np.arange(concepts) + 100)
    g = Graph(ids.sizes)
    for name, (u, m) in edges.items():
        g.add(name, u, m)
    if concepts:        # each movie shows one or two concepts (the model's concept part: a sparse matrix)
        mv = np.arange(data.n_movies)
        g.add("has", np.concatenate([mv, mv[::2]]), np.concatenate([mv % concepts, (mv[::2] + 1) % concepts]),
              np.linspace(0.5, 1.0, len(mv) + len(mv[::2])).astype(np.float32))
    return ModelInputs(ids, data, g)


def _rows(part):
    return sorted(zip(part.users.tolist(), part.movies.tolist(), part.ratings.tolist(), part.ts.tolist()))


def test_refit_view_moves_valid_into_train_and_keeps_test():
    data = _inputs(*_ratings()).data
    view = data.refit_view()
    assert _rows(view.parts["train"]) == sorted(_rows(data.parts["train"]) + _rows(data.parts["valid"]))
    assert len(view.parts["valid"]) == 0
    assert _rows(view.parts["test"]) == _rows(data.parts["test"])
    # what test is scored from and against does not change
    for a, b in ((view.history("test"), data.history("test")),):
        assert (a.movies == b.movies).all() and (a.users == b.users).all() and (a.ratings == b.ratings).all()
    assert (view.seen("test") != data.seen("test")).nnz == 0
    assert (view.relevant("test") != data.relevant("test")).nnz == 0
    # the training data now include the valid period, in the protocol's order per user
    h = view.history("valid")
    assert len(h) == len(data.parts["train"]) + len(data.parts["valid"])
    for u in range(view.n_users):
        a, b = h.indptr[u], h.indptr[u + 1]
        key = list(zip(h.ts[a:b].tolist(), h.movies[a:b].tolist()))
        assert key == sorted(key)


def test_shifted_view_plays_the_protocol_one_period_earlier():
    ratings, n_movies = _ratings(n_users=20, seed=3)
    data = _inputs(ratings, n_movies).data
    sh = data.shifted_view()
    assert _rows(sh.parts["test"]) == _rows(data.parts["valid"])
    tr = data.parts["train"]
    for u in range(data.n_users):
        rows = sorted((t, m) for uu, m, _, t in _rows(tr) if uu == u)       # the user's train rows, in order
        n = len(rows)
        k = max(1, n // 10) if n >= 10 else 0
        inner_valid = sorted((t, m) for uu, m, _, t in _rows(sh.parts["valid"]) if uu == u)
        inner_train = sorted((t, m) for uu, m, _, t in _rows(sh.parts["train"]) if uu == u)
        assert inner_valid == rows[n - k:]
        assert inner_train == rows[:n - k]
    # valid (playing test) is ranked against the whole train part
    assert (sh.seen("test") != data.seen("valid")).nnz == 0


def test_refit_mostpop_counts_train_and_valid_positives():
    inputs = _inputs(*_ratings())
    first = train(inputs, TrainConfig(model="mostpop"))
    again = refit(inputs, first)
    d = inputs.data
    want = np.zeros(d.n_movies)
    for name in ("train", "valid"):
        p = d.parts[name]
        np.add.at(want, p.movies[p.ratings >= 4], 1.0)
    assert np.allclose(again.model.pop.numpy(), want)
    assert not np.allclose(first.model.pop.numpy(), want)         # the valid positives count now
    assert again.refit and not first.refit


def test_refit_ease_keeps_the_chosen_lambda_and_solves_on_train_plus_valid(capsys):
    inputs = _inputs(*_ratings(seed=1))
    first = train(inputs, TrainConfig(model="ease"), model_cfg=registry.model_config("ease", {"lambdas": [1.0, 30.0]}))
    chosen = first.model.cfg.l2
    capsys.readouterr()
    again = refit(inputs, first, verbose=True)
    assert again.model.cfg.lambdas == [chosen]
    # nothing is validated in a refit: no valid score is recorded or printed (a placeholder
    # would read as a measurement), and the first run's valid figures are the result's
    assert "NDCG@20" not in capsys.readouterr().out
    assert all("valid_ndcg@20" not in r for r in again.history) and again.valid == first.valid
    d = inputs.data
    x = np.zeros((d.n_users, d.n_movies))
    for name in ("train", "valid"):
        p = d.parts[name]
        x[p.users, p.movies] = 1.0
    pinv = np.linalg.inv(x.T @ x + chosen * np.eye(d.n_movies))
    b = -pinv / np.diag(pinv)[None, :]
    np.fill_diagonal(b, 0.0)
    assert np.allclose(again.model.S.numpy(), b, atol=1e-5)


def test_refit_sequence_model_trains_the_chosen_epochs_on_train_plus_valid():
    inputs = _inputs(*_ratings(n_users=16, seed=2))
    kind = "posterkg-seq"
    mcfg = registry.model_config(kind, {"dim": 8, "max_len": 16, "dropout": 0.0})
    cfg = TrainConfig(model=kind, epochs=3, patience=5, batch_size=8, lr=0.01, seed=0)
    first = train(inputs, cfg, model_cfg=mcfg)
    first = dataclasses.replace(first, best_epoch=2)       # as if valid had chosen epoch 2
    again = refit(inputs, first)
    assert len(again.history) == 2 and again.refit
    assert again.best_epoch == 2 and again.valid == first.valid
    # the refit model is the same seed and settings trained for 2 epochs on train + valid: the
    # first model's training on the refit data, by hand, gives the same parameters
    by_hand = train(refit_inputs(inputs), dataclasses.replace(cfg, epochs=2, patience=10 ** 9, eval_every=10 ** 9),
                    model_cfg=mcfg, valid_fn=lambda m: {"ndcg@20": 0.0})
    for (name, a), b in zip(again.model.state_dict().items(), by_hand.model.state_dict().values()):
        assert torch.equal(a, b), name
    # ... and it differs from a model trained on train only for the same 2 epochs
    train_only = train(inputs, dataclasses.replace(cfg, epochs=2, patience=10 ** 9, eval_every=10 ** 9),
                       model_cfg=mcfg, valid_fn=lambda m: {"ndcg@20": 0.0})
    assert not torch.equal(again.model.item.weight, train_only.model.item.weight)


def _seq_first(kind="posterkg-seq", **mc):
    inputs = _inputs(*_ratings(n_users=16, seed=2), concepts=3)
    mcfg = registry.model_config(kind, {"dim": 8, "max_len": 16, "dropout": 0.0, **mc})
    cfg = TrainConfig(model=kind, epochs=3, patience=5, batch_size=8, lr=0.01, seed=0, ema=0.5)
    return inputs, cfg, train(inputs, cfg, model_cfg=mcfg)


def test_continue_trains_the_chosen_state_on_train_plus_valid(capsys):
    inputs, cfg, first = _seq_first(item_item=0.3, item_item_l2=0.0, item_item_lambdas=[1.0, 30.0])
    before = {k: v.clone() for k, v in first.model.state_dict().items()}
    more = continue_training(inputs, first, 2, verbose=True)
    # verbose: one line per extra epoch, and no placeholder valid score printed as a figure
    out = capsys.readouterr().out
    assert out.count("on=train+valid") == 2 and "valid_ndcg" not in out and "NDCG@20 0.0000" not in out
    # first's model is left as it was (the rule works on a copy)
    for k, v in first.model.state_dict().items():
        assert torch.equal(v, before[k]), k
    # one history: first's epochs, then 2 more numbered on, on train + valid, with the valid targets
    n = len(first.history)
    assert more.history[:n] == first.history and len(more.history) == n + 2 and more.continued == 2
    assert [r["epoch"] for r in more.history[n:]] == [first.history[-1]["epoch"] + 1, first.history[-1]["epoch"] + 2]
    assert all(r["on"] == "train+valid" and "valid_ndcg@20" not in r for r in more.history[n:])
    d = inputs.data
    liked = lambda parts: sum(int(((d.parts[p].ratings >= 4)).sum()) for p in parts)
    # every liked rating after a user's first is a target (windows are longer than any history)
    users = lambda parts: len(set(np.concatenate([d.parts[p].users for p in parts]).tolist()))
    assert first.history[0]["targets"] <= liked(["train"])
    assert more.history[-1]["targets"] > first.history[0]["targets"]
    assert more.history[-1]["targets"] >= liked(["train", "valid"]) - users(["train", "valid"])
    assert more.best_epoch == first.best_epoch and more.valid == first.valid
    # the same as going on by hand from the chosen state; not the same as a model from scratch
    chosen = registry.build(cfg.model, inputs, dataclasses.replace(first.model.cfg), seed=0)
    chosen.load_state_dict(before)
    by_hand = train(refit_inputs(inputs), dataclasses.replace(cfg, epochs=2, patience=10 ** 9, eval_every=10 ** 9),
                    model=chosen, valid_fn=lambda m: {"ndcg@20": 0.0})
    fresh = train(refit_inputs(inputs), dataclasses.replace(cfg, epochs=2, patience=10 ** 9, eval_every=10 ** 9),
                  model_cfg=first.model.cfg, valid_fn=lambda m: {"ndcg@20": 0.0})
    for (name, a), b in zip(more.model.state_dict().items(), by_hand.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert not torch.equal(more.model.item.weight, fresh.model.item.weight)
    assert not torch.equal(more.model.item.weight, first.model.item.weight)
    # the collaborative part keeps its weight and lambda, its EASE matrix solved on train + valid
    assert more.model.cfg.item_item == 0.3 and more.model.cfg.item_item_l2 == first.model.cfg.item_item_l2 > 0
    x = np.zeros((d.n_users, d.n_movies))
    for name in ("train", "valid"):
        x[d.parts[name].users, d.parts[name].movies] = 1.0
    l2 = more.model.cfg.item_item_l2
    pinv = np.linalg.inv(x.T @ x + l2 * np.eye(d.n_movies))
    b = -pinv / np.diag(pinv)[None, :]
    np.fill_diagonal(b, 0.0)
    assert np.allclose(more.model.ii_S.numpy(), b, atol=1e-5)


def test_continue_ease_is_its_refit_with_the_chosen_lambda():
    inputs = _inputs(*_ratings(seed=1))
    first = train(inputs, TrainConfig(model="ease"), model_cfg=registry.model_config("ease", {"lambdas": [1.0, 30.0]}))
    more = continue_training(inputs, first, 2)
    assert more.model.cfg.lambdas == [first.model.cfg.l2] and more.model.cfg.l2 == first.model.cfg.l2
    assert torch.allclose(more.model.S, refit(inputs, first).model.S)
    assert not torch.allclose(more.model.S, first.model.S)


def test_continue_mostpop_is_its_refit_and_refit_excludes_continue():
    from posterkg.errors import ConfigError

    inputs = _inputs(*_ratings())
    first = train(inputs, TrainConfig(model="mostpop"))
    more = continue_training(inputs, first, 3)
    assert torch.equal(more.model.pop, refit(inputs, first).model.pop) and more.continued == 3 and not more.refit
    with pytest.raises(ConfigError, match="set one"):
        TrainConfig(model="mostpop", refit=True, continue_epochs=2).validate()
    with pytest.raises(ConfigError, match="continue_epochs"):
        TrainConfig(model="mostpop", continue_epochs=-1).validate()
    with pytest.raises(ConfigError, match=">= 1"):
        continue_training(inputs, first, 0)


def test_refit_inputs_graph_has_the_valid_edges():
    inputs = _inputs(*_ratings())
    ri = refit_inputs(inputs)
    d = inputs.data
    pos = ri.graph.get("pos")
    got = sorted(zip(pos.src.tolist(), pos.dst.tolist()))
    want = sorted((int(u), int(m)) for name in ("train", "valid")
                  for u, m, r in zip(d.parts[name].users, d.parts[name].movies, d.parts[name].ratings) if r >= 4)
    assert got == want


def test_weight_average_is_the_exponential_average_and_swaps_back():
    from posterkg.gnn.train import WeightAverage

    lin = torch.nn.Linear(3, 2)
    w0 = lin.weight.detach().clone()
    avg = WeightAverage(lin, 0.8)
    want = w0.clone()
    for step in range(4):
        with torch.no_grad():
            lin.weight.add_(float(step + 1))              # a "step" of the optimizer
        avg.update()
        want = 0.8 * want + 0.2 * lin.weight.detach()     # by hand
    live = lin.weight.detach().clone()
    with avg.swapped():
        assert torch.allclose(lin.weight, want, atol=1e-6)
    assert torch.equal(lin.weight, live)


def test_ema_training_keeps_the_averaged_weights():
    inputs = _inputs(*_ratings(n_users=16, seed=2))
    kind = "sasrec"
    mcfg = registry.model_config(kind, {"dim": 8, "max_len": 16, "dropout": 0.0})
    cfg = TrainConfig(model=kind, epochs=2, patience=5, batch_size=8, lr=0.05, seed=0)
    seen = {}

    def spy(m):                                     # what validation sees with ema on
        seen["w"] = m.item.weight.detach().clone()
        return {"ndcg@20": 0.0}

    ema = train(inputs, dataclasses.replace(cfg, ema=0.5, epochs=1), model_cfg=mcfg, valid_fn=spy)
    one = train(inputs, dataclasses.replace(cfg, epochs=1), model_cfg=mcfg, valid_fn=lambda m: {"ndcg@20": 0.0})
    # validation saw the average, not the live weights of the same run (equal to the plain run's)
    assert not torch.allclose(seen["w"], one.model.item.weight)
    assert torch.equal(ema.model.item.weight, seen["w"])    # and the average is what is kept


def test_cosine_lr_schedule_falls_to_zero_over_the_whole_budget():
    """[gnn] lr_schedule = "cosine": the optimizer's lr, seen by every step of a real training
    run, follows a half cosine from lr to 0 over epochs x steps per epoch; "constant" leaves it."""
    from posterkg.errors import ConfigError
    from posterkg.gnn.train import lr_scheduler

    inputs = _inputs(*_ratings(n_users=16, seed=2))
    kind = "sasrec"
    mcfg = registry.model_config(kind, {"dim": 8, "max_len": 16, "dropout": 0.0})
    cfg = TrainConfig(model=kind, epochs=3, patience=5, batch_size=4, lr=0.05, seed=0)
    seen = {}
    orig = torch.optim.Adam.step

    def spy(self, *a, **k):                           # the lr each optimizer step runs with
        seen.setdefault(cfg.lr_schedule, []).append(self.param_groups[0]["lr"])
        return orig(self, *a, **k)

    torch.optim.Adam.step = spy
    try:
        train(inputs, cfg, model_cfg=mcfg, valid_fn=lambda m: {"ndcg@20": 0.0})
        cfg = dataclasses.replace(cfg, lr_schedule="cosine")
        train(inputs, cfg, model_cfg=mcfg, valid_fn=lambda m: {"ndcg@20": 0.0})
    finally:
        torch.optim.Adam.step = orig
    const, cos = np.array(seen["constant"]), np.array(seen["cosine"])
    assert len(cos) == len(const) and len(cos) >= 6 and len(cos) % 3 == 0
    assert np.allclose(const, 0.05)
    total = len(cos)
    want = 0.05 * 0.5 * (1 + np.cos(np.pi * np.arange(total) / total))
    assert np.allclose(cos, want, atol=1e-9)
    assert cos[0] == 0.05 and cos[-1] < 0.05 * 0.05 and (np.diff(cos) < 0).all()
    opt = torch.optim.Adam(torch.nn.Linear(2, 2).parameters(), lr=1.0)
    assert lr_scheduler(opt, "constant", 10) is None
    # a warm-up: linear from lr / 4 towards lr over 4 steps, then the cosine from lr over the 6 left
    lrs = []
    sched = lr_scheduler(opt, "cosine", 10, warmup=4)
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    want = [0.25 + 0.75 * i / 4 for i in range(4)] + [0.5 * (1 + np.cos(np.pi * i / 6)) for i in range(6)]
    assert np.allclose(lrs, want, atol=1e-9), lrs
    opt = torch.optim.Adam(torch.nn.Linear(2, 2).parameters(), lr=1.0)
    sched = lr_scheduler(opt, "constant", 10, warmup=2)
    got = []
    for _ in range(4):
        got.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert np.allclose(got, [0.5, 0.75, 1.0, 1.0])
    with pytest.raises(ConfigError, match="lr_schedule"):
        TrainConfig(model=kind, lr_schedule="step").validate()


def test_views_and_scoring_shortcut_on_real_movielens(ml1m_db):
    """../shared ML-1M: the refit view keeps what test is scored from and against; the shifted
    view's inner valid follows the protocol's sizes; SASRec's batched, trimmed, last-position
    scoring equals the plain path for real histories (up to the 200-rating window)."""
    from posterkg.gnn.data import load_interactions
    from posterkg.gnn.sequential import _windows
    from posterkg.store import open_store

    with open_store(ml1m_db, read_only=True) as store:
        data = load_interactions(store)
    view = data.refit_view()
    assert len(view.parts["train"]) == len(data.parts["train"]) + len(data.parts["valid"])
    assert (view.seen("test") != data.seen("test")).nnz == 0
    assert np.array_equal(view.history("test").movies, data.history("test").movies)
    sh = data.shifted_view()
    n = np.bincount(data.parts["train"].users, minlength=data.n_users)
    want = np.where(n >= 10, np.maximum(1, n // 10), 0)
    assert np.array_equal(np.bincount(sh.parts["valid"].users, minlength=data.n_users), want)

    ids = IdVocab(data.user_ids, data.movie_ids)
    m = registry.build("sasrec", ModelInputs(ids, data, None),
                       registry.model_config("sasrec", {"dim": 16, "inputs": "all"}), seed=0).eval()
    hist = data.history("test")
    users = torch.from_numpy(np.random.default_rng(0).choice(data.n_users, 300, replace=False))
    with torch.no_grad():
        table = m.movie_table(None)
        tok, sgn = _windows(hist, users.numpy(), m.cfg.max_len, False)
        want_s = m.user_states(torch.from_numpy(tok), torch.from_numpy(sgn), table)[:, -1] @ table.T
        got = m.score(users, hist)
    assert (tok > 0).sum(1).max() == m.cfg.max_len            # some histories fill the window
    assert torch.allclose(got, want_s, atol=1e-5)


def test_refit_ease_on_real_movielens(ml1m_db):
    """../shared ML-1M: the refit rule trained for real (EASE: closed form, seconds): the chosen
    lambda is kept, the item weights are EASE's on train + valid (checked on a slice against
    numpy), and the refit model is scored on test from the same history as fold-in."""
    from posterkg.gnn.data import load_interactions
    from posterkg.gnn.evaluate import evaluate_model
    from posterkg.store import open_store

    with open_store(ml1m_db, read_only=True) as store:
        data = load_interactions(store)
    inputs = ModelInputs(IdVocab(data.user_ids, data.movie_ids), data, None)
    first = train(inputs, TrainConfig(model="ease"), model_cfg=registry.model_config("ease", {"lambdas": [200.0, 800.0]}))
    chosen = first.model.cfg.l2
    again = refit(inputs, first)
    assert again.refit and again.model.cfg.lambdas == [chosen] and again.valid == first.valid
    x = np.zeros((data.n_users, data.n_movies), np.float64)
    for name in ("train", "valid"):
        p = data.parts[name]
        x[p.users, p.movies] = 1.0
    pinv = np.linalg.inv(x.T @ x + chosen * np.eye(data.n_movies))
    cols = np.arange(0, data.n_movies, 97)
    b = -pinv[:, cols] / np.diag(pinv)[None, cols]
    b[cols, np.arange(len(cols))] = 0.0
    assert np.allclose(again.model.S.numpy()[:, cols], b, atol=1e-4)
    fold, ref = evaluate_model(first.model, data, "test"), evaluate_model(again.model, data, "test")
    assert fold["n_users"] == ref["n_users"] > 2000
    assert ref["ndcg@20"] != fold["ndcg@20"] and 0.05 < ref["ndcg@20"] < 0.3
