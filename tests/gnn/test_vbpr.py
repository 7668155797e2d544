"""VBPR (posterkg/gnn/vbpr.py): the score is the paper's formula, computed here by hand in numpy;
a movie nobody rated scores from its feature; and on a hand-made world whose users like one
feature direction (or its opposite), cold movies with the liked direction rank above random,
without any retraining."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from torch_threads import one_torch_thread  # noqa: F401
from posterkg.evaluation.coldstart import coldstart_eval, random_scores
from posterkg.gnn import registry
from posterkg.gnn.base import Graph, IdVocab, ModelInputs
from posterkg.gnn.data import from_frames
from posterkg.gnn.train import TrainConfig, train


def _inputs(ratings: pd.DataFrame, split: pd.DataFrame, n_movies: int, feats: dict, masks: dict) -> ModelInputs:
    data = from_frames(ratings, split, movie_ids=np.arange(1, n_movies + 1))
    ids = IdVocab(data.user_ids, data.movie_ids)
    return ModelInputs(ids, data, Graph(ids.sizes), feats, masks)


def _small_world(seed: int = 0):
    """6 users, 8 movies (movies 7 and 8 have no train rating), a 5-d poster and 3-d text
    feature; movie 6 has no poster vector."""
    rng = np.random.default_rng(seed)
    rows = [(u, m, float(rng.integers(1, 6))) for u in range(1, 7) for m in range(1, 7) if (u + m) % 3]
    ratings = pd.DataFrame(rows, columns=["user_id", "movie_id", "rating"])
    ratings["ts"] = np.arange(len(ratings))
    split = ratings[["user_id", "movie_id"]].assign(part="train")
    split.loc[split.groupby("user_id").head(1).index, "part"] = "test"
    # movies 7 and 8: test ratings only (cold)
    extra = pd.DataFrame([(1, 7, 5.0, 1000), (2, 8, 4.0, 1001)], columns=["user_id", "movie_id", "rating", "ts"])
    ratings = pd.concat([ratings, extra], ignore_index=True)
    split = pd.concat([split, extra[["user_id", "movie_id"]].assign(part="test")], ignore_index=True)
    poster = rng.normal(size=(8, 5)).astype(np.float32) * 3 + 1
    pmask = np.ones(8, bool)
    pmask[5] = False
    poster[5] = 0.0
    text = rng.normal(size=(8, 3)).astype(np.float32)
    return _inputs(ratings, split, 8, {"poster": poster, "text": text}, {"poster": pmask, "text": np.ones(8, bool)})


def _by_hand_std(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    out = np.zeros_like(x, dtype=np.float64)
    rows = x[mask].astype(np.float64)
    out[mask] = (rows - rows.mean(0)) / rows.std(0)
    return out


def _randomise(model, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("features", [["poster"], ["poster", "text"]])
def test_score_is_the_vbpr_formula(features):
    inputs = _small_world()
    cfg = registry.model_config("vbpr", {"dim": 4, "visual_dim": 3, "features": features})
    model = registry.build("vbpr", inputs, cfg).eval()
    _randomise(model)                      # beta is zero at init: make every term count
    f = np.concatenate([_by_hand_std(inputs.features[n], inputs.feature_mask[n]) for n in features], 1)
    gu = model.user.weight.detach().double().numpy()
    gi = model.movie.weight.detach().double().numpy()
    th = model.theta.weight.detach().double().numpy()
    E = model.E.weight.detach().double().numpy()            # [visual_dim, D]
    beta = model.beta.weight.detach().double().numpy()[0]   # [D]
    warm = np.isin(np.arange(8), inputs.data.parts["train"].movies)   # movies with a train rating
    assert not warm[6] and not warm[7] and warm.sum() >= 4
    expected = (gu @ (gi * warm[:, None]).T) + th @ (f @ E.T).T + (f @ beta)[None, :]
    got = model.score(torch.arange(inputs.n_users)).double().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    # the embeddings' dot product is that score too (what the BPR loop trains)
    u, m = model.embeddings(None)
    np.testing.assert_allclose((u @ m.T).detach().double().numpy(), expected, rtol=1e-4, atol=1e-4)
    # the movie without a poster vector has a zero poster block
    assert np.all(f[5, :5] == 0)


def test_cold_movie_scores_from_its_feature_alone():
    inputs = _small_world()
    model = registry.build("vbpr", inputs, registry.model_config("vbpr", {"dim": 4, "visual_dim": 3})).eval()
    _randomise(model)
    users = torch.arange(inputs.n_users)
    before = model.score(users).clone()
    cold = 6                                               # movie 7: no train rating
    warm = int(inputs.data.parts["train"].movies[0])       # a movie with train ratings
    with torch.no_grad():
        model.movie.weight[cold] += 100.0                  # its id factor is never used
        model.movie.weight[warm] += 1.0
    model.train(False)                                     # drop the cached embeddings
    after = model.score(users)
    torch.testing.assert_close(after[:, cold], before[:, cold])
    assert not torch.allclose(after[:, warm], before[:, warm])
    parts = model.score_parts(users, torch.tensor([cold]))
    assert torch.all(parts["id"] == 0)
    torch.testing.assert_close(parts["visual"] + parts["bias"], before[:, [cold]], rtol=1e-5, atol=1e-5)
    # while training, the cold movie is unknown: a zero row, so its feature is not learnt against
    model.train()
    _, rows = model.embeddings(None)
    assert torch.all(rows[cold] == 0) and torch.any(rows[warm] != 0)
    model.eval()
    # a different poster feature gives a different score: the feature is what scores it
    with torch.no_grad():
        model.feat[cold] = -model.feat[cold]
    model.train(False)
    assert not torch.allclose(model.score(users)[:, cold], before[:, cold])


def _planted_world(seed: int = 0):
    """40 warm and 20 cold movies with an 8-d poster feature; half the users like movies whose
    feature points along dimension 0 (and dislike the others), half the opposite. Cold movies
    have test ratings only."""
    rng = np.random.default_rng(seed)
    n_warm, n_cold, n_users = 40, 20, 30
    n = n_warm + n_cold
    f = rng.normal(size=(n, 8)).astype(np.float32)
    f[:, 0] = np.where(np.arange(n) % 2 == 0, 1.0, -1.0) * (1.0 + rng.random(n))
    rows, parts = [], []
    for u in range(1, n_users + 1):
        sign = 1.0 if u <= n_users // 2 else -1.0
        warm = rng.permutation(n_warm)[:30]
        for k, m in enumerate(warm):
            rows.append((u, m + 1, 5.0 if sign * f[m, 0] > 0 else 1.0, k))
            parts.append("train" if k < 26 else "valid")
        for k, m in enumerate(range(n_warm, n)):
            rows.append((u, m + 1, 5.0 if sign * f[m, 0] > 0 else 1.0, 100 + k))
            parts.append("test")
    ratings = pd.DataFrame(rows, columns=["user_id", "movie_id", "rating", "ts"])
    split = ratings[["user_id", "movie_id"]].assign(part=parts)
    return _inputs(ratings, split, n, {"poster": f}, {"poster": np.ones(n, bool)}), f, n_warm


def test_cold_movies_with_the_liked_feature_rank_above_random():
    inputs, f, n_warm = _planted_world()
    cfg = TrainConfig(model="vbpr", dim=8, epochs=60, batch_size=128, lr=0.05, patience=60, reg=1e-4,
                      eval_batch_size=64, seed=0, threads=1)
    res = train(inputs, cfg, model_cfg=registry.model_config("vbpr", {"dim": 8, "visual_dim": 4}))
    model = res.model.eval()
    users = torch.arange(inputs.n_users)
    # trained on warm movies only: the cold ones have no train rating
    assert not np.isin(np.arange(n_warm, len(f)), inputs.data.parts["train"].movies).any()
    got = coldstart_eval(lambda u: model.score(u), inputs.data, "test")
    floor = np.mean([coldstart_eval(random_scores(inputs.n_movies, s), inputs.data, "test")["ndcg@10"]
                     for s in range(5)])
    assert got["n_users"] == inputs.n_users and got["n_candidates"] == len(f) - n_warm
    assert got["ndcg@10"] > floor + 0.25, (got, floor)
    assert got["ndcg@10"] > 0.9, got
    # per user: each liked cold movie above each disliked one in most pairs (AUC), both groups
    s = model.score(users).numpy()[:, n_warm:]
    liked = np.array([[(1 if u < 15 else -1) * f[m, 0] > 0 for m in range(n_warm, len(f))]
                      for u in range(inputs.n_users)])
    auc = [np.mean(s[u, liked[u]][:, None] > s[u, ~liked[u]][None, :]) for u in range(inputs.n_users)]
    auc = np.asarray(auc)
    assert auc[:15].mean() > 0.85 and auc[15:].mean() > 0.85, auc
    assert (auc > 0.75).mean() >= 0.9, auc
    # the id part of every cold score is zero: the ranking comes from the poster feature
    parts = model.score_parts(users, torch.arange(n_warm, len(f)))
    assert torch.all(parts["id"] == 0)


def test_train_selects_the_epoch_a_custom_valid_fn_prefers():
    """``train(valid_fn=...)`` (the cold-start benchmark's model selection): early stopping reads
    the given function, called in eval mode without gradients, and the best epoch's state and
    figures come back."""
    inputs = _small_world()
    marks = iter([0.1, 0.3, 0.2, 0.15, 0.12, 0.11])
    seen, states = [], []

    def valid_fn(m):
        seen.append((m.training, torch.is_grad_enabled()))
        states.append({k: v.clone() for k, v in m.state_dict().items()})
        return {"ndcg@20": next(marks), "n": len(seen)}

    cfg = TrainConfig(model="vbpr", dim=4, epochs=6, batch_size=8, lr=0.05, patience=3, seed=0, threads=1)
    res = train(inputs, cfg, model_cfg=registry.model_config("vbpr", {"dim": 4, "visual_dim": 2}),
                valid_fn=valid_fn)
    assert seen and all(s == (False, False) for s in seen)
    assert res.best_epoch == 2 and res.valid == {"ndcg@20": 0.3, "n": 2}
    assert len(seen) == 5                                   # 3 evaluations without a gain after epoch 2
    best = states[1]
    for k, v in res.model.state_dict().items():
        assert torch.equal(v, best[k]), k


def test_min_epochs_keeps_training_through_an_early_plateau():
    """``min_epochs``: patience cannot end training before that epoch (a sequence model's first
    epochs sit at popularity level); the best epoch is still the one restored."""
    inputs = _small_world()
    marks = [0.2, 0.1, 0.1, 0.1, 0.1, 0.3, 0.25, 0.2, 0.2, 0.2, 0.2]

    def run(min_epochs):
        it = iter(marks)
        cfg = TrainConfig(model="vbpr", dim=4, epochs=len(marks), batch_size=8, lr=0.05, patience=3,
                          min_epochs=min_epochs, seed=0, threads=1)
        return train(inputs, cfg, model_cfg=registry.model_config("vbpr", {"dim": 4, "visual_dim": 2}),
                     valid_fn=lambda m: {"ndcg@20": next(it)})

    plain = run(0)
    assert (plain.best_epoch, plain.epochs_run) == (1, 4)        # stopped in the plateau
    assert (run(5).best_epoch, run(5).epochs_run) == (1, 5)      # may stop at epoch 5, not before
    held = run(6)
    assert (held.best_epoch, held.epochs_run) == (6, 9)          # took off at 6, 3 stale after it
    assert held.valid == {"ndcg@20": 0.3}
    with pytest.raises(Exception, match="min_epochs"):
        TrainConfig(min_epochs=-1).validate()


def test_eval_from_skips_the_first_evaluations_only():
    """``eval_from``: no valid evaluation before that epoch (they only train); from there on the
    run is the one that evaluates every epoch, when its best epoch comes at or after it."""
    inputs = _small_world()
    marks = [0.05, 0.1, 0.12, 0.3, 0.25, 0.2, 0.2, 0.2, 0.2]

    def run(eval_from):
        seen = []
        cfg = TrainConfig(model="vbpr", dim=4, epochs=len(marks), batch_size=8, lr=0.05, patience=3,
                          eval_from=eval_from, seed=0, threads=1)

        def valid_fn(m):
            seen.append(len(seen))
            return {"ndcg@20": marks[len(seen) - 1 + (eval_from - 1)]}
        res = train(inputs, cfg, model_cfg=registry.model_config("vbpr", {"dim": 4, "visual_dim": 2}),
                    valid_fn=valid_fn)
        return res, len(seen)

    every, n_every = run(1)
    late, n_late = run(3)
    assert (every.best_epoch, every.epochs_run, n_every) == (4, 7, 7)
    assert (late.best_epoch, late.epochs_run, n_late) == (4, 7, 5)          # epochs 1-2 not evaluated
    assert ["valid_ndcg@20" in h for h in late.history] == [False, False] + [True] * 5
    for k, v in late.model.state_dict().items():                            # the same epoch-4 state
        assert torch.equal(v, every.model.state_dict()[k]), k
    with pytest.raises(Exception, match="eval_from"):
        TrainConfig(eval_from=0).validate()
