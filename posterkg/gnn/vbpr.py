"""VBPR (He & McAuley 2016): matrix factorisation plus a learned projection of a visual feature.

Score of user ``u`` for movie ``i``::

    s(u, i) = gamma_u . gamma_i  +  theta_u . (E f_i)  +  beta' . f_i

* ``gamma_u``, ``gamma_i``: id factors (``dim``), as in BPR-MF;
* ``f_i``: the movie's dense feature, the concatenation of the configured ``features``
  (default the poster embedding, ``[models.vbpr] features = ["poster", "text"]`` adds the text
  embedding), each standardised column-wise over the movies that have it (mean 0, std 1); a movie
  without the feature has a zero row;
* ``E``: a learned ``visual_dim x D`` projection shared by every movie, ``theta_u`` the user's
  visual factors (``visual_dim``);
* ``beta'``: a learned visual bias vector (``D``): how much each feature dimension raises every
  user's score (the paper's ``beta'^T f_i``; the user-level biases cancel in BPR and are dropped).

The score is exposed as a dot product (the contract's ``embeddings(graph)``): user rows
``[gamma_u, theta_u, 1]``, movie rows ``[gamma_i, E f_i, beta' . f_i]``, so the shared BPR loop
(:mod:`posterkg.gnn.train`) trains it and every dot-product tool (recommend, similar, the
evaluation) works unchanged.

**Cold movies.** A movie with no train rating has no id information: its ``gamma_i`` is fixed at
zero, so its score comes from its feature alone: ``theta_u . (E f_i) + beta' . f_i``. While
training, such a movie (only ever a sampled negative) scores zero altogether: its feature is not
learnt against, so a movie added after training and one held out for cold-start are alike. That is a forward pass,
no retraining: what the cold-start protocol (:mod:`posterkg.evaluation.coldstart`) measures. The
``warm`` buffer (movies with a train rating) is saved with the model.

The model does not read the graph: masking graph edges (explanations) leaves its scores as they
are.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import nn

from posterkg.gnn.base import Graph, ModelInputs, Recommender


def standardise(feat: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Column-wise (x - mean) / std over the rows with ``mask``; rows without it are zero."""
    feat = np.asarray(feat, np.float32)
    mask = np.asarray(mask, bool)
    out = np.zeros_like(feat)
    if mask.any():
        rows = feat[mask]
        mean = rows.mean(0)
        std = np.maximum(rows.std(0), 1e-6)
        out[mask] = (rows - mean) / std
    return out


class VBPR(Recommender):
    trainer = "bpr"

    @dataclasses.dataclass
    class Config:
        dim: int = 64                   # id factors gamma
        visual_dim: int = 64            # visual factors theta, rows of E
        features: list = dataclasses.field(default_factory=lambda: ["poster"])   # "poster", "text"
        poster_encoder: str = "efficientnet-lite0"
        text_encoder: str = "minilm"
        init_std: float = 0.1

    def __init__(self, inputs: ModelInputs, cfg=None):
        super().__init__(inputs, cfg)
        c = self.cfg
        if not c.features:
            raise ValueError("vbpr needs at least one dense feature (features = [\"poster\"])")
        if c.dim < 1 or c.visual_dim < 1:
            raise ValueError("vbpr: dim and visual_dim must be >= 1")
        blocks = []
        for name in c.features:
            if name not in inputs.features:
                raise ValueError(f"feature {name!r} was not assembled for vbpr")
            blocks.append(standardise(inputs.features[name], inputs.feature_mask[name]))
        feat = np.concatenate(blocks, axis=1)
        self.register_buffer("feat", torch.from_numpy(feat))
        warm = np.asarray(inputs.data.matrix("train").sum(0)).ravel() > 0
        self.register_buffer("warm", torch.from_numpy(warm.astype(np.float32)).unsqueeze(1))
        D = feat.shape[1]
        self.user = nn.Embedding(self.n_users, c.dim)
        self.movie = nn.Embedding(self.n_movies, c.dim)
        self.theta = nn.Embedding(self.n_users, c.visual_dim)
        self.E = nn.Linear(D, c.visual_dim, bias=False)
        self.beta = nn.Linear(D, 1, bias=False)
        nn.init.normal_(self.user.weight, std=c.init_std)
        nn.init.normal_(self.movie.weight, std=c.init_std)
        nn.init.normal_(self.theta.weight, std=c.init_std)
        # E f has entries of about init_std for standardised f
        nn.init.normal_(self.E.weight, std=c.init_std / max(D, 1) ** 0.5)
        nn.init.zeros_(self.beta.weight)

    def visual(self) -> torch.Tensor:
        """[n_movies, visual_dim] projected features ``E f_i``."""
        return self.E(self.feat)

    def embeddings(self, graph: Graph | None = None):
        ones = torch.ones(self.n_users, 1, device=self.user.weight.device)
        users = torch.cat([self.user.weight, self.theta.weight, ones], 1)
        movies = torch.cat([self.movie.weight * self.warm, self.visual(), self.beta(self.feat)], 1)
        if self.training:
            # a movie without train ratings is unknown while training, even as a sampled
            # negative: its feature is not learnt against (else a high-dimensional feature lets
            # the model memorise "never liked" for exactly the movies cold-start asks about)
            movies = movies * self.warm
        return users, movies

    def ego(self, users, movies):
        return [self.user(users), self.theta(users), self.movie(movies) * self.warm[movies]]

    @torch.no_grad()
    def score_parts(self, users: torch.Tensor, movies: torch.Tensor) -> dict[str, torch.Tensor]:
        """The three terms of the score, [len(users), len(movies)] each: ``id``, ``visual``
        (theta_u . E f_i) and ``bias`` (beta' . f_i)."""
        g = self.movie.weight[movies] * self.warm[movies]
        v = self.visual()[movies]
        b = self.beta(self.feat[movies]).squeeze(1)
        return {"id": self.user.weight[users] @ g.T, "visual": self.theta.weight[users] @ v.T,
                "bias": b.unsqueeze(0).expand(len(users), -1).clone()}
