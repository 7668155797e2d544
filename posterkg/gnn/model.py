"""The posterkg recommender: a light two-stage, relation-aware GNN over the fused graph.

Nodes: users, movies, concepts, each with a free id embedding (``dim``).

Stage 1 learns three representations separately:

* item side (``item_side``): a movie's concept aggregation, the weighted mean of the embeddings of
  the concepts its poster shows (``movie -has-> concept`` edges, weights from the tagger's
  confidence);
* user side (``user_side``): a user's preference aggregation, the mean of the concepts the user
  likes minus the mean of the concepts the user dislikes (``user_prefs`` scores as weights);
* interaction side (``interaction_side``): signed propagation over the user-movie graph for
  ``signed_layers`` rounds: ``x' = P x + neutral_weight * Z x - neg_weight * N x`` with ``P``/``Z``/
  ``N`` the symmetric-normalised adjacencies of the positive / neutral / negative train edges
  (positive edges add, negative edges subtract); the layer mean, as in LightGCN.

The user's stage-1 vector is interaction + a * preference; the movie's is interaction + b * concepts
(``a``, ``b`` learned scalars).

Stage 2 (``stage2``) propagates these over the fused graph for ``stage2_layers`` rounds with
relation-aware attention. For every relation r (pos, neu, neg between users and movies, has between
movies and concepts, likes and dislikes between users and concepts; both directions) a node
receives the attention-weighted mean of its r-neighbours: attention logits come from a per-relation
scoring vector applied to each neighbour (``tanh(a_r . x_src)``), normalised by a softmax over the
node's r-neighbours (times the edge weights). The relation messages are then summed with a learned
**signed gate** per relation: ``+softplus(g_r)`` for relations that propagate (pos, neu, has,
likes) and ``-softplus(g_r)`` for relations that suppress (neg, dislikes). The softmax with
neighbour-only logits is computed exactly with two sparse products per relation,
``(R (e * x)) / (R e)``, so the whole model is full-graph sparse CSR algebra, with no per-edge
tensors.

The final embedding is the mean of the stage-2 layers (layer 0 = the stage-1 vectors); scores are
dot products. ``attention = false`` makes every relation a plain weighted mean; ``signed_gates =
false`` drops the suppressing relations (neg, dislikes) from stage 2 and fixes the other gates to 1.
``posterkg-novisual`` is this model with every concept node and edge removed.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn
from torch_geometric.utils import to_torch_csr_tensor

from posterkg.gnn import losses
from posterkg.gnn.base import Graph, ModelInputs, Recommender
from posterkg.gnn.data import Interactions
from posterkg.gnn.sparse import spmm, sym_norm_adj


@dataclasses.dataclass
class ModelConfig:
    """Config section ``[gnn_model]``: every part of the posterkg model can be switched off."""

    item_side: bool = True          # stage 1: movie <- its concepts
    user_side: bool = True          # stage 1: user <- liked minus disliked concepts
    interaction_side: bool = True   # stage 1: signed propagation over user-movie edges
    signed_layers: int = 3
    neg_weight: float = 0.2         # negative edges subtract with this weight in stage 1
    neutral_weight: float = 0.0     # neutral (rating 3) edges propagate with this weight
    stage2: bool = True
    stage2_layers: int = 1
    attention: bool = True
    signed_gates: bool = True
    hard_negative_weight: float = 0.0   # BPR with disliked train movies as negatives (off: hurt on valid, docs/gnn.md)
    cl_weight: float = 0.02             # InfoNCE, stage-1 vs stage-2 views
    cl_tau: float = 0.2
    struct_weight: float = 0.01         # structure loss
    struct_batch: int = 2048            # concept edges sampled per step for the structure loss
    init_std: float = 0.1
    dim: int = 64
    concepts: bool = True               # use concept nodes and edges (false: posterkg-novisual)


@dataclasses.dataclass
class GraphInputs:
    """The knowledge side of the fused graph in :class:`Interactions` index space."""

    n_concepts: int
    movie_concept: tuple[np.ndarray, np.ndarray, np.ndarray]   # movie idx, concept idx, weight
    user_likes: tuple[np.ndarray, np.ndarray, np.ndarray]      # user idx, concept idx, weight > 0
    user_dislikes: tuple[np.ndarray, np.ndarray, np.ndarray]   # user idx, concept idx, weight > 0
    concept_ids: np.ndarray | None = None                      # concept idx -> concept_id
    source: str = ""
    # optional user-movie edges by sign (+1, 0, -1) -> (user idx, movie idx); None = the train
    # edges of the Interactions (the same edges the graphs stage builds)
    interactions: dict[int, tuple[np.ndarray, np.ndarray]] | None = None

    def without_concepts(self) -> "GraphInputs":
        empty = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))
        return GraphInputs(0, empty, empty, empty, np.zeros(0, np.int64), self.source + " minus concepts",
                           self.interactions)

    def summary(self) -> dict:
        return {"concepts": self.n_concepts, "movie_concept": len(self.movie_concept[0]),
                "user_likes": len(self.user_likes[0]), "user_dislikes": len(self.user_dislikes[0]),
                "source": self.source}


def _remap(ids: np.ndarray, index: dict[int, int]) -> tuple[np.ndarray, np.ndarray]:
    out = np.fromiter((index.get(int(v), -1) for v in ids), dtype=np.int64, count=len(ids))
    return out, out >= 0


def genre_graph(graph: Graph, data: Interactions, smoothing: float = 5.0) -> GraphInputs:
    """Fallback knowledge graph from MovieLens' text genres (used when no visual graph is built):
    genres as concepts, user preferences as the smoothed lift of a genre among the user's liked
    movies over its share among the user's disliked movies."""
    rel = graph.get("genre")
    m, g = rel.src.numpy(), rel.dst.numpy()
    n_c = int(graph.sizes.get("genre", 0))
    mc = sp.csr_matrix((np.ones(len(m), np.float32), (m, g)), shape=(data.n_movies, n_c))
    liked = data.train_pos @ mc
    disliked = data.train_neg @ mc
    base = np.asarray(mc.sum(0)).ravel() / max(data.n_movies, 1)
    n_l = np.asarray(data.train_pos.sum(1)).ravel()[:, None]
    n_d = np.asarray(data.train_neg.sum(1)).ravel()[:, None]
    p_l = (liked.toarray() + smoothing * base) / (n_l + smoothing)
    p_d = (disliked.toarray() + smoothing * base) / (n_d + smoothing)
    score = np.log(p_l / np.maximum(p_d, 1e-9))
    u, c = np.nonzero(np.abs(score) > 0.1)
    s = score[u, c].astype(np.float32)
    like, dis = s > 0, s < 0
    return GraphInputs(n_c, (m, g, np.ones(len(m), np.float32)), (u[like], c[like], s[like]),
                       (u[dis], c[dis], -s[dis]), np.arange(n_c), "genres")


def graph_inputs(graph: Graph, data: Interactions, *, concepts: bool = True) -> GraphInputs:
    """The knowledge side of ``graph`` for the posterkg model: its concept relations when it has
    any, else the genre fallback; none with ``concepts = False``."""
    def rel(name):
        r = graph.get(name)
        return r.src.numpy(), r.dst.numpy(), r.weight.detach().numpy().astype(np.float32)

    inter = {sign: tuple(x.numpy() for x in (graph.get(name).src, graph.get(name).dst))
             for name, sign in (("pos", 1), ("neu", 0), ("neg", -1))}
    if not concepts:
        empty = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))
        return GraphInputs(0, empty, empty, empty, np.zeros(0, np.int64), "no concepts", inter)
    if "has" in graph:
        return GraphInputs(int(graph.sizes["concept"]), rel("has"), rel("likes"), rel("dislikes"),
                           None, "graph tables", inter)
    gi = genre_graph(graph, data)
    gi.interactions = inter
    return gi


def _csr(rows, cols, vals, shape) -> torch.Tensor:
    idx = torch.stack([torch.as_tensor(np.asarray(rows), dtype=torch.long),
                       torch.as_tensor(np.asarray(cols), dtype=torch.long)])
    return to_torch_csr_tensor(idx, torch.as_tensor(np.asarray(vals), dtype=torch.float32), size=shape)


def _row_norm(rows, cols, w, shape) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-normalised weights as CSR, and its transpose."""
    w = np.asarray(w, np.float32)
    rows = np.asarray(rows, np.int64)
    tot = np.bincount(rows, weights=w, minlength=shape[0])
    val = w / np.maximum(tot[rows], 1e-12)
    return _csr(rows, cols, val, shape), _csr(cols, rows, val, (shape[1], shape[0]))


# relation name -> (dst type, src type, sign, initial gate magnitude)
RELATIONS = {
    "pos": (1, 1.0), "neu": (1, 0.3), "neg": (-1, 0.3),
    "has": (1, 0.5), "likes": (1, 0.5), "dislikes": (-1, 0.3),
}


def _inv_softplus(y: float) -> float:
    return math.log(math.expm1(y))


class PosterKG(Recommender):
    Config = ModelConfig

    def __init__(self, inputs: ModelInputs, cfg: ModelConfig | None = None):
        super().__init__(inputs, cfg)
        data = inputs.data
        dim = self.dim = self.cfg.dim
        graph = graph_inputs(inputs.graph, data, concepts=self.cfg.concepts)
        self.user = nn.Embedding(self.n_users, dim)
        self.movie = nn.Embedding(self.n_movies, dim)
        self.concept = nn.Embedding(max(graph.n_concepts, 1), dim)
        for e in (self.user, self.movie, self.concept):
            nn.init.normal_(e.weight, std=self.cfg.init_std)
        self.side_scale = nn.Parameter(torch.tensor([0.5, 0.5]))     # user-side, item-side
        self.gate = nn.ParameterDict({r: nn.Parameter(torch.tensor(_inv_softplus(g)))
                                      for r, (_, g) in RELATIONS.items()})
        # per relation and direction ("<rel>:<dst>") an attention scoring vector, zero = uniform
        self.att = nn.ParameterDict()
        for r in RELATIONS:
            for dst in ("user", "movie", "concept"):
                self.att[f"{r}_{dst}"] = nn.Parameter(torch.zeros(dim))
        self._data = data
        self.set_graph(data, graph)
        self._built_for = inputs.graph

    @property
    def wants_hard_negatives(self) -> bool:
        return self.cfg.hard_negative_weight > 0 or self.cfg.struct_weight > 0

    # -- graph -------------------------------------------------------------------------------
    def set_graph(self, data: Interactions, graph: GraphInputs) -> None:
        """(Re)build every sparse operator from ``data``'s train edges and ``graph``; used at
        construction and to re-score under a modified graph (edge-deletion experiments)."""
        self.graph = graph
        nu, nm, nc = self.n_users, self.n_movies, graph.n_concepts
        if nc > self.concept.num_embeddings:
            raise ValueError("graph has more concepts than the model was built with")
        dev = self.user.weight.device
        n = nu + nm
        self._ops: dict[str, torch.Tensor] = {}
        inter = {}
        for name, sign in (("pos", 1), ("neu", 0), ("neg", -1)):
            u, m = graph.interactions[sign] if graph.interactions is not None else data.train_edges(sign)
            inter[name] = (u, m)
            self._ops[f"sym_{name}"] = sym_norm_adj(n, u, nu + m)
        mc_m, mc_c, mc_w = graph.movie_concept
        lu, lc, lw = graph.user_likes
        du, dc, dw = graph.user_dislikes
        if nc:
            for name, (r, c, w, nr) in {"item_side": (mc_m, mc_c, mc_w, nm), "user_like": (lu, lc, lw, nu),
                                        "user_dislike": (du, dc, dw, nu)}.items():
                self._ops[name], self._ops[name + "_t"] = _row_norm(r, c, w, (nr, nc))
        # stage-2 relations: (relation, dst type, src type) -> CSR [dst x src] of edge weights
        self._rels: list[tuple[str, str, str]] = []
        pairs = {"pos": (inter["pos"], "user", "movie"), "neu": (inter["neu"], "user", "movie"),
                 "neg": (inter["neg"], "user", "movie")}
        if nc:
            pairs.update({"has": ((mc_m, mc_c, mc_w), "movie", "concept"),
                          "likes": ((lu, lc, lw), "user", "concept"),
                          "dislikes": ((du, dc, dw), "user", "concept")})
        sizes = {"user": nu, "movie": nm, "concept": nc}
        for rel, (edges, a, b) in pairs.items():
            if len(edges[0]) == 0:
                continue
            if rel == "neu" and self.cfg.neutral_weight <= 0:
                continue
            if not self.cfg.signed_gates and RELATIONS[rel][0] < 0:
                continue
            w = edges[2] if len(edges) == 3 else np.ones(len(edges[0]), np.float32)
            self._ops[f"r_{rel}_{a}"] = _csr(edges[0], edges[1], w, (sizes[a], sizes[b]))
            self._ops[f"r_{rel}_{b}"] = _csr(edges[1], edges[0], w, (sizes[b], sizes[a]))
            self._rels += [(rel, a, b), (rel, b, a)]
        self._mc = tuple(torch.as_tensor(np.asarray(x)) for x in (mc_m, mc_c, mc_w))
        self._ops = {k: v.to(dev) for k, v in self._ops.items()}

    def _apply(self, fn, *args, **kwargs):
        out = super()._apply(fn, *args, **kwargs)
        if hasattr(self, "_ops"):
            self._ops = {k: fn(v) for k, v in self._ops.items()}
        return out

    # -- propagation -------------------------------------------------------------------------
    def stage1(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        cfg, ops = self.cfg, self._ops
        eu, em, ec = self.user.weight, self.movie.weight, self.concept.weight
        x = torch.cat([eu, em])
        if cfg.interaction_side:
            acc = x
            for _ in range(cfg.signed_layers):
                nxt = spmm(ops["sym_pos"], x)
                if cfg.neg_weight:
                    nxt = nxt - cfg.neg_weight * spmm(ops["sym_neg"], x)
                if cfg.neutral_weight:
                    nxt = nxt + cfg.neutral_weight * spmm(ops["sym_neu"], x)
                x = nxt
                acc = acc + x
            x = acc / (cfg.signed_layers + 1)
        zu, zm = x[: self.n_users], x[self.n_users:]
        if "item_side" in ops:
            if cfg.user_side:
                pref = (spmm(ops["user_like"], ec, ops["user_like_t"])
                        - spmm(ops["user_dislike"], ec, ops["user_dislike_t"]))
                zu = zu + self.side_scale[0] * pref
            if cfg.item_side:
                zm = zm + self.side_scale[1] * spmm(ops["item_side"], ec, ops["item_side_t"])
        return zu, zm, ec

    def _gate(self, rel: str) -> torch.Tensor:
        if not self.cfg.signed_gates:
            return torch.ones((), device=self.user.weight.device)
        return RELATIONS[rel][0] * nn.functional.softplus(self.gate[rel])

    def stage2(self, xs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        acc = dict(xs)
        for _ in range(self.cfg.stage2_layers):
            new = {t: torch.zeros_like(v) for t, v in xs.items()}
            for rel, dst, src in self._rels:
                r = self._ops[f"r_{rel}_{dst}"]
                x = xs[src]
                if self.cfg.attention:
                    logit = torch.tanh(x @ self.att[f"{rel}_{dst}"]) * 2.0     # in [-2, 2]
                    e = torch.exp(logit).unsqueeze(1)
                else:
                    e = torch.ones(len(x), 1, device=x.device)
                agg = spmm(r, torch.cat([e * x, e], 1), self._ops[f"r_{rel}_{src}"] if src != dst else None)
                msg = agg[:, :-1] / agg[:, -1:].clamp(min=1e-12)
                new[dst] = new[dst] + self._gate(rel) * msg
            xs = new
            acc = {t: acc[t] + xs[t] for t in acc}
        return {t: v / (self.cfg.stage2_layers + 1) for t, v in acc.items()}

    def embeddings(self, graph: Graph | None = None):
        if graph is not None and graph is not self._built_for:
            self.set_graph(self._data, graph_inputs(graph, self._data, concepts=self.cfg.concepts))
            self._built_for = graph
        zu, zm, zc = self.stage1()
        self._stage1 = (zu, zm)
        if self.cfg.stage2 and self._rels:
            out = self.stage2({"user": zu, "movie": zm, "concept": zc})
            return out["user"], out["movie"], out["concept"]
        return zu, zm, zc

    def ego(self, users, movies):
        return [self.user(users), self.movie(movies)]

    # -- extra losses ------------------------------------------------------------------------
    def extra_loss(self, batch: dict, emb: tuple) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        u, m, c = emb
        users, pos = batch["users"], batch["pos"]
        out: dict[str, torch.Tensor] = {}
        if cfg.hard_negative_weight > 0 and "hard" in batch and bool(batch["hard_mask"].any()):
            out["hard"] = cfg.hard_negative_weight * losses.bpr(
                u[users], m[pos], m[batch["hard"]], batch["hard_mask"])
        if cfg.cl_weight > 0 and self.cfg.stage2 and self._rels:
            su, sm = self._stage1
            uu = torch.unique(users)[:2048]
            mm = torch.unique(pos)[:2048]
            out["cl"] = cfg.cl_weight * (losses.info_nce(su[uu], u[uu], cfg.cl_tau)
                                         + losses.info_nce(sm[mm], m[mm], cfg.cl_tau))
        if cfg.struct_weight > 0:
            hm = batch.get("hard_mask")
            un = mn = None
            if hm is not None and bool(hm.any()):
                un, mn = u[users[hm]], m[batch["hard"][hm]]
            mc = cc = cw = None
            if self.graph.n_concepts and len(self._mc[0]):
                pick = torch.randint(0, len(self._mc[0]), (min(cfg.struct_batch, len(self._mc[0])),))
                dev = u.device
                mc = m[self._mc[0][pick].to(dev)]
                cc = c[self._mc[1][pick].to(dev)]
                cw = self._mc[2][pick].to(dev).float()
            out["struct"] = cfg.struct_weight * losses.structure(u[users], m[pos], un, mn, mc, cc, cw)
        return out
