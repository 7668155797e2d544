"""The RQ-VAE tokenizer: a movie's feature vector -> L codes (its semantic ID, before disambiguation).

Encoder MLP -> ``levels`` residual codebooks of ``codebook_size`` codes of dimension ``code_dim``
-> decoder MLP (Lee et al. 2022, as used by TIGER, Rajput et al. 2023).

* loss = reconstruction (squared error summed over the input dimensions, mean over items: the
  per-dimension mean of L2-normalised blocks is too small to hold the encoder against the
  commitment loss, which then collapses every item onto one code) + sum over levels of (codebook ``||sg(r_l) - e_l||^2`` +
  ``beta`` x commitment ``||r_l - sg(e_l)||^2``), with the straight-through estimator from the
  quantised vector to the encoder output (or, with ``rotation = True``, the rotation trick of
  Fifty et al. 2024: the gradient is carried through a fixed rotation + rescaling of ``z`` onto
  ``z_q``).
* k-means initialisation: before the first step each level's codebook is set to the k-means
  centroids (scikit-learn) of that level's residuals on the first batch (on a random sample of
  ``max(batch_size, 4 K)`` items when the batch has fewer than 4 K items, so that k-means has
  something to cluster).
* dead-code re-seeding (``reseed = True``): after every epoch but the last, codes that no item
  chose in that epoch are set to the residuals (at that level) of distinct random items, drawn
  with probability proportional to their squared quantisation error (k-means++ style), and their
  optimizer state is cleared.
* :meth:`RQVAE.codes` is eval mode and argmin distance: deterministic for a fixed model.

Everything here works on tensors/arrays; nothing opens the database (see :mod:`posterkg.semantic.ids`).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable

import numpy as np
import torch
from torch import nn


@dataclasses.dataclass
class RQVAEConfig:
    in_dim: int
    levels: int = 3
    codebook_size: int = 256
    code_dim: int = 32
    hidden: tuple[int, ...] = (512, 256)
    beta: float = 0.25
    rotation: bool = False


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _sq_dist(r: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Squared distances [n, K] between rows of r [n, D] and codes c [K, D]."""
    return (r * r).sum(1, keepdim=True) - 2.0 * r @ c.T + (c * c).sum(1)[None, :]


def _rotate_to(z: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Rotation trick: ``s R z`` with R (rotating z's direction onto q's) and s = |q|/|z| held
    constant, so the forward value is q and the gradient to z goes through R, not the identity."""
    eps = 1e-8
    zn = z.norm(dim=1, keepdim=True).clamp_min(eps)
    qn = q.norm(dim=1, keepdim=True).clamp_min(eps)
    e = (z / zn).detach()
    qh = (q / qn).detach()
    r = e + qh
    r = (r / r.norm(dim=1, keepdim=True).clamp_min(eps)).detach()
    rz = z - 2.0 * r * (r * z).sum(1, keepdim=True) + 2.0 * qh * (e * z).sum(1, keepdim=True)
    return (qn / zn).detach() * rz


class RQVAE(nn.Module):
    def __init__(self, cfg: RQVAEConfig):
        super().__init__()
        self.cfg = cfg
        h = list(cfg.hidden)
        self.encoder = _mlp([cfg.in_dim, *h, cfg.code_dim])
        self.decoder = _mlp([cfg.code_dim, *reversed(h), cfg.in_dim])
        self.codebooks = nn.Parameter(torch.randn(cfg.levels, cfg.codebook_size, cfg.code_dim) * 0.1)
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))

    # -- quantisation ------------------------------------------------------------------------
    def quantise(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """(z_q [n, D], codes [n, L], vq loss scalar, residuals per level) for encoder outputs z."""
        r = z
        zq = torch.zeros_like(z)
        codes, residuals = [], []
        vq = z.new_zeros(())
        for lvl in range(self.cfg.levels):
            c = self.codebooks[lvl]
            residuals.append(r)
            idx = _sq_dist(r.detach(), c.detach()).argmin(1)
            e = c[idx]
            vq = vq + ((r.detach() - e) ** 2).sum(1).mean() + self.cfg.beta * ((r - e.detach()) ** 2).sum(1).mean()
            zq = zq + e
            r = r - e.detach()
            codes.append(idx)
        return zq, torch.stack(codes, 1), vq, residuals

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        z = self.encoder(x)
        zq, codes, vq, residuals = self.quantise(z)
        if self.cfg.rotation:
            zst = _rotate_to(z, zq.detach())
        else:
            zst = z + (zq - z).detach()
        # the codebooks get their gradient from the codebook loss only, the encoder from the
        # reconstruction (through zst) and the commitment loss.
        xhat = self.decoder(zst)
        recon = ((xhat - x) ** 2).sum(1).mean()
        return {"recon": recon, "vq": vq, "loss": recon + vq, "codes": codes, "residuals": residuals}

    @torch.no_grad()
    def codes(self, x: np.ndarray | torch.Tensor, batch_size: int = 4096) -> np.ndarray:
        """Codes [n, L] (int64): eval mode, argmin distance at every level."""
        was = self.training
        self.eval()
        xt = torch.as_tensor(np.asarray(x, np.float32)) if not isinstance(x, torch.Tensor) else x.float()
        dev = self.codebooks.device
        out = []
        for s in range(0, len(xt), batch_size):
            z = self.encoder(xt[s:s + batch_size].to(dev))
            out.append(self.quantise(z)[1].cpu())
        self.train(was)
        if not out:
            return np.zeros((0, self.cfg.levels), np.int64)
        return torch.cat(out).numpy().astype(np.int64)

    @torch.no_grad()
    def reconstruction(self, x: np.ndarray) -> float:
        """Reconstruction error: squared error summed over the feature dimensions, mean over items
        (eval mode, through the quantised vector)."""
        was = self.training
        self.eval()
        xt = torch.as_tensor(np.asarray(x, np.float32)).to(self.codebooks.device)
        z = self.encoder(xt)
        zq = self.quantise(z)[0]
        err = float(((self.decoder(zq) - xt) ** 2).sum(1).mean())
        self.train(was)
        return err

    # -- initialisation and re-seeding ---------------------------------------------------------
    @torch.no_grad()
    def kmeans_init(self, x: torch.Tensor, seed: int) -> None:
        """Each level's codebook := k-means centroids of that level's residuals on ``x``."""
        from sklearn.cluster import KMeans

        K = self.cfg.codebook_size
        r = self.encoder(x)
        for lvl in range(self.cfg.levels):
            pts = r.detach().cpu().numpy().astype(np.float64)
            n_clusters = min(K, len(np.unique(pts.round(6), axis=0)))
            km = KMeans(n_clusters=n_clusters, n_init=1, random_state=seed + lvl, max_iter=100).fit(pts)
            cent = torch.as_tensor(km.cluster_centers_, dtype=torch.float32)
            if n_clusters < K:   # fewer distinct points than codes: the rest on random points
                g = torch.Generator().manual_seed(seed + lvl)
                extra = r[torch.randint(len(r), (K - n_clusters,), generator=g)].cpu()
                cent = torch.cat([cent, extra])
            self.codebooks.data[lvl] = cent.to(self.codebooks.device)
            idx = _sq_dist(r, self.codebooks[lvl]).argmin(1)
            r = r - self.codebooks[lvl][idx]
        self.initialised.fill_(True)

    @torch.no_grad()
    def reseed_dead(self, x: torch.Tensor, used: torch.Tensor, gen: torch.Generator,
                    optimizer: torch.optim.Optimizer | None = None) -> int:
        """Codes unused (``used[l, k] == 0``) := residuals of distinct random items at that level
        (drawn proportionally to their squared quantisation error).
        Returns how many codes were re-seeded."""
        self.eval()
        z = self.encoder(x)
        residuals = self.quantise(z)[3]
        self.train()
        n = 0
        state = optimizer.state.get(self.codebooks) if optimizer is not None else None
        for lvl in range(self.cfg.levels):
            dead = torch.nonzero(used[lvl] == 0).flatten()
            if len(dead) == 0:
                continue
            k = min(len(dead), len(x))
            # distinct random items, drawn with probability proportional to their squared
            # quantisation error at this level (k-means++ style): a dead code lands where the
            # live codes serve the items worst, not inside a cluster that already has its code
            c = self.codebooks[lvl]
            err = _sq_dist(residuals[lvl], c).min(1).values.clamp_min(0).cpu().double()
            if float(err.sum()) <= 0:
                err = torch.ones_like(err)
            pick = torch.multinomial(err / err.sum(), k, replacement=False, generator=gen).to(x.device)
            self.codebooks.data[lvl, dead[:k]] = residuals[lvl][pick]
            if state:
                for key in ("exp_avg", "exp_avg_sq"):
                    if key in state:
                        state[key][lvl, dead[:k]] = 0.0
            n += k
        return n


@dataclasses.dataclass
class FitResult:
    history: list[dict]          # per epoch: recon, vq, loss, usage per level, reseeded
    seconds: float


def fit(model: RQVAE, x: np.ndarray, *, epochs: int = 100, lr: float = 1e-3, batch_size: int = 256,
        seed: int = 0, reseed: bool = True, kmeans: bool = True, weight_decay: float = 0.0,
        on_epoch: Callable[[int, dict], None] | None = None) -> FitResult:
    """Train ``model`` on the rows of ``x`` (float32 [n, in_dim]). Deterministic for a seed."""
    torch.manual_seed(seed)
    dev = model.codebooks.device
    xt = torch.as_tensor(np.asarray(x, np.float32)).to(dev)
    n = len(xt)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    L, K = model.cfg.levels, model.cfg.codebook_size
    history = []
    t0 = time.perf_counter()
    model.train()
    for epoch in range(epochs):
        perm = torch.randperm(n, generator=gen).to(dev)
        if kmeans and not bool(model.initialised):
            first = perm[:batch_size]
            if len(first) < 4 * K:
                first = perm[:max(batch_size, min(n, 4 * K))]
            model.kmeans_init(xt[first], seed)
        used = torch.zeros(L, K, dtype=torch.long, device=dev)
        sums = {"recon": 0.0, "vq": 0.0, "loss": 0.0}
        for s in range(0, n, batch_size):
            out = model(xt[perm[s:s + batch_size]])
            opt.zero_grad(set_to_none=True)
            out["loss"].backward()
            opt.step()
            m = len(out["codes"])
            for k in sums:
                sums[k] += float(out[k].detach()) * m
            for lvl in range(L):
                used[lvl] += torch.bincount(out["codes"][:, lvl], minlength=K)
        rec = {k: v / n for k, v in sums.items()}
        rec["epoch"] = epoch + 1
        rec["usage"] = [(used[lvl] > 0).float().mean().item() for lvl in range(L)]
        rec["reseeded"] = model.reseed_dead(xt, used, gen, opt) if reseed and epoch < epochs - 1 else 0
        history.append(rec)
        if on_epoch is not None:
            on_epoch(epoch, rec)
    model.eval()
    return FitResult(history, time.perf_counter() - t0)


# -- metrics ------------------------------------------------------------------------------------

def usage(codes: np.ndarray, codebook_size: int) -> list[float]:
    """Share of the K codes used at each level."""
    return [len(np.unique(codes[:, lvl])) / codebook_size for lvl in range(codes.shape[1])]


def collision_stats(codes: np.ndarray) -> dict:
    """collision_rate: share of items whose L-tuple is shared with another item; max_group: the
    largest set of items sharing one tuple; distinct: number of distinct tuples."""
    if len(codes) == 0:
        return {"collision_rate": 0.0, "max_group": 0, "distinct": 0}
    _, inv, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    inv = np.asarray(inv).reshape(-1)
    return {"collision_rate": float((counts[inv] > 1).mean()), "max_group": int(counts.max()),
            "distinct": int(len(counts))}


def disambiguate(movie_ids: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """One extra code per item: 0, 1, 2 ... inside each group of identical L-tuples, in movie-id
    order. Returns the full IDs [n, L + 1], unique per item."""
    movie_ids = np.asarray(movie_ids, np.int64)
    codes = np.asarray(codes, np.int64)
    n = len(movie_ids)
    extra = np.zeros(n, np.int64)
    if n:
        _, inv = np.unique(codes, axis=0, return_inverse=True)
        inv = np.asarray(inv).reshape(-1)
        order = np.lexsort((movie_ids, inv))          # by group, then movie id
        g = inv[order]
        start = np.r_[0, np.flatnonzero(np.diff(g)) + 1]
        rank = np.arange(n) - np.repeat(start, np.diff(np.r_[start, n]))
        extra[order] = rank
    return np.concatenate([codes, extra[:, None]], 1)
