"""Trained models in the database, and the Python API other areas use.

Tables (component ``gnn``):

* ``models(model_id, kind, config JSON, seed, created_at, state BLOB, metrics JSON, ids BLOB,
  final BLOB)``: one row per trained model; ``state`` is the ``state_dict`` (``torch.save``
  bytes); ``ids`` the :class:`~posterkg.gnn.base.IdVocab` it was trained in (so it scores the
  same after new users or movies are ingested); ``final`` the final user and movie embeddings
  of dot-product models (recommending is one lookup and one product, no propagation);
  ``config`` holds the ``[gnn]`` settings and the model's own config; ``metrics`` the valid and
  test results, best epoch and seconds per epoch. The default id is ``<kind>-seed<seed>``.
* ``eval_results(model_id, kind, seed, part, metric, k, value)``: one row per metric
  (``recall``/``ndcg``/``coverage`` at k) and part (``valid``/``test``/``test_robust``).
* ``recommendations(model_id, user_id, movie_id, rank, score)``: written by
  ``posterkg recommend --all``.

:func:`load_model` returns a :class:`TrainedModel`: ``score``, ``recommend`` (excluding the
user's train and valid movies; the model sees train + valid as the user's history),
``movie_embeddings``, ``inputs`` (ids, interactions, the graph the model propagates over).
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from posterkg.errors import InputError, PosterkgError
from posterkg.progress import bar
from posterkg.gnn import registry
from posterkg.gnn.base import IdVocab, ModelInputs, Recommender
from posterkg.gnn.train import TrainConfig, TrainResult
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
    "ALTER TABLE models ADD COLUMN IF NOT EXISTS ids BLOB",
    "ALTER TABLE models ADD COLUMN IF NOT EXISTS final BLOB",
]


def ensure_tables(store: Store) -> None:
    store.migrate("gnn", MIGRATIONS)


def _to_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _from_bytes(blob):
    return torch.load(io.BytesIO(bytes(blob)), map_location="cpu", weights_only=True)


def state_to_bytes(model: torch.nn.Module) -> bytes:
    return _to_bytes({k: v.detach().cpu() for k, v in model.state_dict().items()})


def _final_of(model: Recommender, inputs: ModelInputs):
    """Final embeddings to store: over the train graph, and folded over train + valid (what
    ``recommend`` uses), so recommending needs no propagation."""
    try:
        emb = model.final_embeddings()
        fold = model.history_embeddings(inputs.data.history("test"))
    except NotImplementedError:
        return None
    return {"train": [e.detach().cpu() for e in emb[:2]], "test": [e.detach().cpu() for e in fold[:2]]}


def save_model(store: Store, result: TrainResult, inputs: ModelInputs, *, test: dict | None = None,
               model_id: str | None = None, extra: dict | None = None) -> str:
    """Store a trained model with its id vocabulary, config and metrics; return its id."""
    ensure_tables(store)
    cfg = result.config
    kind = result.model.name
    model_id = model_id or f"{kind}-seed{cfg.seed}"
    config = {"gnn": dataclasses.asdict(cfg), "model": dataclasses.asdict(result.model.cfg),
              "features": getattr(result.model, "feature_spec", {})}
    if inputs.graph is not None:
        config["graph"] = inputs.graph.summary()
    metrics = {"valid": result.valid, "test": (test or {}).get("test", {}), "best_epoch": result.best_epoch,
               "epochs_run": result.epochs_run, "seconds_per_epoch": result.seconds_per_epoch,
               "seconds": result.seconds, "history": result.history, **(extra or {})}
    if test and "test_robust" in test:
        metrics["test_robust"] = test["test_robust"]
    final = _final_of(result.model.eval(), inputs)
    with store.transaction():
        store.execute("DELETE FROM models WHERE model_id = ?", [model_id])
        store.execute(
            "INSERT INTO models (model_id, kind, config, seed, state, metrics, ids, final) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [model_id, kind, json.dumps(config, default=str), cfg.seed, state_to_bytes(result.model),
             json.dumps(metrics, default=float), inputs.ids.to_bytes(),
             _to_bytes(final) if final is not None else None])
    write_eval(store, model_id, kind, cfg.seed, "valid", result.valid)
    for part, res in (test or {}).items():
        write_eval(store, model_id, kind, cfg.seed, part, res)
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
    """A stored model over its saved id vocabulary, with the database's current history."""

    def __init__(self, model_id: str, kind: str, seed: int, config: dict, metrics: dict,
                 model: Recommender, inputs: ModelInputs, unknown: dict | None = None):
        self.model_id, self.kind, self.seed = model_id, kind, seed
        self.config, self.metrics = config, metrics
        self.model = model
        self.inputs = inputs
        self.unknown = unknown or {}

    @property
    def ids(self) -> IdVocab:
        return self.inputs.ids

    @property
    def data(self):
        return self.inputs.data

    @property
    def graph(self):
        """The graph recommendations come from: the model's graph with the user-movie edges of
        the train + valid history (the fold-in rule), so explanations mask what was scored."""
        if getattr(self, "_graph", None) is None:
            self._graph = self.inputs.graph.with_history(self.history) if self.inputs.graph is not None else None
        return self._graph

    @property
    def movie_ids(self) -> np.ndarray:
        return self.ids.movie_ids

    @property
    def user_ids(self) -> np.ndarray:
        """Users the model can recommend for (those with a history in the split)."""
        return self.ids.user_ids

    @property
    def history(self):
        """What the model knows of each user when recommending: train + valid."""
        return self.data.history("test")

    # -- embeddings and scores ---------------------------------------------------------------
    def movie_embeddings(self) -> torch.Tensor:
        """[n_movies, dim] final movie embeddings; row i is movie ``self.movie_ids[i]``."""
        try:
            return self.model.movie_vectors().detach()
        except NotImplementedError:
            raise InputError(f"model {self.model_id} ({self.kind}) has no movie embeddings") from None

    def user_embeddings(self) -> torch.Tensor:
        return self.model.final_embeddings()[0].detach()

    def user_index(self, user_ids: Sequence[int]) -> torch.Tensor:
        idx, ok = self.ids.lookup("user", [int(u) for u in user_ids])
        if not ok.all():
            bad = int(np.asarray(user_ids)[~ok][0])
            raise InputError(f"user {bad} is not known to model {self.model_id}: users need at "
                             f"least 10 ratings to be in the split (and the model must have been "
                             f"trained after they were ingested)")
        return torch.as_tensor(idx, dtype=torch.long)

    def movie_index(self, movie_ids: Sequence[int]) -> torch.Tensor:
        idx, ok = self.ids.lookup("movie", [int(m) for m in movie_ids])
        if not ok.all():
            bad = int(np.asarray(movie_ids)[~ok][0])
            raise InputError(f"movie {bad} is not known to model {self.model_id} (not in the "
                             f"movies table when it was trained)")
        return torch.as_tensor(idx, dtype=torch.long)

    def score(self, user_ids: Sequence[int], movie_ids: Sequence[int] | None = None) -> torch.Tensor:
        """Scores [len(user_ids), n] for the given movies (default: every movie, in
        ``movie_ids`` order), with train + valid as history. Seen movies are NOT masked here."""
        scores = self.model.score(self.user_index(user_ids), self.history)
        if movie_ids is not None:
            scores = scores[:, self.movie_index(movie_ids)]
        return scores

    def recommend(self, user_id: int, k: int = 10) -> list[tuple[int, float]]:
        """Top-k (movie_id, score), excluding the user's train and valid movies."""
        return self.recommend_many([user_id], k)[int(user_id)]

    def top_k(self, uidx: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """One batch of user indices: the top-k movie indices [B, min(k, n_movies)] and their
        scores, excluding each user's train and valid movies (the users' own history slices:
        no users x movies matrix beyond the batch's scores). A slot with score ``-inf`` (fewer
        unseen movies than k) is not a recommendation."""
        uidx = np.asarray(uidx, np.int64)
        hist = self.history
        scores = self.model.score(torch.as_tensor(uidx, dtype=torch.long), hist).clone().float()
        starts, ends = hist.indptr[uidx], hist.indptr[uidx + 1]
        lens = ends - starts
        rows = np.repeat(np.arange(len(uidx)), lens)
        flat = np.repeat(starts - np.cumsum(np.r_[0, lens[:-1]]), lens) + np.arange(int(lens.sum()))
        cols = hist.movies[flat].astype(np.int64)
        scores[torch.from_numpy(rows), torch.from_numpy(cols)] = float("-inf")
        top = torch.topk(scores, min(k, scores.shape[1]), dim=1)
        return top.indices.cpu().numpy(), top.values.cpu().numpy()

    def recommend_many(self, user_ids: Sequence[int], k: int = 10) -> dict[int, list[tuple[int, float]]]:
        if k < 1:
            raise InputError(f"k must be >= 1 (got {k})")
        uidx = self.user_index(user_ids).numpy()
        idx, val = self.top_k(uidx, k)
        out = {}
        for i, u in enumerate(user_ids):
            out[int(u)] = [(int(self.movie_ids[j]), float(s))
                           for j, s in zip(idx[i].tolist(), val[i].tolist()) if s != float("-inf")]
        return out

    def iter_recommendations(self, user_ids: Sequence[int], k: int = 10, batch: int = 2048):
        """Top-k rows for ``user_ids`` in batches of ``batch`` users: yields DataFrames
        (model_id, user_id, movie_id, rank, score), the same rows as :meth:`recommend_many`, in
        bounded memory (one batch's scores at a time)."""
        if k < 1:
            raise InputError(f"k must be >= 1 (got {k})")
        user_ids = np.asarray([int(u) for u in user_ids], np.int64)
        for start in range(0, len(user_ids), batch):
            chunk = user_ids[start:start + batch]
            idx, val = self.top_k(self.user_index(chunk).numpy(), k)
            ok = val != -np.inf                        # -inf: fewer unseen movies than k
            kk = idx.shape[1]
            yield pd.DataFrame({
                "model_id": self.model_id,
                "user_id": np.repeat(chunk, kk)[ok.ravel()].astype(np.int32),
                "movie_id": self.movie_ids[idx].ravel()[ok.ravel()].astype(np.int32),
                "rank": np.tile(np.arange(1, kk + 1, dtype=np.int32), len(chunk))[ok.ravel()],
                "score": val.ravel()[ok.ravel()].astype(np.float64)})


def list_models(store: Store) -> pd.DataFrame:
    if not store.table_exists("models"):
        return pd.DataFrame(columns=["model_id", "kind", "seed", "created_at"])
    return store.df("SELECT model_id, kind, seed, created_at, metrics FROM models ORDER BY created_at DESC")


def load_model(store: Store, model_id: str | None = None) -> TrainedModel:
    """Load ``model_id`` (default: the most recently trained model) in its saved id space."""
    from posterkg.gnn.inputs import assemble

    if not store.table_exists("models") or store.count("models") == 0:
        raise InputError("no trained model in the database: run `posterkg train` first")
    cols = "model_id, kind, seed, config, metrics, state, ids, final"
    if model_id is None:
        row = store.execute(f"SELECT {cols} FROM models ORDER BY created_at DESC, model_id LIMIT 1").fetchone()
    else:
        row = store.execute(f"SELECT {cols} FROM models WHERE model_id = ?", [model_id]).fetchone()
        if row is None:
            known = ", ".join(store.df("SELECT model_id FROM models ORDER BY model_id")["model_id"])
            raise InputError(f"no model {model_id!r}; stored models: {known}")
    mid, kind, seed, config, metrics, state, ids, final = row
    config = json.loads(config) if isinstance(config, str) else config
    metrics = json.loads(metrics) if isinstance(metrics, str) else (metrics or {})
    if ids is None or "model" not in config:
        raise PosterkgError(f"model {mid} was stored by an older posterkg without its id vocabulary; "
                            f"train it again")
    vocab = IdVocab.from_bytes(ids)
    asm = assemble(store, vocab=vocab, features=config.get("features") or {})
    mcfg = registry.stored_model_config(kind, config["model"])
    model = registry.build(kind, asm.inputs, mcfg, seed=int(seed))
    try:
        model.load_state_dict(_from_bytes(state))
    except RuntimeError as exc:
        raise PosterkgError(f"model {mid} does not fit its saved inputs; train it again. "
                            f"({str(exc).splitlines()[0]})") from None
    model.eval()
    if final is not None:
        saved = _from_bytes(final)
        model._final = tuple(saved["train"])
        hist = asm.inputs.data.history("test")
        model._folded[("test", len(hist))] = tuple(saved["test"])
    return TrainedModel(mid, kind, int(seed), config, metrics, model, asm.inputs, asm.unknown)


def write_recommendations(store: Store, tm: TrainedModel, user_ids: Sequence[int], k: int,
                          batch: int = 2048, out: str | Path | None = None, progress: bool | None = None) -> int:
    """Top-k for every user in ``user_ids`` into ``recommendations`` (replacing this model's rows
    for those users), streamed: ``batch`` users are scored, inserted and (with ``out``) appended
    to a TSV (user_id, movie_id, rank, score) at a time, so memory stays one batch's scores.
    One transaction: an interrupted run leaves the old rows; the TSV is written to
    ``<out>.partial`` and renamed at the end. Returns the number of rows."""
    ensure_tables(store)
    user_ids = [int(u) for u in user_ids]
    out = Path(out) if out is not None else None
    partial = out.with_name(out.name + ".partial") if out is not None else None
    n_rows = 0
    fh = open(partial, "w", encoding="utf-8", newline="") if partial is not None else None
    try:
        if fh is not None:
            fh.write("user_id\tmovie_id\trank\tscore\n")
        with store.transaction():
            store.con.register("_posterkg_rec_users", pd.DataFrame({"user_id": user_ids}))
            try:
                store.execute("DELETE FROM recommendations WHERE model_id = ? AND user_id IN "
                              "(SELECT user_id FROM _posterkg_rec_users)", [tm.model_id])
            finally:
                store.con.unregister("_posterkg_rec_users")
            n_batches = (len(user_ids) + batch - 1) // batch
            for df in bar(tm.iter_recommendations(user_ids, k, batch), total=n_batches,
                          desc="recommend", unit="batch", disable=progress if progress is None else not progress):
                store.insert_df("recommendations", df)
                if fh is not None:
                    df[["user_id", "movie_id", "rank", "score"]].to_csv(fh, sep="\t", index=False, header=False)
                n_rows += len(df)
    except BaseException:
        if fh is not None:
            fh.close()
            partial.unlink(missing_ok=True)
        raise
    if fh is not None:
        fh.close()
        os.replace(partial, out)
    return n_rows


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
