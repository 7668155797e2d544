"""Trained models in the database, and the Python API other areas use.

Tables (component ``gnn``):

* ``models(model_id, kind, config JSON, seed, created_at, state BLOB, metrics JSON)``: one row per
  trained model; ``state`` is the ``state_dict`` saved with ``torch.save`` to bytes; ``config``
  holds the ``[gnn]`` and ``[gnn_model]`` settings it was trained with; ``metrics`` the valid and
  test results, best epoch and seconds per epoch. The default id is ``<kind>-seed<seed>``, so
  training the same kind and seed again replaces it.
* ``eval_results(model_id, kind, seed, part, metric, k, value)``: one row per metric
  (``recall``/``ndcg``/``coverage`` at k) and part (``valid``/``test``).
* ``recommendations(model_id, user_id, movie_id, rank, score)``: written by
  ``posterkg recommend --all``.

:func:`load_model` returns a :class:`TrainedModel`: ``score``, ``recommend`` (excluding the user's
train and valid movies), ``movie_embeddings``, ``bundle`` (the graphs stage's ``GraphBundle``) and
``rescore`` (scores under a modified bundle, for edge-deletion explanations).
"""

from __future__ import annotations

import copy
import dataclasses
import io
import json
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from posterkg.errors import InputError, PosterkgError
from posterkg.gnn.baselines import LightGCN
from posterkg.gnn.data import Interactions, load_interactions
from posterkg.gnn.train import TrainConfig, TrainResult, build_model
from posterkg.store import Store

MIGRATIONS = [
    """CREATE TABLE IF NOT EXISTS models (
        model_id VARCHAR PRIMARY KEY, kind VARCHAR, config JSON, seed INTEGER,
        created_at TIMESTAMP DEFAULT current_timestamp, state BLOB, metrics JSON)""",
    """CREATE TABLE IF NOT EXISTS eval_results (
        model_id VARCHAR, kind VARCHAR, seed INTEGER, part VARCHAR, metric VARCHAR, k INTEGER,
        value DOUBLE, PRIMARY KEY (model_id, part, metric, k))""",
    """CREATE TABLE IF NOT EXISTS recommendations (
        model_id VARCHAR, user_id INTEGER, movie_id INTEGER, rank INTEGER, score DOUBLE,
        PRIMARY KEY (model_id, user_id, rank))""",
]


def ensure_tables(store: Store) -> None:
    store.migrate("gnn", MIGRATIONS)


def state_to_bytes(model: torch.nn.Module) -> bytes:
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buf)
    return buf.getvalue()


def save_model(store: Store, result: TrainResult, *, model_cfg=None, test: dict | None = None,
               model_id: str | None = None, extra: dict | None = None) -> str:
    """Store a trained model with its config and metrics; return its id."""
    ensure_tables(store)
    cfg = result.config
    kind = result.model.kind
    model_id = model_id or f"{kind}-seed{cfg.seed}"
    config = {"gnn": dataclasses.asdict(cfg)}
    if model_cfg is not None and kind.startswith("posterkg"):
        config["gnn_model"] = dataclasses.asdict(model_cfg)
    graph = getattr(result.model, "graph", None)
    if graph is not None:
        config["graph"] = graph.summary()
    metrics = {"valid": result.valid, "test": test or {}, "best_epoch": result.best_epoch,
               "epochs_run": result.epochs_run, "seconds_per_epoch": result.seconds_per_epoch,
               "seconds": result.seconds, "history": result.history, **(extra or {})}
    with store.transaction():
        store.execute("DELETE FROM models WHERE model_id = ?", [model_id])
        store.execute(
            "INSERT INTO models (model_id, kind, config, seed, state, metrics) VALUES (?, ?, ?, ?, ?, ?)",
            [model_id, kind, json.dumps(config, default=str), cfg.seed, state_to_bytes(result.model),
             json.dumps(metrics, default=float)])
    write_eval(store, model_id, kind, cfg.seed, "valid", result.valid)
    if test:
        write_eval(store, model_id, kind, cfg.seed, "test", test)
    return model_id


def write_eval(store: Store, model_id: str, kind: str, seed: int, part: str, metrics: dict) -> None:
    ensure_tables(store)
    rows = []
    for key, value in metrics.items():
        if "@" not in key:
            continue
        metric, k = key.split("@")
        rows.append((model_id, kind, seed, part, metric, int(k), float(value)))
    with store.transaction():
        store.execute("DELETE FROM eval_results WHERE model_id = ? AND part = ?", [model_id, part])
        if rows:
            store.insert_df("eval_results", pd.DataFrame(
                rows, columns=["model_id", "kind", "seed", "part", "metric", "k", "value"]))


class TrainedModel:
    """A stored model, rebuilt over the current database."""

    def __init__(self, store: Store, model_id: str, kind: str, seed: int, config: dict,
                 metrics: dict, model, data: Interactions):
        self.store = store
        self.model_id, self.kind, self.seed = model_id, kind, seed
        self.config, self.metrics = config, metrics
        self.model = model
        self.data = data
        self._emb = None
        self._bundle = None

    # -- embeddings and scores ---------------------------------------------------------------
    def _embeddings(self):
        if self._emb is None:
            with torch.no_grad():
                self._emb = self.model.embeddings()
        return self._emb

    def movie_embeddings(self) -> torch.Tensor:
        """[n_movies, dim] final movie embeddings; row i is movie ``self.movie_ids[i]``."""
        return self._embeddings()[1].detach()

    def user_embeddings(self) -> torch.Tensor:
        return self._embeddings()[0].detach()

    @property
    def movie_ids(self) -> np.ndarray:
        return self.data.movie_ids

    @property
    def user_ids(self) -> np.ndarray:
        return self.data.user_ids

    def _user_idx(self, user_ids: Sequence[int]) -> torch.Tensor:
        try:
            return torch.as_tensor([self.data.user_index[int(u)] for u in user_ids], dtype=torch.long)
        except KeyError as exc:
            raise InputError(f"user {exc.args[0]} is not in the split (no ratings)") from None

    def _movie_idx(self, movie_ids: Sequence[int]) -> torch.Tensor:
        try:
            return torch.as_tensor([self.data.movie_index[int(m)] for m in movie_ids], dtype=torch.long)
        except KeyError as exc:
            raise InputError(f"movie {exc.args[0]} is not in the movies table") from None

    def score(self, user_ids: Sequence[int], movie_ids: Sequence[int] | None = None,
              emb=None) -> torch.Tensor:
        """Scores [len(user_ids), n] for the given movies (default: every movie, in
        ``movie_ids`` order). Seen movies are NOT masked here."""
        scores = self.model.score(self._user_idx(user_ids), emb if emb is not None else self._embeddings())
        if movie_ids is not None:
            scores = scores[:, self._movie_idx(movie_ids)]
        return scores

    def recommend(self, user_id: int, k: int = 10) -> list[tuple[int, float]]:
        """Top-k (movie_id, score), excluding the user's train and valid movies."""
        return self.recommend_many([user_id], k)[int(user_id)]

    def recommend_many(self, user_ids: Sequence[int], k: int = 10) -> dict[int, list[tuple[int, float]]]:
        uidx = self._user_idx(user_ids)
        scores = self.model.score(uidx, self._embeddings()).clone()
        seen = self.data.seen("test")[uidx.numpy()]
        rows = np.repeat(np.arange(len(uidx)), np.diff(seen.indptr))
        scores[torch.from_numpy(rows), torch.from_numpy(seen.indices.astype(np.int64))] = float("-inf")
        top = torch.topk(scores, min(k, scores.shape[1]), dim=1)
        out = {}
        for i, u in enumerate(user_ids):
            out[int(u)] = [(int(self.data.movie_ids[j]), float(s))
                           for j, s in zip(top.indices[i].tolist(), top.values[i].tolist())
                           if s != float("-inf")]
        return out

    # -- graph -------------------------------------------------------------------------------
    @property
    def bundle(self):
        """The graphs stage's ``GraphBundle`` of this database (built on first use)."""
        if self._bundle is None:
            from posterkg.graphs.hetero import build_hetero

            self._bundle = build_hetero(self.store)
        return self._bundle

    def rescore(self, bundle_modified, user_id: int, movie_ids: Sequence[int]) -> torch.Tensor:
        """Scores of ``movie_ids`` for ``user_id`` when the model propagates over
        ``bundle_modified`` (e.g. the bundle with some edges deleted) instead of the stored graph.
        Models without a graph (MostPop, BPR-MF) return their usual scores."""
        model = copy.copy(self.model)
        if hasattr(model, "set_graph"):
            from posterkg.gnn.model import from_bundle

            model.set_graph(self.data, from_bundle(bundle_modified, self.data))
        elif isinstance(model, LightGCN):
            model.set_pos_edges(*_bundle_pos(bundle_modified, self.data))
        with torch.no_grad():
            emb = model.embeddings()
        return self.score([user_id], movie_ids, emb=emb)[0]


def _bundle_pos(bundle, data: Interactions) -> tuple[np.ndarray, np.ndarray]:
    from posterkg.gnn.model import _remap

    ei = bundle.data[("user", "pos", "movie")].edge_index.cpu().numpy()
    u, ok1 = _remap(bundle.user_ids[ei[0]], data.user_index)
    m, ok2 = _remap(bundle.movie_ids[ei[1]], data.movie_index)
    ok = ok1 & ok2
    return u[ok], m[ok]


def list_models(store: Store) -> pd.DataFrame:
    if not store.table_exists("models"):
        return pd.DataFrame(columns=["model_id", "kind", "seed", "created_at"])
    return store.df("SELECT model_id, kind, seed, created_at, metrics FROM models ORDER BY created_at DESC")


def load_model(store: Store, model_id: str | None = None, *, data: Interactions | None = None) -> TrainedModel:
    """Load ``model_id`` (default: the most recently trained model) over the current database."""
    if not store.table_exists("models") or store.count("models") == 0:
        raise InputError("no trained model in the database: run `posterkg train` first")
    if model_id is None:
        row = store.execute("SELECT model_id, kind, seed, config, metrics, state FROM models "
                            "ORDER BY created_at DESC, model_id LIMIT 1").fetchone()
    else:
        row = store.execute("SELECT model_id, kind, seed, config, metrics, state FROM models "
                            "WHERE model_id = ?", [model_id]).fetchone()
        if row is None:
            known = ", ".join(store.df("SELECT model_id FROM models ORDER BY model_id")["model_id"])
            raise InputError(f"no model {model_id!r}; stored models: {known}")
    mid, kind, seed, config, metrics, state = row
    config = json.loads(config) if isinstance(config, str) else config
    metrics = json.loads(metrics) if isinstance(metrics, str) else (metrics or {})
    data = data or load_interactions(store)
    cfg = TrainConfig(**{**config["gnn"], "device": "cpu"})
    model_cfg = None
    if "gnn_model" in config:
        from posterkg.gnn.model import ModelConfig

        model_cfg = ModelConfig(**config["gnn_model"])
    model = build_model(cfg, data, store=store, model_cfg=model_cfg)
    try:
        model.load_state_dict(torch.load(io.BytesIO(bytes(state)), map_location="cpu", weights_only=True))
    except RuntimeError as exc:
        raise PosterkgError(
            f"model {mid} does not fit the current database (the split or the graph changed since "
            f"it was trained); train it again. ({str(exc).splitlines()[0]})") from None
    model.eval()
    return TrainedModel(store, mid, kind, int(seed), config, metrics, model, data)


def write_recommendations(store: Store, tm: TrainedModel, user_ids: Sequence[int], k: int,
                          batch: int = 512) -> pd.DataFrame:
    """Top-k for every user in ``user_ids`` into ``recommendations`` (replacing this model's rows
    for those users); returns the rows."""
    ensure_tables(store)
    frames = []
    user_ids = list(user_ids)
    for start in range(0, len(user_ids), batch):
        chunk = user_ids[start:start + batch]
        recs = tm.recommend_many(chunk, k)
        rows = [(tm.model_id, u, m, r + 1, s) for u in chunk for r, (m, s) in enumerate(recs[int(u)])]
        frames.append(pd.DataFrame(rows, columns=["model_id", "user_id", "movie_id", "rank", "score"]))
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["model_id", "user_id", "movie_id", "rank", "score"])
    with store.transaction():
        store.con.register("_posterkg_rec_users", pd.DataFrame({"user_id": [int(u) for u in user_ids]}))
        try:
            store.execute("DELETE FROM recommendations WHERE model_id = ? AND user_id IN "
                          "(SELECT user_id FROM _posterkg_rec_users)", [tm.model_id])
        finally:
            store.con.unregister("_posterkg_rec_users")
        store.insert_df("recommendations", df)
    return df


def evaluate_rows(store: Store) -> list[dict[str, Any]]:
    """eval_results pivoted: one dict per (model, part)."""
    if not store.table_exists("eval_results"):
        return []
    df = store.df("SELECT * FROM eval_results ORDER BY kind, seed, part")
    out = []
    for (mid, kind, seed, part), g in df.groupby(["model_id", "kind", "seed", "part"], sort=False):
        row = {"model_id": mid, "kind": kind, "seed": int(seed), "part": part}
        row.update({f"{m}@{k}": v for m, k, v in zip(g["metric"], g["k"], g["value"])})
        out.append(row)
    return out
