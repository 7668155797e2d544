"""Loss terms.

* :func:`bpr` - Bayesian personalised ranking, ``-log sigmoid(s(u, i) - s(u, j))`` averaged.
  The trainer applies it to sampled negatives, and (posterkg model) a second time with explicit
  dislikes (train rating <= 2) as hard negatives, weighted by ``hard_negative_weight``.
* :func:`info_nce` - contrastive term between two views of the same nodes (posterkg: the stage-1
  representation vs the stage-2 one): each node's two views are pulled together and pushed away
  from the other nodes of the batch (temperature ``tau``; cosine similarity).
* :func:`structure` - the knowledge-graph structure loss: positive user-movie edges close
  (cosine -> 1), negative (disliked) edges apart (cosine below ``-margin`` is free, above costs),
  and movies pulled towards the embeddings of their concepts (concepts as cluster centres).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bpr(u: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor,
        mask: torch.Tensor | None = None) -> torch.Tensor:
    diff = (u * pos).sum(-1) - (u * neg).sum(-1)
    loss = F.softplus(-diff)                       # = -log sigmoid(diff), numerically stable
    if mask is not None:
        m = mask.float()
        return (loss * m).sum() / m.sum().clamp(min=1.0)
    return loss.mean()


def info_nce(a: torch.Tensor, b: torch.Tensor, tau: float = 0.2) -> torch.Tensor:
    """Symmetric-free InfoNCE: row i of ``a`` should match row i of ``b`` among all rows of ``b``."""
    a = F.normalize(a, dim=-1)
    b = F.normalize(b, dim=-1)
    logits = a @ b.T / tau
    target = torch.arange(len(a), device=a.device)
    return F.cross_entropy(logits, target)


def structure(u_pos: torch.Tensor, m_pos: torch.Tensor, u_neg: torch.Tensor | None,
              m_neg: torch.Tensor | None, m_con: torch.Tensor | None, c_con: torch.Tensor | None,
              con_weight: torch.Tensor | None = None, margin: float = 0.0) -> torch.Tensor:
    """Positive edges close, negative edges apart, movies near their concept centres."""
    loss = (1 - F.cosine_similarity(u_pos, m_pos, dim=-1)).mean()
    if u_neg is not None and len(u_neg):
        loss = loss + F.relu(F.cosine_similarity(u_neg, m_neg, dim=-1) + margin).mean()
    if m_con is not None and len(m_con):
        d = 1 - F.cosine_similarity(m_con, c_con, dim=-1)
        if con_weight is not None:
            loss = loss + (d * con_weight).sum() / con_weight.sum().clamp(min=1e-12)
        else:
            loss = loss + d.mean()
    return loss
