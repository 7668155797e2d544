"""Model-side weights for explanation edges, and edge deletion on a graph bundle.

The model is anything with ``.bundle`` (a GraphBundle: ``.data`` HeteroData plus the id <-> index
maps) and ``.rescore(bundle, user_id, movie_ids) -> tensor`` that scores movies for a user on a
given, possibly modified, bundle: :class:`posterkg.gnn.api.TrainedModel` has both. We call this
small interface a *scorer*.

Gradient x input (the default): every edge weight ``w_e`` of the edge types we explain is
replaced by ``w_e * m_e`` with a mask ``m_e = 1`` that requires grad; one forward and one backward
of the movie's score give ``a_e = ds/dm_e = w_e * ds/dw_e``, the first-order estimate of how much
the score falls when the edge is deleted (``m_e -> 0``). This needs a model whose message passing
uses ``edge_weight`` and whose ``rescore`` keeps the autograd graph. When it does not (no grad, or
every attribution is zero) :func:`edge_attributions` returns None and the caller falls back to
occlusion (delete each concept's edges and re-score: exact but one forward per concept), then to
graph-only weights.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, Iterable, Sequence

import numpy as np
import torch

EdgeType = tuple[str, str, str]


# -- bundle surgery ------------------------------------------------------------------------------
def edge_types(data, src: str, dst: str) -> list[EdgeType]:
    """Edge types of ``data`` going from node type ``src`` to ``dst``."""
    return [et for et in data.edge_types if et[0] == src and et[2] == dst]


def is_negative(et: EdgeType) -> bool:
    """Whether an edge type carries dislike (``neg``, ``dislikes``, ``rev_neg`` ...)."""
    rel = et[1].lower()
    return "neg" in rel or "dislike" in rel


def with_data(bundle, data):
    """A shallow copy of ``bundle`` whose ``.data`` is ``data``."""
    if dataclasses.is_dataclass(bundle) and not isinstance(bundle, type):
        try:
            return dataclasses.replace(bundle, data=data)
        except TypeError:  # a field with init=False; fall through to a plain copy
            pass
    out = copy.copy(bundle)
    try:
        out.data = data
    except (AttributeError, dataclasses.FrozenInstanceError):
        object.__setattr__(out, "data", data)
    return out


def edge_weight(store) -> torch.Tensor:
    w = getattr(store, "edge_weight", None)
    if w is None:
        return torch.ones(store.edge_index.size(1))
    return w


def drop_edges(bundle, keep: dict[EdgeType, torch.Tensor]):
    """A copy of ``bundle`` keeping, for each edge type in ``keep``, only the edges where the bool
    mask is true (edge_index, edge_weight and any other per-edge tensor are filtered alike)."""
    data = copy.copy(bundle.data)
    for et, mask in keep.items():
        st = bundle.data[et]
        n = st.edge_index.size(1)
        for key, val in st.items():
            if torch.is_tensor(val) and val.dim() >= 1:
                if key == "edge_index":
                    data[et][key] = val[:, mask]
                elif val.size(0) == n:
                    data[et][key] = val[mask]
    return with_data(bundle, data)


def movie_concept_keep(bundle, movie_id: int, concept_ids: Iterable[int]) -> dict[EdgeType, torch.Tensor]:
    """Keep-masks deleting the edges between ``movie_id`` and ``concept_ids``, both directions."""
    data = bundle.data
    mi = bundle.movie_index[int(movie_id)]
    cidx = torch.tensor([bundle.concept_index[int(c)] for c in concept_ids if int(c) in bundle.concept_index],
                        dtype=torch.long)
    keep = {}
    for et in edge_types(data, "movie", "concept") + edge_types(data, "concept", "movie"):
        ei = data[et].edge_index
        m_row, c_row = (ei[0], ei[1]) if et[0] == "movie" else (ei[1], ei[0])
        hit = (m_row == mi) & torch.isin(c_row, cidx)
        keep[et] = ~hit
    return keep


def delete_movie_concepts(bundle, movie_id: int, concept_ids: Iterable[int]):
    """A copy of ``bundle`` without the edges between ``movie_id`` and ``concept_ids``."""
    return drop_edges(bundle, movie_concept_keep(bundle, movie_id, concept_ids))


def score_one(scorer, user_id: int, movie_id: int, bundle=None) -> float:
    with torch.no_grad():
        s = scorer.rescore(scorer.bundle if bundle is None else bundle, int(user_id), [int(movie_id)])
    return float(torch.as_tensor(s).reshape(-1)[0])


# -- attributions --------------------------------------------------------------------------------
@dataclasses.dataclass
class EdgeAttribution:
    """Per-edge attributions of one (user, movie) score, keyed by database ids."""

    movie_concept: dict[tuple[int, int], float]   # (movie_id, concept_id) -> a, both directions summed
    user_concept: dict[int, float]                # concept_id -> a of the user's likes/dislikes edges
    user_movie: dict[int, float]                  # movie_id -> a of the user's interaction edges
    method: str
    score: float | None = None                    # the score on the unmodified graph


def explained_edge_types(data) -> list[EdgeType]:
    return (edge_types(data, "movie", "concept") + edge_types(data, "concept", "movie")
            + edge_types(data, "user", "concept") + edge_types(data, "concept", "user")
            + edge_types(data, "user", "movie") + edge_types(data, "movie", "user"))


def edge_attributions(scorer, user_id: int, movie_id: int,
                      movies_of_interest: Sequence[int] = ()) -> EdgeAttribution | None:
    """Gradient x input of the score of ``(user_id, movie_id)`` w.r.t. an all-ones edge mask.

    ``movies_of_interest``: the movies whose concept edges we want (the candidate and the user's
    liked/disliked movies); the user's own edges are always collected. Returns None when the
    scorer's output does not depend differentiably on the edge weights.
    """
    bundle = scorer.bundle
    data = copy.copy(bundle.data)
    masks: dict[EdgeType, torch.Tensor] = {}
    for et in explained_edge_types(bundle.data):
        st = bundle.data[et]
        w = edge_weight(st).detach()
        m = torch.ones(w.size(0), dtype=w.dtype if w.is_floating_point() else torch.float32,
                       device=w.device, requires_grad=True)
        data[et].edge_weight = w * m
        masks[et] = m
    if not masks:
        return None
    with torch.enable_grad():
        s = scorer.rescore(with_data(bundle, data), int(user_id), [int(movie_id)])
        s = torch.as_tensor(s).reshape(-1)[0]
        if not s.requires_grad:
            return None
        grads = torch.autograd.grad(s, list(masks.values()), allow_unused=True)
    att = {et: (g.detach().cpu().numpy() if g is not None else None) for et, g in zip(masks, grads)}
    if all(g is None or not np.any(g) for g in att.values()):
        return None
    out = _collect(bundle, att, user_id, movie_id, movies_of_interest, "gradient")
    out.score = float(s.detach())  # mask = 1: the forward pass is the unmodified score
    return out


def _collect(bundle, att: dict[EdgeType, np.ndarray | None], user_id: int, movie_id: int,
             movies_of_interest: Sequence[int], method: str) -> EdgeAttribution:
    data = bundle.data
    ui = bundle.user_index.get(int(user_id))
    wanted = {bundle.movie_index[int(m)] for m in [movie_id, *movies_of_interest] if int(m) in bundle.movie_index}
    wanted_arr = np.fromiter(wanted, dtype=np.int64)
    mids, cids = bundle.movie_ids, bundle.concept_ids
    mc: dict[tuple[int, int], float] = {}
    uc: dict[int, float] = {}
    um: dict[int, float] = {}
    for et, g in att.items():
        if g is None:
            continue
        ei = data[et].edge_index.cpu().numpy()
        src, dst = et[0], et[2]
        if {src, dst} == {"movie", "concept"}:
            m_row, c_row = (ei[0], ei[1]) if src == "movie" else (ei[1], ei[0])
            sel = np.nonzero(np.isin(m_row, wanted_arr) & (g != 0))[0]
            for k in sel:
                key = (int(mids[m_row[k]]), int(cids[c_row[k]]))
                mc[key] = mc.get(key, 0.0) + float(g[k])
        elif {src, dst} == {"user", "concept"} and ui is not None:
            u_row, c_row = (ei[0], ei[1]) if src == "user" else (ei[1], ei[0])
            for k in np.nonzero((u_row == ui) & (g != 0))[0]:
                c = int(cids[c_row[k]])
                uc[c] = uc.get(c, 0.0) + float(g[k])
        elif {src, dst} == {"user", "movie"} and ui is not None:
            u_row, m_row = (ei[0], ei[1]) if src == "user" else (ei[1], ei[0])
            for k in np.nonzero((u_row == ui) & (g != 0))[0]:
                m = int(mids[m_row[k]])
                um[m] = um.get(m, 0.0) + float(g[k])
    return EdgeAttribution(mc, uc, um, method)


def occlusion_attributions(scorer, user_id: int, movie_id: int, concept_ids: Sequence[int]) -> EdgeAttribution:
    """Exact drop of the score when each concept's edges with the movie are deleted (one forward
    per concept). Only the movie side is measured; user-side attributions are left empty."""
    base = score_one(scorer, user_id, movie_id)
    mc = {}
    for c in concept_ids:
        s = score_one(scorer, user_id, movie_id, delete_movie_concepts(scorer.bundle, movie_id, [c]))
        mc[(int(movie_id), int(c))] = base - s
    return EdgeAttribution(mc, {}, {}, "occlusion", base)


def has_concept_edges(bundle: Any) -> bool:
    data = bundle.data
    return bool(edge_types(data, "movie", "concept") or edge_types(data, "concept", "movie"))
