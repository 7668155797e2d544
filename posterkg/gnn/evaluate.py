"""The fixed evaluation protocol every model (baselines included) is measured with.

* Relevant items of a user: the movies of the evaluated part (``test``, or ``valid`` for early
  stopping) that the user rated >= 4.
* Full ranking over ALL movies of the catalogue, excluding the user's movies of the earlier parts
  (``test``: train + valid; ``valid``: train). No sampled negatives.
* Recall@k = hits in the top k / |relevant|.
* NDCG@k with binary relevance: DCG = sum over hits of 1 / log2(rank + 1) (rank from 1); the
  ideal DCG puts min(|relevant|, k) hits at the top.
* Coverage@k = share of the catalogue's movies that appear in at least one evaluated user's top k.
* Users with no relevant item in the evaluated part are excluded from the means (they have no
  defined recall); ``n_users`` in the result says how many were evaluated.

Scoring is vectorised: ``score_fn(user_batch) -> [batch, n_movies]`` scores, seen movies are set to
``-inf`` and ``torch.topk`` picks the top k per batch of users.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import scipy.sparse as sp
import torch

from posterkg.gnn.data import Interactions
from posterkg.lookup import find_sorted

ScoreFn = Callable[[torch.Tensor], torch.Tensor]

METRICS = ("recall", "ndcg")


def rank_metrics(scores: torch.Tensor, seen: sp.csr_matrix, relevant: sp.csr_matrix,
                 ks: Sequence[int] = (10, 20)) -> dict[str, np.ndarray]:
    """Per-user metrics for one batch: ``scores`` [B, n_movies]; ``seen``/``relevant`` the B
    matching rows. Returns ``recall@k`` / ``ndcg@k`` arrays [B] and ``top`` [B, max k] indices."""
    scores = scores.detach().float().clone()
    b, n = scores.shape
    if seen.nnz:
        rows = torch.from_numpy(np.repeat(np.arange(b), np.diff(seen.indptr)))
        cols = torch.from_numpy(seen.indices.astype(np.int64))
        scores[rows.to(scores.device), cols.to(scores.device)] = float("-inf")
    kmax = min(max(ks), n)
    top = torch.topk(scores, kmax, dim=1).indices.cpu()
    hits = torch.from_numpy(_hits(top.numpy(), relevant, n))     # [B, kmax]
    n_rel = torch.from_numpy(np.diff(relevant.indptr)).float()   # [B]
    disc = 1.0 / torch.log2(torch.arange(kmax, dtype=torch.float32) + 2.0)
    out: dict[str, np.ndarray] = {"top": top.numpy()}
    for k in ks:
        kk = min(k, kmax)
        h = hits[:, :kk]
        out[f"recall@{k}"] = (h.sum(1) / n_rel.clamp(min=1)).numpy()
        dcg = (h * disc[:kk]).sum(1)
        ideal_n = torch.minimum(n_rel, torch.tensor(float(kk))).long()
        cum = torch.cat([torch.zeros(1), disc[:kk].cumsum(0)])
        idcg = cum[ideal_n]
        out[f"ndcg@{k}"] = (dcg / idcg.clamp(min=1e-12)).numpy()
    return out


def _hits(top: np.ndarray, relevant: sp.csr_matrix, n: int) -> np.ndarray:
    """float32 [B, kmax]: 1 where ``top[i, j]`` is in row i of ``relevant``, looked up in the
    rows' sorted (row, movie) keys (no dense [B, n_movies] mask)."""
    b = top.shape[0]
    if not relevant.nnz:
        return np.zeros(top.shape, np.float32)
    rel_keys = np.sort(np.repeat(np.arange(b, dtype=np.int64), np.diff(relevant.indptr)) * n
                       + relevant.indices.astype(np.int64))
    keys = np.arange(b, dtype=np.int64)[:, None] * n + top.astype(np.int64)
    return find_sorted(rel_keys, keys)[1].astype(np.float32)


def robust_relevant(data: Interactions, part: str = "test") -> sp.csr_matrix:
    """The relevant matrix of ``part`` without the ratings that share a second with the user's
    last rating of the part before it (MovieLens rates in bursts and the protocol breaks ties
    by movie id, so a sequence model could learn id order inside a burst): the robustness
    column of the accuracy table."""
    earlier = {"test": "valid", "valid": "train"}[part]
    prev = data.parts[earlier]
    last = np.full(data.n_users, np.iinfo(np.int64).min, np.int64)
    np.maximum.at(last, prev.users, prev.ts)
    p = data.parts[part]
    keep = (p.ratings >= data.relevant_min) & (p.ts != last[p.users])
    mat = sp.csr_matrix((np.ones(int(keep.sum()), np.float32), (p.users[keep], p.movies[keep])),
                        shape=(data.n_users, data.n_movies))
    mat.sum_duplicates()
    mat.data[:] = 1.0
    return mat


def evaluate_model(model, data: Interactions, part: str = "test", *, robust: bool = False,
                   history_of: str | None = None, **kwargs) -> dict[str, float]:
    """:func:`evaluate` of a :class:`~posterkg.gnn.base.Recommender`: scored with the history
    known when ``part`` is predicted (train for valid, train + valid for test: the harness's one
    fold-in rule). ``history_of="valid"`` scores test with the train history only (the "train
    only" column); the excluded movies stay the protocol's either way."""
    history = data.history(history_of or part)
    rel = robust_relevant(data, part) if robust else None
    return evaluate(lambda users: model.score(users, history), data, part, relevant=rel, **kwargs)


@torch.no_grad()
def evaluate(score_fn: ScoreFn, data: Interactions, part: str = "test",
             ks: Sequence[int] = (10, 20), coverage_k: int = 20, batch_size: int = 1024,
             device: str | torch.device = "cpu", users: np.ndarray | None = None,
             relevant: sp.csr_matrix | None = None) -> dict[str, float]:
    """Evaluate ``score_fn`` on ``part`` under the fixed protocol (see module doc).

    Returns ``{"recall@10": ..., "ndcg@10": ..., ..., "coverage@20": ..., "n_users": ...}``.
    ``users`` optionally restricts the evaluated users (indices); the default is every user with
    at least one relevant item in ``part``. ``relevant`` replaces the part's relevant matrix
    (e.g. :func:`robust_relevant`).
    """
    ks = tuple(sorted(set(ks) | {coverage_k}))
    seen = data.seen(part)
    relevant = data.relevant(part) if relevant is None else relevant
    n_rel = np.diff(relevant.indptr)
    cand = np.flatnonzero(n_rel > 0)
    if users is not None:
        cand = np.intersect1d(cand, np.asarray(users, dtype=np.int64))
    sums = {f"{m}@{k}": 0.0 for m in METRICS for k in ks}
    covered = np.zeros(data.n_movies, dtype=bool)
    for start in range(0, len(cand), batch_size):
        batch = cand[start:start + batch_size]
        scores = score_fn(torch.as_tensor(batch, dtype=torch.long, device=device))
        res = rank_metrics(scores, seen[batch], relevant[batch], ks)
        for key in sums:
            sums[key] += float(res[key].sum())
        covered[res["top"][:, :coverage_k].ravel()] = True
    n = max(len(cand), 1)
    out = {key: val / n for key, val in sums.items()}
    out[f"coverage@{coverage_k}"] = float(covered.mean()) if len(cand) else 0.0
    out["n_users"] = int(len(cand))
    return out
