"""Model-side weights of explanation edges: gradient x input on a mask of the model's own graph.

Everything here works in the index space of the model's :class:`~posterkg.gnn.base.IdVocab`
(``tm.ids``); database ids appear only where the explainer (:mod:`posterkg.explain.paths`) turns
the result into sentences.

A *trained model* ``tm`` is a :class:`posterkg.gnn.api.TrainedModel` (``.model``, ``.graph``,
``.ids``, ``.history``, ``.recommend``, ``.score``). Its recommender scores under any graph
through :func:`scores_on`: ``model.score_graph(users, history, graph)`` when the model defines
it (models whose score is more than a dot product of ``embeddings(graph)``, e.g. a sequential
model), else the dot product of ``model.embeddings(graph)``. No copy of the model's algebra lives
here.

Gradient x input (the default): the explained relations' weights ``w_e`` are multiplied by a mask
``m_e = 1`` that requires grad (:meth:`Graph.masked`); one forward and one backward of the
movie's score give ``a_e = ds/dm_e = w_e * ds/dw_e``, the first-order estimate of how much the
score falls when the edge is deleted (``m_e -> 0``). Deletion is the same call with a mask of
zeros on the deleted edges (a zero-weight edge is an absent edge in every operator of the
models). :class:`Attributor` runs the forward once per user and one backward per movie, so a
report's ten explanations cost one propagation.

A model without ``embeddings(graph)`` (EASE, ItemKNN: they score from the user's history, not
from the graph) or whose score does not depend on the masked edges gets no gradient; the
explainer then falls back to occlusion, and to graph-only weights, and says so.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Sequence

import numpy as np
import torch

from posterkg.gnn.base import Recommender

# relations whose edges explanations attribute: movie -> concept, user -> concept
CONCEPT_RELATIONS = ("has", "likes", "dislikes")
INTERACTION_RELATIONS = ("pos", "neu", "neg")


def scores_on(model, graph, users: torch.Tensor, history=None) -> torch.Tensor:
    """``[len(users), n_movies]`` scores of ``model`` propagated over ``graph`` (differentiable in
    its edge weights). Raises NotImplementedError for models that do not score from a graph."""
    fn = getattr(model, "score_graph", None)
    if fn is not None:
        return fn(users, history, graph)
    emb = model.embeddings(graph)
    return emb[0][users] @ emb[1].T


def uses_graph(tm) -> tuple[bool, str]:
    """Whether ``tm``'s model scores from its graph (so masks can explain it), and if not why."""
    m = tm.model
    if getattr(m, "score_graph", None) is not None:
        return True, ""
    if getattr(type(m), "embeddings", None) in (None, Recommender.embeddings):
        return False, (f"model {tm.model_id} ({tm.kind}) scores from the user's history, not from a "
                       f"graph (no embeddings(graph))")
    return True, ""


def has_concept_edges(tm) -> bool:
    g = tm.graph
    return g is not None and "has" in g


# -- deletion ------------------------------------------------------------------------------------
def movie_concept_edges(graph, movie: int, concepts: Iterable[int] | None = None) -> torch.Tensor:
    """Positions in ``graph``'s ``has`` relation of the edges between ``movie`` and ``concepts``
    (all of the movie's concept edges when ``concepts`` is None); indices, not database ids."""
    r = graph.get("has")
    hit = r.src == int(movie)
    if concepts is not None:
        hit &= torch.isin(r.dst, torch.as_tensor(list(concepts), dtype=torch.long))
    return torch.nonzero(hit).flatten()


def delete_edges(graph, edges: dict[str, torch.Tensor]):
    """``graph`` with the edges at ``edges[rel]`` (positions) weighted 0, i.e. deleted."""
    masks = {}
    for rel, pos in edges.items():
        m = torch.ones(len(graph.get(rel)))
        m[pos] = 0.0
        masks[rel] = m
    return graph.masked(masks)


def delete_movie_concepts(graph, movie: int, concepts: Iterable[int]):
    """``graph`` without the edges between ``movie`` and ``concepts`` (indices)."""
    return delete_edges(graph, {"has": movie_concept_edges(graph, movie, concepts)})


@torch.no_grad()
def score_one(tm, user: int, movie: int, graph=None) -> float:
    """The score of (user, movie) (indices) over ``graph`` (default: the model's own)."""
    g = tm.graph if graph is None else graph
    s = scores_on(tm.model, g, torch.tensor([int(user)]), tm.history)
    return float(s[0, int(movie)])


# -- attributions --------------------------------------------------------------------------------
@dataclasses.dataclass
class EdgeAttribution:
    """Per-edge attributions of one (user, movie) score, in index space."""

    movie_concept: dict[tuple[int, int], float]   # (movie idx, concept idx) -> a
    user_concept: dict[int, float]                # concept idx -> a of the user's likes/dislikes edges
    user_movie: dict[int, float]                  # movie idx -> a of the user's interaction edges
    method: str
    score: float | None = None                    # the score on the unmodified graph


class Attributor:
    """Gradient x input of a trained model's scores w.r.t. masks on its own graph's edges.

    ``interactions``: also mask the user-movie relations (pos/neu/neg), so liked/disliked paths
    get the user's own interaction edge ``a(u, m')`` (``[explain] interactions``). Off by
    default: torch's backward for the values of a sparse CSR operand is dense in the operator's
    shape, cheap for movies x concepts but 11 s per explanation for the users+movies adjacency of
    ML-1M (the old adapter did not attribute these edges either)."""

    def __init__(self, tm, *, interactions: bool = False):
        self.tm = tm
        self.rels = [r for r in CONCEPT_RELATIONS + (INTERACTION_RELATIONS if interactions else ())
                     if tm.graph is not None and r in tm.graph]
        self._fwd: tuple | None = None        # (user, masks, scores [n_movies])
        self._edge_index: dict[str, tuple[np.ndarray, np.ndarray]] = {
            r: (tm.graph.get(r).src.numpy(), tm.graph.get(r).dst.numpy()) for r in self.rels}

    def _forward(self, user: int):
        if self._fwd is None or self._fwd[0] != user:
            g = self.tm.graph
            masks = {r: torch.ones(len(g.get(r)), requires_grad=True) for r in self.rels}
            with torch.enable_grad():
                s = scores_on(self.tm.model, g.masked(masks), torch.tensor([user]), self.tm.history)[0]
            self._fwd = (user, masks, s)
        return self._fwd

    def attributions(self, user: int, movie: int, movies_of_interest: Sequence[int] = ()) -> EdgeAttribution | None:
        """Attributions of the score of (user, movie) (indices) on the movie's, the movies of
        interest's and the user's own edges; None when the score has no gradient w.r.t. them."""
        if not self.rels:
            return None
        user, movie = int(user), int(movie)
        _, masks, s = self._forward(user)
        target = s[movie]
        if not target.requires_grad:
            return None
        with torch.enable_grad():
            grads = torch.autograd.grad(target, list(masks.values()), retain_graph=True, allow_unused=True)
        att = {r: (g.detach().numpy() if g is not None else None) for r, g in zip(masks, grads)}
        if all(g is None or not np.any(g) for g in att.values()):
            return None
        wanted = np.asarray(sorted({movie, *map(int, movies_of_interest)}), np.int64)
        mc: dict[tuple[int, int], float] = {}
        uc: dict[int, float] = {}
        um: dict[int, float] = {}
        for r, g in att.items():
            if g is None:
                continue
            src, dst = self._edge_index[r]
            if r == "has":
                for k in np.nonzero(np.isin(src, wanted) & (g != 0))[0]:
                    key = (int(src[k]), int(dst[k]))
                    mc[key] = mc.get(key, 0.0) + float(g[k])
            else:
                for k in np.nonzero((src == user) & (g != 0))[0]:
                    d = uc if r in ("likes", "dislikes") else um
                    d[int(dst[k])] = d.get(int(dst[k]), 0.0) + float(g[k])
        return EdgeAttribution(mc, uc, um, "gradient", float(target.detach()))


def occlusion_attributions(tm, user: int, movie: int, concepts: Sequence[int]) -> EdgeAttribution:
    """Exact drop of the score when each concept's edge with the movie is deleted (one forward
    per concept; indices). Only the movie side is measured; user-side attributions are empty."""
    base = score_one(tm, user, movie)
    mc = {}
    for c in concepts:
        mc[(int(movie), int(c))] = base - score_one(tm, user, movie, delete_movie_concepts(tm.graph, movie, [c]))
    return EdgeAttribution(mc, {}, {}, "occlusion", base)


# -- short- vs long-term (models with explain_parts: posterkg-seq) -----------------------------------
@dataclasses.dataclass
class HorizonSplit:
    """How a sequence model's score of (user, movie) splits into its short-term part (the
    self-attention over the user's recent ratings) and its long-term part (the running taste),
    overall and per concept edge of the movie (gradient x input of each part on the movie's
    ``has`` edges, keyed by concept index)."""

    short: float
    long: float
    gate: float
    concepts: dict[int, tuple[float, float]]     # concept index -> (a_short, a_long)


def horizon_split(tm, user: int, movie: int) -> HorizonSplit | None:
    """The model's own short/long split (None for models without ``explain_parts``)."""
    model = tm.model
    if getattr(model, "explain_parts", None) is None:
        return None
    g = tm.graph
    masks = {}
    has = g.get("has") if g is not None else None
    if has is not None and len(has):
        masks["has"] = torch.ones(len(has), requires_grad=True)
    gm = g.masked(masks) if g is not None else None
    with torch.enable_grad():
        parts = model.explain_parts(torch.tensor([user]), tm.history, torch.tensor([movie]), graph=gm)
        s, lo = parts["short"].sum(), parts["long"].sum()
        concepts: dict[int, tuple[float, float]] = {}
        if masks and (s.requires_grad or lo.requires_grad):
            def grad(x):
                if not x.requires_grad:
                    return None
                return torch.autograd.grad(x, masks["has"], retain_graph=True, allow_unused=True)[0]

            gs, gl = grad(s), grad(lo)
            sel = (has.src == movie).nonzero().flatten()
            for e in sel.tolist():
                c = int(has.dst[e])
                concepts[c] = (float(gs[e]) if gs is not None else 0.0, float(gl[e]) if gl is not None else 0.0)
    return HorizonSplit(float(s.detach()), float(lo.detach()), float(parts["gate"].detach().reshape(-1)[0]), concepts)
