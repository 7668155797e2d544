"""A prefix trie of valid semantic IDs and the beam search constrained by it (TIGER's decoding).

A movie's semantic ID is a tuple of ``D`` codes (the RQ-VAE codes, then one disambiguation code;
:mod:`posterkg.semantic`), position ``d`` drawing from ``sizes[d]`` values. :class:`CodeTrie`
stores, per depth, a dense child table ``child[d][node, code] -> node at depth d + 1`` (-1 =
no movie has that prefix), the number of movies under each node, and at the leaves the movie
index. Nodes are numbered per depth; depth 0 is the root (node 0), depth ``D`` the leaves (one per
movie: IDs are unique, a duplicate is an error).

:func:`beam_search` extends ``width`` prefixes one code at a time. A candidate code is allowed only
when the trie has a child there **and** at least one movie under that child is not among the
row's excluded (seen) movies: counts of excluded movies per node are subtracted from the trie's
counts, so the beam never spends a slot on a prefix that can only end in a seen movie, and every
finished beam is a real, unseen movie. Scores are the sums of the step log-probabilities the
``step`` function returns: the model's unconstrained next-code distribution, with invalid codes
cut, not renormalised (``renorm=None``); or renormalised at every step over the codes that extend
the prefix in the trie (``"trie"``) or that still lead to an unseen, allowed movie (``"left"``),
for a model trained with the same softmax (TIGER's ``code_softmax``).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch


class CodeTrie:
    """The valid ID prefixes of ``codes`` ([n_movies, D] int; a row of -1 = movie without an ID)."""

    def __init__(self, codes: np.ndarray, sizes: Sequence[int]):
        codes = np.asarray(codes, np.int64)
        if codes.ndim != 2:
            raise ValueError("semantic IDs must be a [n_movies, D] matrix")
        self.n_movies, self.depth = codes.shape
        self.sizes = [int(s) for s in sizes]
        if len(self.sizes) != self.depth:
            raise ValueError(f"{self.depth} code positions but {len(self.sizes)} sizes")
        has = (codes >= 0).all(1)
        partial = (codes >= 0).any(1) & ~has
        if partial.any():
            raise ValueError(f"movie index {int(np.flatnonzero(partial)[0])} has a partial semantic ID")
        self.movies = np.flatnonzero(has)
        c = codes[has]
        for d, k in enumerate(self.sizes):
            if len(c) and c[:, d].max() >= k:
                raise ValueError(f"code {int(c[:, d].max())} at position {d} is outside [0, {k})")
        node = np.zeros(len(c), np.int64)
        self.node_of = [np.where(has, 0, -1).astype(np.int64)]    # per depth: movie -> node (-1: no ID)
        self.child: list[np.ndarray] = []
        self.counts = [np.array([len(c)], np.int64)]
        n_parent = 1
        for d, k in enumerate(self.sizes):
            key = node * k + c[:, d]
            uniq, inv = np.unique(key, return_inverse=True)
            tab = np.full((n_parent, k), -1, np.int64)
            tab[uniq // k, uniq % k] = np.arange(len(uniq))
            self.child.append(tab)
            node = inv.reshape(-1).astype(np.int64)
            full = np.full(self.n_movies, -1, np.int64)
            full[self.movies] = node
            self.node_of.append(full)
            self.counts.append(np.bincount(node, minlength=len(uniq)).astype(np.int64))
            n_parent = len(uniq)
        if n_parent != len(c):
            dup = np.flatnonzero(self.counts[-1] > 1)[0]
            who = self.movies[node == dup][:2].tolist()
            raise ValueError(f"movies {who} share one semantic ID: IDs must be unique "
                             f"(the disambiguation code makes them so)")
        self.leaf_movie = np.empty(n_parent, np.int64)
        self.leaf_movie[node] = self.movies
        self._torch: dict = {}

    def __len__(self) -> int:
        return len(self.movies)

    def tensors(self, device) -> dict:
        key = str(device)
        if key not in self._torch:
            t = lambda a: torch.from_numpy(a).to(device)   # noqa: E731
            self._torch[key] = {"child": [t(x) for x in self.child], "counts": [t(x) for x in self.counts],
                                "node_of": [t(x) for x in self.node_of], "leaf_movie": t(self.leaf_movie)}
        return self._torch[key]

    def codes_of(self, movie: int) -> tuple[int, ...] | None:
        """The code tuple of a movie index, read back from the trie (None: no ID)."""
        if self.node_of[-1][movie] < 0:
            return None
        leaf = int(self.node_of[-1][movie])
        # walk down from the root following the child tables to the leaf (independent of `codes`)
        out, node = [], 0
        for d in range(self.depth):
            target = int(self.node_of[d + 1][movie])
            code = int(np.flatnonzero(self.child[d][node] == target)[0])
            out.append(code)
            node = target
        assert node == leaf
        return tuple(out)


StepFn = Callable[[torch.Tensor], torch.Tensor]


def beam_search(step: StepFn, trie: CodeTrie, batch: int, width: int,
                seen: tuple[np.ndarray, np.ndarray] | None = None,
                device: str | torch.device = "cpu",
                allowed: np.ndarray | None = None,
                renorm: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Constrained beam search for ``batch`` rows.

    ``step(prefix)``: ``prefix`` [batch, W, d] codes chosen so far -> [batch, W, sizes[d]]
    log-probabilities of the next code. ``seen``: (row, movie index) pairs excluded per row.
    ``allowed``: optional bool [n_movies], the only movies that may come out (e.g. the cold-start
    protocol's candidates). ``renorm``: None, "trie" or "left" (module docstring). Returns
    (movies [batch, width] long, -1 where fewer than ``width`` unseen movies exist; scores
    [batch, width], -inf there), best first."""
    if renorm not in (None, "trie", "left"):
        raise ValueError(f"renorm must be None, 'trie' or 'left', not {renorm!r}")
    t = trie.tensors(device)
    D = trie.depth
    if allowed is None:
        base = t["counts"]
    else:
        allowed = np.asarray(allowed, bool)
        base = [torch.from_numpy(np.bincount(nodes[allowed & (nodes >= 0)], minlength=len(cnt)).astype(np.int64))
                .to(device) for nodes, cnt in zip(trie.node_of, trie.counts)]
    remaining = [cnt.unsqueeze(0).expand(batch, -1).clone() for cnt in base]
    if seen is not None and len(seen[0]):
        rows, cols = np.asarray(seen[0], np.int64), np.asarray(seen[1], np.int64)
        if allowed is not None:
            rows, cols = rows[allowed[cols]], cols[allowed[cols]]
        pairs = np.unique(rows * trie.n_movies + cols)
        rows = torch.as_tensor(pairs // trie.n_movies, device=device)
        cols = torch.as_tensor(pairs % trie.n_movies, device=device)
        for d in range(D + 1):
            nodes = t["node_of"][d][cols]
            ok = nodes >= 0
            remaining[d].index_put_((rows[ok], nodes[ok]),
                                    -torch.ones(int(ok.sum()), dtype=torch.long, device=device), accumulate=True)
    node = torch.zeros(batch, 1, dtype=torch.long, device=device)
    score = torch.where(remaining[0] > 0, 0.0, float("-inf")).float()          # [batch, 1]
    prefix = torch.zeros(batch, 1, 0, dtype=torch.long, device=device)
    for d in range(D):
        K = trie.sizes[d]
        W = node.shape[1]
        logp = step(prefix).float()                                             # [batch, W, K]
        cand = t["child"][d][node.clamp(min=0)]                                 # [batch, W, K]
        left = remaining[d + 1].gather(1, cand.clamp(min=0).view(batch, -1)).view(batch, W, K)
        ok = (cand >= 0) & (left > 0) & torch.isfinite(score).unsqueeze(-1)
        if renorm is not None:
            over = (cand >= 0) if renorm == "trie" else (cand >= 0) & (left > 0)
            logp = logp.masked_fill(~over, float("-inf"))
            logp = logp - torch.logsumexp(logp, -1, keepdim=True)   # NaN only where nothing is over (not ok)
        total = torch.where(ok, score.unsqueeze(-1) + logp, torch.full_like(logp, float("-inf")))
        n = min(width, W * K)
        score, idx = torch.topk(total.view(batch, -1), n, dim=1)
        beam, code = idx // K, idx % K
        node = torch.where(torch.isfinite(score), cand.view(batch, -1).gather(1, idx), torch.full_like(idx, -1))
        prefix = torch.cat([prefix.gather(1, beam.unsqueeze(-1).expand(-1, -1, d)), code.unsqueeze(-1)], -1)
    movies = torch.where(node >= 0, t["leaf_movie"][node.clamp(min=0)], torch.full_like(node, -1))
    if movies.shape[1] < width:
        pad = width - movies.shape[1]
        movies = torch.cat([movies, torch.full((batch, pad), -1, dtype=torch.long, device=device)], 1)
        score = torch.cat([score, torch.full((batch, pad), float("-inf"), device=device)], 1)
    return movies, score
