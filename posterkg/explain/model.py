"""Loading the trained model for explanations, with a graph-only fallback.

The explainer needs a *scorer*: ``.bundle`` (GraphBundle) and ``.rescore(bundle, user_id,
movie_ids)``; the report and the benchmark also use ``.recommend(user_id, k)`` and similar movies
``.movie_embeddings()``. :func:`posterkg.gnn.api.load_model` returns a TrainedModel with all four.
When there is no model (GNN not installed or not trained), callers get ``None`` and a note, and
explain with graph weights only.
"""

from __future__ import annotations

import copy
from typing import Any

from posterkg.errors import InputError
from posterkg.store import Store

NEEDED = ("bundle", "rescore", "recommend", "movie_embeddings")


def load_scorer(store: Store, model_id: str | None = None, *, required: bool = False) -> tuple[Any, str | None, str]:
    """(model or None, model_id, note). ``required``: raise instead of returning None."""
    def none(why: str):
        if required or model_id is not None:
            raise InputError(why)
        return None, None, why

    try:
        from posterkg.gnn.api import load_model
    except ImportError as exc:
        return none(f"the GNN (posterkg.gnn.api) is not available ({exc}); graph-only explanations")
    if not store.table_exists("models") or store.count("models") == 0:
        return none("no trained model in the models table (run `posterkg train`); graph-only explanations")
    model = load_model(store, model_id)
    missing = [a for a in NEEDED if not hasattr(model, a)]
    if missing:
        raise InputError(f"the loaded model lacks {', '.join(missing)}; cannot explain with it")
    mid = model_id or getattr(model, "model_id", None)
    scorer = GradientScorer(model)
    return scorer, mid, scorer.reason


# -- gradient adapter for the posterkg GNN ------------------------------------------------------
class GradientScorer:
    """A TrainedModel whose ``rescore`` keeps the autograd graph from the bundle's concept-edge
    weights to the score, so the explainer can use gradient x input.

    Why: ``TrainedModel.rescore`` rebuilds the model's operators from the bundle through numpy and
    runs under ``torch.no_grad`` (fine for deletion, but no gradient). This adapter (ours, minimal)
    rebuilds only the concept-side operators of the posterkg model (``item_side``, ``user_like``,
    ``user_dislike`` row-normalised, and the stage-2 ``has``/``likes``/``dislikes`` CSR operators)
    in torch from ``edge_weight`` (the same formulas as ``PosterKG.set_graph``) and reuses the
    interaction operators unchanged (the model takes interactions from the split, not the bundle,
    so user-movie edges get no attribution). At construction it checks that it reproduces
    ``TrainedModel.rescore`` on the stored graph and on a graph with deleted concept edges; if not
    (another model kind, or the model's internals changed) it defers to ``TrainedModel.rescore``
    and the explainer falls back to occlusion. ``reason`` says which.
    """

    _CONCEPT_RELS = (("has", "movie", "item_side"), ("likes", "user", "user_like"),
                     ("dislikes", "user", "user_dislike"))

    def __init__(self, tm, *, check: bool = True):
        self.tm = tm
        self.model_id = getattr(tm, "model_id", None)
        self.differentiable = False
        self.reason = ""
        m = getattr(tm, "model", None)
        if m is None or not hasattr(m, "_ops") or not hasattr(m, "graph") or not hasattr(tm, "data"):
            self.reason = f"model kind {getattr(tm, 'kind', '?')} has no concept operators: no gradient"
            return
        if not any(k in m._ops for _, _, k in self._CONCEPT_RELS):
            self.reason = "the model uses no concept edges: no gradient"
            return
        self.differentiable = True
        if check:
            self._check()

    # TrainedModel's interface, delegated
    @property
    def bundle(self):
        return self.tm.bundle

    def recommend(self, user_id: int, k: int = 10):
        return self.tm.recommend(user_id, k)

    def movie_embeddings(self):
        return self.tm.movie_embeddings()

    def score(self, user_ids, movie_ids=None):
        return self.tm.score(user_ids, movie_ids)

    def rescore(self, bundle, user_id: int, movie_ids):
        if not self.differentiable:
            return self.tm.rescore(bundle, user_id, movie_ids)
        model = copy.copy(self.tm.model)
        model._ops = {**self.tm.model._ops, **self._concept_ops(bundle)}
        emb = model.embeddings()
        # the dot product of Recommender.score, which runs under no_grad (checked in _check)
        import torch

        u = self.tm.data.user_index[int(user_id)]
        ms = torch.as_tensor([self.tm.data.movie_index[int(m)] for m in movie_ids], dtype=torch.long)
        return emb[1][ms] @ emb[0][u]

    def _concept_ops(self, bundle) -> dict:
        """The concept-side operators of ``bundle`` with values that carry autograd.

        The sparsity structure of the stored graph is sorted once per relation; a bundle whose
        edges are a subset of it (masks, deletions) only scatters its weights into that structure
        (a deleted edge weighs 0, which in these operators is the same as absent)."""
        import torch

        m = self.tm.model
        ops = {}
        for rel, src_type, norm_key in self._CONCEPT_RELS:
            et = (src_type, rel, "concept")
            if et not in bundle.data.edge_types:
                continue
            st = self._structure(rel, src_type)
            if st is None:
                continue
            es = bundle.data[et]
            ei = es.edge_index
            w = es.edge_weight if "edge_weight" in es else torch.ones(ei.size(1))
            src = self._index_map(bundle, src_type)[ei[0].cpu().numpy()]
            ok = src >= 0
            key = src[ok] * st["nc"] + ei[1].cpu().numpy()[ok]
            pos = st["skey"].searchsorted(key)
            pos = pos.clip(max=len(st["skey"]) - 1)
            if len(key) and not (st["skey"][pos] == key).all():
                raise InputError("the bundle has concept edges the stored graph does not have")
            vals = torch.zeros(len(st["skey"]), dtype=torch.float32).index_put(
                (torch.from_numpy(pos),), w[torch.from_numpy(ok)].abs().float(), accumulate=True)
            n_src, nc = st["n_src"], st["nc"]
            if norm_key in m._ops:
                tot = torch.zeros(n_src).index_add(0, st["rows"], vals)
                ops[norm_key] = torch.sparse_csr_tensor(st["crow"], st["col"], vals / tot[st["rows"]].clamp(min=1e-12),
                                                        (n_src, nc))
            if f"r_{rel}_{src_type}" in m._ops:
                ops[f"r_{rel}_{src_type}"] = torch.sparse_csr_tensor(st["crow"], st["col"], vals, (n_src, nc))
                ops[f"r_{rel}_concept"] = torch.sparse_csr_tensor(st["crow_t"], st["col_t"], vals[st["to_t"]],
                                                                  (nc, n_src))
        return ops

    def _structure(self, rel: str, src_type: str):
        """Sorted CSR structure (and its transpose) of one relation of the stored graph."""
        import numpy as np
        import torch

        cache = self.__dict__.setdefault("_structs", {})
        if (rel, src_type) in cache:
            return cache[(rel, src_type)]
        base = self.tm.bundle
        et = (src_type, rel, "concept")
        if et not in base.data.edge_types:
            cache[(rel, src_type)] = None
            return None
        ei = base.data[et].edge_index.cpu().numpy()
        src = self._index_map(base, src_type)[ei[0]]
        ok = src >= 0
        s, c = src[ok], ei[1][ok].astype(np.int64)
        nc = int(self.tm.model.graph.n_concepts)
        n_src = self.tm.data.n_users if src_type == "user" else self.tm.data.n_movies
        key = s * nc + c
        order = np.argsort(key, kind="stable")
        skey, rows, cols = key[order], s[order], c[order]
        if len(skey) > 1 and (np.diff(skey) == 0).any():
            raise InputError(f"duplicate {rel} edges in the graph")
        order_t = np.lexsort((rows, cols))           # sorted by concept, then source
        st = {
            "nc": nc, "n_src": n_src, "skey": skey,
            "rows": torch.from_numpy(rows),
            "crow": torch.from_numpy(np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n_src))])),
            "col": torch.from_numpy(cols),
            "crow_t": torch.from_numpy(np.concatenate([[0], np.cumsum(np.bincount(cols, minlength=nc))])),
            "col_t": torch.from_numpy(rows[order_t]),
            "to_t": torch.from_numpy(order_t),
        }
        cache[(rel, src_type)] = st
        return st

    def _index_map(self, bundle, node_type: str):
        """bundle node index -> the model's index (-1: not in the model), cached per id array."""
        import numpy as np

        ids = np.asarray(bundle.user_ids if node_type == "user" else bundle.movie_ids)
        key = (node_type, id(ids), len(ids))
        cache = self.__dict__.setdefault("_maps", {})
        if key not in cache:
            index = self.tm.data.user_index if node_type == "user" else self.tm.data.movie_index
            cache[key] = np.fromiter((index.get(int(v), -1) for v in ids), dtype=np.int64, count=len(ids))
        return cache[key]

    def _check(self) -> None:
        """Compare with TrainedModel.rescore on the stored graph and after deleting edges."""
        import torch

        from posterkg.explain.attribution import delete_movie_concepts

        b = self.tm.bundle
        et = ("movie", "has", "concept")
        if et not in b.data.edge_types or b.data[et].edge_index.size(1) == 0:
            self.differentiable, self.reason = False, "the graph has no movie-concept edges: no gradient"
            return
        mi = int(b.data[et].edge_index[0, 0])
        movie = int(b.movie_ids[mi])
        cs = b.data[et].edge_index[1][b.data[et].edge_index[0] == mi][:2]
        users = [int(u) for u in self.tm.data.user_ids[:1]]
        movies = [movie] + [int(x) for x in self.tm.data.movie_ids[:2]]
        for bundle in (b, delete_movie_concepts(b, movie, [int(b.concept_ids[c]) for c in cs])):
            with torch.no_grad():
                ref = self.tm.rescore(bundle, users[0], movies)
                got = self.rescore(bundle, users[0], movies)
            if not torch.allclose(ref.float(), got.float(), rtol=1e-4, atol=1e-5):
                self.differentiable = False
                self.reason = ("the gradient adapter does not reproduce TrainedModel.rescore "
                               f"(max diff {float((ref - got).abs().max()):.2e}): occlusion instead")
                return
