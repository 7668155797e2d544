"""Neighbourhood baselines over the user's history: ItemKNN and EASE.

Both score a user as ``x_u @ S`` with ``x_u`` the user's binary history row (every rated movie,
or only the liked ones: ``history = "all" | "positives"``) and ``S`` an item-item matrix learned
from the train part. At test time the history is train + valid (the one fold-in rule of the
harness), so the user's most recent ratings count without refitting.

* :class:`EASE` (Steck 2019): ``S = I - P / diag(P)`` with ``P = (X^T X + lambda I)^-1``, zero
  diagonal; the regularisation weight is chosen on valid from ``lambdas`` inside ``fit`` (one
  closed-form solve each).
* :class:`ItemKNN`: cosine similarity ``X_i . X_j / (|X_i| |X_j| + shrink)``, only each item's
  ``k`` nearest neighbours kept; ``k`` and ``shrink`` chosen on valid from small grids.

Memory: ``S`` is dense ``n_movies^2`` floats for EASE (ML-1M: 55 MB; ML-25M's 62k movies would
need 15 GB, so EASE is an ML-1M-size baseline) and ``n_movies * k`` for ItemKNN. ``fit``
refuses, with one line, a size whose dense matrices exceed the available memory
(:func:`check_memory`).
"""

from __future__ import annotations

import dataclasses
import itertools
import time

import numpy as np
import scipy.sparse as sp
import torch

from posterkg.errors import InputError
from posterkg.gnn.base import FitInfo, ModelInputs, Recommender

# bytes per item-item entry fit() holds at its peak: EASE the float64 Gram matrix, its copy, the
# inverse and the scaled result, plus float32 candidate and best matrices; ItemKNN the float32
# co-occurrences, similarities, top-k result and the best one
PEAK_BYTES = {"ease": 40, "itemknn": 20}


def available_bytes() -> int | None:
    """MemAvailable of /proc/meminfo (None where it cannot be read)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def check_memory(name: str, n_movies: int, available: int | None = None) -> None:
    """A clear error before a dense n_movies x n_movies fit that cannot fit in memory."""
    need = PEAK_BYTES[name] * n_movies * n_movies
    avail = available_bytes() if available is None else available
    if avail is not None and need > avail:
        raise InputError(
            f"{name} needs about {need / 2**30:.1f} GB for {n_movies:,} movies (dense item-item "
            f"matrices) but {avail / 2**30:.1f} GB are available: train lightgcn, bprmf or "
            f"posterkg-seq at this size (docs/scale.md), or set [models.{name}] memory_check = false")


# EASE's regularisation grid (chosen on valid): the EASE baseline's and the sequence models'
# collaborative part's
EASE_LAMBDAS = (250.0, 500.0, 1000.0, 2000.0, 4000.0, 8000.0)


def ease_matrix(gram: torch.Tensor, l2: float) -> torch.Tensor:
    """EASE's item-item matrix ``I - P / diag(P)``, ``P = (G + l2 I)^-1``, zero diagonal, float32,
    from the float64 Gram matrix ``G = X^T X`` (left unchanged)."""
    diag = torch.arange(gram.shape[0])
    gg = gram.clone()
    gg[diag, diag] += l2
    p = torch.linalg.inv(gg)
    b = -p / torch.diagonal(p).unsqueeze(0)
    b[diag, diag] = 0.0
    return b.float()


def gram_matrix(history, which: str = "all") -> torch.Tensor:
    """``X^T X`` (float64, dense) of the users' binary history rows."""
    x = _history_matrix(history, which)
    return torch.from_numpy((x.T @ x).toarray().astype(np.float64))


def _history_matrix(history, which: str) -> sp.csr_matrix:
    return history.positives() if which == "positives" else history.csr()


class _ItemItem(Recommender):
    trainer = "fit"

    def __init__(self, inputs: ModelInputs, cfg=None):
        super().__init__(inputs, cfg)
        self.register_buffer("S", torch.zeros(0))   # set by fit (dense [n, n] or sparse CSR)

    def load_state_dict(self, state, *args, **kwargs):
        if "S" in state:     # the item-item matrix is sized by fit: take the stored one's shape
            self.S = torch.empty_like(state["S"])
        return super().load_state_dict(state, *args, **kwargs)

    @torch.no_grad()
    def movie_vectors(self) -> torch.Tensor:
        """Each movie's column of the item-item matrix (who it is recommended from)."""
        return self.S.T.contiguous()

    @torch.no_grad()
    def score(self, users: torch.Tensor, history=None) -> torch.Tensor:
        x = _history_matrix(history, self.cfg.history)[users.cpu().numpy()]
        xt = torch.from_numpy(x.toarray()).to(self.S.device)
        return xt @ self.S

    def _select(self, candidates, build, valid_fn, verbose: bool) -> FitInfo:
        hist, best, best_s, best_p, t0 = [], None, None, None, time.perf_counter()
        for i, params in enumerate(candidates):
            self.S = build(**params)
            valid = valid_fn(self)
            if valid is None:            # not measured (a refit: one candidate, the one chosen before)
                hist.append({"epoch": i + 1, **params})
                if best is None:
                    best, best_s, best_p = {}, self.S, (i + 1, params)
                continue
            hist.append({"epoch": i + 1, **params, "valid_ndcg@20": valid["ndcg@20"]})
            if verbose:
                print(f"{self.name} {params}: valid NDCG@20 {valid['ndcg@20']:.4f}", flush=True)
            if not best or valid["ndcg@20"] > best["ndcg@20"]:
                best, best_s, best_p = valid, self.S, (i + 1, params)
        self.S = best_s
        self.chosen = best_p[1]
        for k, v in best_p[1].items():
            setattr(self.cfg, k, v)
        return FitInfo(hist, best_p[0], best, (time.perf_counter() - t0) / max(len(candidates), 1))

    def refit_config(self):
        """The config of a refit (:func:`posterkg.gnn.train.refit`): the grid narrowed to the values
        chosen on valid."""
        grid = {name: [self.chosen[key]] for key, name in self._grid.items()}
        return dataclasses.replace(self.cfg, **grid)


class EASE(_ItemItem):
    _grid = {"l2": "lambdas"}     # chosen value -> its config list
    @dataclasses.dataclass
    class Config:
        lambdas: list = dataclasses.field(default_factory=lambda: list(EASE_LAMBDAS))
        history: str = "all"         # "all" rated movies or "positives" (>= 4) form the rows
        l2: float = 0.0              # the chosen lambda (set by fit)
        memory_check: bool = True    # refuse a fit that cannot fit in the available memory

    def fit(self, inputs: ModelInputs, train_cfg, valid_fn, verbose: bool = False) -> FitInfo:
        if self.cfg.memory_check:
            check_memory("ease", self.n_movies)
        g = gram_matrix(inputs.data.history("valid"), self.cfg.history)   # = the train part

        def build(l2: float) -> torch.Tensor:
            return ease_matrix(g, l2)

        return self._select([{"l2": float(l)} for l in self.cfg.lambdas], build, valid_fn, verbose)


class ItemKNN(_ItemItem):
    _grid = {"k": "ks", "shrink": "shrinks"}
    @dataclasses.dataclass
    class Config:
        ks: list = dataclasses.field(default_factory=lambda: [100, 200, 400, 800])
        shrinks: list = dataclasses.field(default_factory=lambda: [0.0, 10.0, 50.0])
        history: str = "all"
        k: int = 0                   # chosen neighbourhood size (set by fit)
        shrink: float = 0.0          # chosen shrinkage (set by fit)
        memory_check: bool = True

    def fit(self, inputs: ModelInputs, train_cfg, valid_fn, verbose: bool = False) -> FitInfo:
        if self.cfg.memory_check:
            check_memory("itemknn", self.n_movies)
        x = _history_matrix(inputs.data.history("valid"), self.cfg.history).astype(np.float32)
        co = torch.from_numpy((x.T @ x).toarray())
        norm = torch.sqrt(torch.diagonal(co)).clamp(min=1e-12)
        n = co.shape[0]

        def build(k: int, shrink: float) -> torch.Tensor:
            sim = co / (norm[:, None] * norm[None, :] + shrink)
            sim.fill_diagonal_(0.0)
            kk = min(k, n - 1)
            top = torch.topk(sim, kk, dim=0)          # each item's (column's) k nearest neighbours
            out = torch.zeros_like(sim)
            out.scatter_(0, top.indices, top.values)
            return out

        cands = [{"k": int(k), "shrink": float(s)} for k, s in itertools.product(self.cfg.ks, self.cfg.shrinks)]
        return self._select(cands, build, valid_fn, verbose)
