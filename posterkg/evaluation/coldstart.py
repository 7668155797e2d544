"""The cold-start protocol: rank the movies nobody rated in training.

With a ``coldstart`` split (:mod:`posterkg.split`), the movies of a part (``test`` or ``valid``)
have no rating in ``train``. For each user with at least one *relevant* cold movie of that part
(rated >= 4), every cold movie of that part is ranked, and nothing else: no train movie is a
candidate, and none of the part's movies is excluded (the user's own low-rated cold movies stay in
as negatives, there is no "seen" set to remove). Recall@k and NDCG@k with binary relevance come
from the fixed protocol's own :func:`posterkg.gnn.evaluate.rank_metrics`, so the numbers mean the
same thing as in every other table (k larger than the number of cold movies = all of them).

``score_fn(user_batch) -> [B, n_movies]`` is the same contract as
:func:`posterkg.gnn.evaluate.evaluate`: scores over the whole catalogue by movie index; the cold
columns are taken out here. Id-only models cannot score a movie they never saw: give them
:func:`random_scores` (a seeded random order, "popularity of nothing"), the floor of the table.
Ties matter: a model that gives every unseen movie the same score (zero embeddings) would be
ranked by movie index by ``topk``; break ties yourself or use the random fallback.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np
import scipy.sparse as sp
import torch

from posterkg.errors import InputError

RELEVANT_MIN = 4.0


def _part_arrays(data: Any, part: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user indices, movie indices, ratings) of ``part`` from an Interactions, a mapping with
    users/movies/ratings, or a (users, movies, ratings) tuple."""
    if hasattr(data, "parts"):
        p = data.parts[part]
        return np.asarray(p.users), np.asarray(p.movies), np.asarray(p.ratings)
    if isinstance(data, Mapping):
        if part in data:
            return _part_arrays(data[part], part)
        return np.asarray(data["users"]), np.asarray(data["movies"]), np.asarray(data["ratings"])
    users, movies, ratings = data
    return np.asarray(users), np.asarray(movies), np.asarray(ratings)


@torch.no_grad()
def coldstart_eval(score_fn: Callable[[torch.Tensor], Any], data: Any, part: str = "test", *,
                   ks: Sequence[int] = (10, 20), relevant_min: float = RELEVANT_MIN,
                   batch_size: int = 1024, device: str | torch.device = "cpu",
                   users: np.ndarray | None = None) -> dict[str, float]:
    """Cold-start Recall/NDCG@k of ``score_fn`` on ``part`` (module doc).

    ``data``: a :class:`posterkg.gnn.data.Interactions` (its ``parts[part]``), or the part's
    rows as arrays of indices: ``{"users", "movies", "ratings"}`` or ``(users, movies, ratings)``.
    ``users`` optionally restricts the evaluated users. Returns ``{"recall@10": ..., "ndcg@10":
    ..., "n_users": ..., "n_candidates": ...}``.
    """
    from posterkg.gnn.evaluate import METRICS, rank_metrics

    u, m, r = _part_arrays(data, part)
    if len(u) == 0:
        raise InputError(f"the {part} part has no ratings: is this a coldstart split?")
    cold = np.unique(m.astype(np.int64))
    col = np.searchsorted(cold, m)
    rel = r >= relevant_min
    eval_users = np.unique(u[rel].astype(np.int64))
    if users is not None:
        eval_users = np.intersect1d(eval_users, np.asarray(users, dtype=np.int64))
    ks = tuple(sorted(set(int(k) for k in ks)))
    out = {f"{metric}@{k}": 0.0 for metric in METRICS for k in ks}
    if len(eval_users) == 0:
        return {**out, "n_users": 0, "n_candidates": int(len(cold))}
    keep = rel & np.isin(u, eval_users)
    rows = np.searchsorted(eval_users, u[keep])
    relevant = sp.csr_matrix((np.ones(int(keep.sum()), dtype=np.float32), (rows, col[keep])),
                             shape=(len(eval_users), len(cold)))
    relevant.sum_duplicates()
    relevant.data[:] = 1.0
    nothing = sp.csr_matrix((len(eval_users), len(cold)), dtype=np.float32)
    cold_t = torch.as_tensor(cold, dtype=torch.long)
    for start in range(0, len(eval_users), batch_size):
        sl = slice(start, start + batch_size)
        scores = torch.as_tensor(score_fn(torch.as_tensor(eval_users[sl], dtype=torch.long, device=device)))
        if scores.dim() != 2 or scores.shape[0] != len(eval_users[sl]) or scores.shape[1] <= int(cold[-1]):
            raise ValueError(f"score_fn must return [batch, n_movies] scores; got {tuple(scores.shape)}")
        res = rank_metrics(scores[:, cold_t.to(scores.device)], nothing[sl], relevant[sl], ks)
        for key in out:
            out[key] += float(res[key].sum())
    n = len(eval_users)
    return {**{k: v / n for k, v in out.items()}, "n_users": int(n), "n_candidates": int(len(cold))}


def random_scores(n_movies: int, seed: int = 0) -> Callable[[torch.Tensor], torch.Tensor]:
    """The documented fallback for models that cannot score unseen movies: i.i.d. uniform scores,
    fixed per (seed, user) so a user's order does not depend on the batching."""
    def score(users: torch.Tensor) -> torch.Tensor:
        out = torch.empty(len(users), n_movies)
        for i, user in enumerate(users.tolist()):
            g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(user))
            out[i] = torch.rand(n_movies, generator=g)
        return out.to(users.device)

    return score
