"""Training: mini-batched BPR with full-graph propagation, early stopping on valid NDCG@20.

One loop for every model (:mod:`posterkg.gnn.baselines` and :mod:`posterkg.gnn.model`). Each
epoch visits every train positive (rating >= 4) once in random order; each (user, positive) pair
gets one negative sampled uniformly from the catalogue (re-drawn when it is one of the user's
train positives) and, for models that ask for them, one *hard* negative: a movie the user rated
<= 2 in train. Each mini-batch runs the model's full-graph propagation (sparse CSR products), the
BPR loss, the L2 regulariser and the model's own terms (:mod:`posterkg.gnn.losses`).

After every ``eval_every`` epochs the model is evaluated on the valid part (the fixed protocol of
:mod:`posterkg.gnn.evaluate`); the best state by valid NDCG@20 is kept and training stops after
``patience`` evaluations without improvement. Deterministic under ``seed`` on one device and
thread count (torch and numpy generators are seeded; the sparse kernels are deterministic on CPU).

Config section ``[gnn]`` (:class:`TrainConfig`); the posterkg model's switches live in
``[gnn_model]`` (:class:`posterkg.gnn.model.ModelConfig`).
"""

from __future__ import annotations

import copy
import dataclasses
import time
from typing import Any

import numpy as np
import torch

from posterkg.errors import ConfigError
from posterkg.gnn import losses
from posterkg.gnn.baselines import BPRMF, LightGCN, MostPop, Recommender, genre_edges
from posterkg.gnn.data import Interactions
from posterkg.gnn.evaluate import evaluate
from posterkg.progress import bar

MODELS = ("posterkg", "posterkg-novisual", "mostpop", "bprmf", "lightgcn", "lightgcn-genre")


@dataclasses.dataclass
class TrainConfig:
    model: str = "posterkg"        # one of MODELS
    seed: int = 0
    device: str = "cpu"            # "cpu", "cuda", "cuda:1", ...
    dim: int = 64                  # embedding size
    layers: int = 3                # LightGCN propagation layers (baselines)
    epochs: int = 40               # upper bound; early stopping usually ends sooner
    batch_size: int = 16384        # BPR pairs per step (one full-graph propagation per step)
    lr: float = 0.02               # with batch_size 16384; chosen on ML-1M valid NDCG@20 (docs/gnn.md)
    reg: float = 1e-4              # L2 on the batch's ego embeddings
    eval_every: int = 1            # epochs between valid evaluations
    patience: int = 5              # evaluations without a better valid NDCG@20 before stopping
    eval_batch_size: int = 1024
    threads: int = 0               # torch intra-op threads; 0 = torch's default
    baselines: list = dataclasses.field(default_factory=list)   # pipeline: also train these kinds

    def validate(self) -> None:
        for kind in [self.model, *self.baselines]:
            if kind not in MODELS:
                raise ConfigError(f"[gnn] model {kind!r} is unknown; choose from {', '.join(MODELS)}")
        for name in ("dim", "epochs", "batch_size", "eval_every", "patience"):
            if getattr(self, name) < 1:
                raise ConfigError(f"[gnn] {name} must be >= 1")


@dataclasses.dataclass
class TrainResult:
    model: Recommender
    config: TrainConfig
    history: list[dict[str, Any]]
    best_epoch: int
    valid: dict[str, float]
    seconds_per_epoch: float
    seconds: float

    @property
    def epochs_run(self) -> int:
        return len([h for h in self.history if "loss" in h])


def build_model(cfg: TrainConfig, data: Interactions, *, store=None, graph=None,
                model_cfg=None) -> Recommender:
    """Instantiate ``cfg.model``. ``store`` is needed for ``lightgcn-genre`` (genres) and, for the
    posterkg models when ``graph`` is not given, to read the knowledge graph."""
    torch.manual_seed(cfg.seed)
    kind = cfg.model
    if kind == "mostpop":
        return MostPop(data)
    if kind == "bprmf":
        return BPRMF(data, cfg.dim)
    if kind == "lightgcn":
        return LightGCN(data, cfg.dim, cfg.layers)
    if kind == "lightgcn-genre":
        if store is None:
            raise ConfigError("lightgcn-genre needs the database (movies.genres)")
        m, g, names = genre_edges(store, data)
        return LightGCN(data, cfg.dim, cfg.layers, extra=(m, g, len(names)))
    from posterkg.gnn.model import ModelConfig, PosterKG, graph_inputs

    mcfg = model_cfg or ModelConfig()
    if graph is None:
        if store is None:
            raise ConfigError(f"{kind} needs the database or a GraphInputs")
        graph = graph_inputs(store, data)
    if kind == "posterkg-novisual":
        graph = graph.without_concepts()
        mcfg = dataclasses.replace(mcfg, item_side=False, user_side=False)
    torch.manual_seed(cfg.seed)
    model = PosterKG(data, graph, mcfg, dim=cfg.dim)
    model.kind = kind
    return model


class PairSampler:
    """Epoch-wise (user, positive, negative[, hard negative]) index batches, seeded."""

    def __init__(self, data: Interactions, seed: int, hard: bool = False):
        self.rng = np.random.default_rng(seed)
        pos = data.train_pos.tocoo()
        self.users = pos.row.astype(np.int64)
        self.pos = pos.col.astype(np.int64)
        self.n_movies = data.n_movies
        self.keys = np.sort(self.users * self.n_movies + self.pos)
        self.hard = hard
        neg = data.train_neg
        self.neg_ptr, self.neg_idx = neg.indptr.astype(np.int64), neg.indices.astype(np.int64)

    def __len__(self) -> int:
        return len(self.users)

    def _is_pos(self, u: np.ndarray, j: np.ndarray) -> np.ndarray:
        k = u * self.n_movies + j
        at = np.minimum(np.searchsorted(self.keys, k), len(self.keys) - 1)
        return self.keys[at] == k

    def epoch(self, batch_size: int):
        order = self.rng.permutation(len(self.users))
        for start in range(0, len(order), batch_size):
            sel = order[start:start + batch_size]
            u, p = self.users[sel], self.pos[sel]
            n = self.rng.integers(0, self.n_movies, len(sel))
            for _ in range(5):
                bad = self._is_pos(u, n)
                if not bad.any():
                    break
                n[bad] = self.rng.integers(0, self.n_movies, int(bad.sum()))
            batch = {"users": torch.from_numpy(u), "pos": torch.from_numpy(p), "neg": torch.from_numpy(n)}
            if self.hard:
                deg = self.neg_ptr[u + 1] - self.neg_ptr[u]
                has = deg > 0
                pick = self.neg_ptr[u] + (self.rng.random(len(u)) * np.maximum(deg, 1)).astype(np.int64)
                if len(self.neg_idx):
                    hard = np.where(has, self.neg_idx[np.minimum(pick, len(self.neg_idx) - 1)], 0)
                else:
                    hard = np.zeros(len(u), np.int64)
                batch["hard"] = torch.from_numpy(hard.astype(np.int64))
                batch["hard_mask"] = torch.from_numpy(has)
            yield batch


def _score_fn(model: Recommender, emb):
    return lambda users: model.score(users, emb)


def train(data: Interactions, cfg: TrainConfig, *, store=None, graph=None, model_cfg=None,
          model: Recommender | None = None, verbose: bool = False) -> TrainResult:
    """Train ``cfg.model`` (or the given ``model``) with early stopping; return the best state."""
    cfg.validate()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"[gnn] device = {cfg.device!r} but torch sees no CUDA device")
    t_start = time.perf_counter()
    if model is None:
        model = build_model(cfg, data, store=store, graph=graph, model_cfg=model_cfg)
    model = model.to(device)
    history: list[dict[str, Any]] = []
    if not model.trainable:
        model.eval()
        with torch.no_grad():
            emb = model.embeddings()
            valid = evaluate(_score_fn(model, emb), data, "valid", device=device,
                             batch_size=cfg.eval_batch_size)
        history.append({"epoch": 0, "valid_ndcg@20": valid["ndcg@20"]})
        return TrainResult(model, cfg, history, 0, valid, 0.0, time.perf_counter() - t_start)

    torch.manual_seed(cfg.seed)
    sampler = PairSampler(data, cfg.seed, hard=getattr(model, "wants_hard_negatives", False))
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    best, best_state, best_epoch, best_valid, stale = -1.0, None, 0, {}, 0
    train_seconds = 0.0
    n_batches = (len(sampler) + cfg.batch_size - 1) // cfg.batch_size
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        t0 = time.perf_counter()
        totals: dict[str, float] = {}
        for batch in bar(sampler.epoch(cfg.batch_size), total=n_batches, desc=f"{model.kind} epoch {epoch}",
                         unit="batch", disable=not verbose or None):
            batch = {k: v.to(device) for k, v in batch.items()}
            emb = model.embeddings()
            u, m = emb[0], emb[1]
            terms = {"bpr": losses.bpr(u[batch["users"]], m[batch["pos"]], m[batch["neg"]])}
            terms["reg"] = cfg.reg * model.reg_loss(batch["users"], batch["pos"], batch["neg"])
            terms.update(model.extra_loss(batch, emb))
            loss = sum(terms.values())
            opt.zero_grad()
            loss.backward()
            opt.step()
            for k, v in terms.items():
                totals[k] = totals.get(k, 0.0) + float(v.detach()) / n_batches
        train_seconds += time.perf_counter() - t0
        row: dict[str, Any] = {"epoch": epoch, "loss": sum(totals.values()), **totals,
                               "seconds": time.perf_counter() - t0}
        if epoch % cfg.eval_every == 0 or epoch == cfg.epochs:
            model.eval()
            with torch.no_grad():
                emb = model.embeddings()
                valid = evaluate(_score_fn(model, emb), data, "valid", device=device,
                                 batch_size=cfg.eval_batch_size)
            row["valid_ndcg@20"] = valid["ndcg@20"]
            if valid["ndcg@20"] > best:
                best, best_epoch, best_valid, stale = valid["ndcg@20"], epoch, valid, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                stale += 1
        history.append(row)
        if verbose:
            print("  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
                  flush=True)
        if stale >= cfg.patience:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    epochs_run = len(history)
    return TrainResult(model, cfg, history, best_epoch, best_valid,
                       train_seconds / max(epochs_run, 1), time.perf_counter() - t_start)


def train_and_store(store, data: Interactions, cfg: TrainConfig, model_cfg=None, *, graph=None,
                    verbose: bool = False, model_id: str | None = None) -> tuple[str, TrainResult, dict]:
    """Train ``cfg.model``, evaluate it on test, store it (models + eval_results); return
    (model_id, result, test metrics)."""
    from posterkg.gnn.api import save_model

    res = train(data, cfg, store=store, graph=graph, model_cfg=model_cfg, verbose=verbose)
    with torch.no_grad():
        emb = res.model.embeddings()
        test = evaluate(_score_fn(res.model, emb), data, "test", device=torch.device(cfg.device),
                        batch_size=cfg.eval_batch_size)
    mid = save_model(store, res, model_cfg=model_cfg, test=test, model_id=model_id)
    return mid, res, test
