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

from posterkg.gnn import losses
from posterkg.gnn.base import Graph, ModelInputs, Recommender, Relation
from posterkg.gnn.sparse import csr, row_norm, spmm, sym_norm_adj


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


# relation -> (sign, initial gate magnitude)
RELATIONS = {
    "pos": (1, 1.0), "neu": (1, 0.3), "neg": (-1, 0.3),
    "has": (1, 0.5), "likes": (1, 0.5), "dislikes": (-1, 0.3),
}


@dataclasses.dataclass
class Knowledge:
    """The concept side of a graph as the posterkg model reads it: the ``has``/``likes``/
    ``dislikes`` relations (weights may carry autograd), or the genre fallback, or nothing."""

    n_concepts: int
    has: Relation
    likes: Relation
    dislikes: Relation
    source: str


def _empty() -> Relation:
    e = torch.zeros(0, dtype=torch.long)
    return Relation(e, e, torch.zeros(0))


def genre_knowledge(graph: Graph, smoothing: float = 5.0) -> Knowledge:
    """Fallback knowledge from MovieLens' text genres (a graph without concept relations):
    genres as concepts, user preferences as the smoothed lift of a genre among the user's liked
    movies (``pos``) over its share among the user's disliked movies (``neg``)."""
    nu, nm = int(graph.sizes["user"]), int(graph.sizes["movie"])
    n_c = int(graph.sizes.get("genre", 0))
    rel = graph.get("genre")
    m, g = rel.src.numpy(), rel.dst.numpy()
    mc = sp.csr_matrix((np.ones(len(m), np.float32), (m, g)), shape=(nm, n_c))

    def mat(name):
        r = graph.get(name)
        x = sp.csr_matrix((r.weight.detach().cpu().numpy().astype(np.float32), (r.src.numpy(), r.dst.numpy())),
                          shape=(nu, nm))
        x.sum_duplicates()
        return x

    pos, neg = mat("pos"), mat("neg")
    liked, disliked = pos @ mc, neg @ mc
    base = np.asarray(mc.sum(0)).ravel() / max(nm, 1)
    n_l = np.asarray(pos.sum(1)).ravel()[:, None]
    n_d = np.asarray(neg.sum(1)).ravel()[:, None]
    p_l = (liked.toarray() + smoothing * base) / (n_l + smoothing)
    p_d = (disliked.toarray() + smoothing * base) / (n_d + smoothing)
    score = np.log(p_l / np.maximum(p_d, 1e-9))
    u, c = np.nonzero(np.abs(score) > 0.1)
    s = score[u, c].astype(np.float32)
    like, dis = s > 0, s < 0

    def r(a, b, w):
        return Relation(torch.as_tensor(a, dtype=torch.long), torch.as_tensor(b, dtype=torch.long),
                        torch.as_tensor(w, dtype=torch.float32))

    return Knowledge(n_c, r(m, g, np.ones(len(m), np.float32)), r(u[like], c[like], s[like]),
                     r(u[dis], c[dis], -s[dis]), "genres")


def knowledge(graph: Graph, *, concepts: bool = True) -> Knowledge:
    """The concept side of ``graph``: its concept relations when it has any, else the genre
    fallback; none with ``concepts = False``."""
    if not concepts:
        return Knowledge(0, _empty(), _empty(), _empty(), "no concepts")
    if "has" in graph:
        return Knowledge(int(graph.sizes.get("concept", 0)), graph.get("has"), graph.get("likes"),
                         graph.get("dislikes"), "graph tables")
    return genre_knowledge(graph)


def _inv_softplus(y: float) -> float:
    return math.log(math.expm1(y))


class PosterKG(Recommender):
    """The two-stage model (module docstring). Its graph is an argument: :meth:`embeddings`
    derives every operator from the :class:`~posterkg.gnn.base.Graph` it is given (cached on that
    graph when no edge weight carries a gradient), so a masked graph (explanations) or one with
    deleted edges is scored by the same code."""

    Config = ModelConfig

    def __init__(self, inputs: ModelInputs, cfg: ModelConfig | None = None):
        super().__init__(inputs, cfg)
        dim = self.dim = self.cfg.dim
        n_concepts = knowledge(inputs.graph, concepts=self.cfg.concepts).n_concepts
        self.user = nn.Embedding(self.n_users, dim)
        self.movie = nn.Embedding(self.n_movies, dim)
        self.concept = nn.Embedding(max(n_concepts, 1), dim)
        for e in (self.user, self.movie, self.concept):
            nn.init.normal_(e.weight, std=self.cfg.init_std)
        self.side_scale = nn.Parameter(torch.tensor([0.5, 0.5]))     # user-side, item-side
        self.gate = nn.ParameterDict({r: nn.Parameter(torch.tensor(_inv_softplus(g)))
                                      for r, (_, g) in RELATIONS.items()})
        # per relation and direction ("<rel>_<dst>") an attention scoring vector, zero = uniform
        self.att = nn.ParameterDict()
        for r in RELATIONS:
            for dst in ("user", "movie", "concept"):
                self.att[f"{r}_{dst}"] = nn.Parameter(torch.zeros(dim))
        self._stage1 = None
        self._kg_edges = None
        self._op_cache: dict = {}      # relation operators shared between graphs (see _shared)

    @property
    def wants_hard_negatives(self) -> bool:
        return self.cfg.hard_negative_weight > 0 or self.cfg.struct_weight > 0

    # -- operators from the graph ----------------------------------------------------------
    def operators(self, graph: Graph) -> dict:
        """Every sparse operator of ``graph`` the model propagates with (see :meth:`_build`);
        cached on the graph unless an edge weight requires grad."""
        dev = self.user.weight.device
        key = (f"posterkg:{self.cfg.concepts}:{self.cfg.signed_gates}:{self.cfg.neutral_weight > 0}:"
               f"{self.n_users}:{self.n_movies}:{dev}")
        return graph.cached(key, lambda: self._build(graph, dev))

    def _shared(self, name: str, rels: tuple[Relation, ...], build):
        """An operator of the relations ``rels``: rebuilt when one of their weights carries a
        gradient, else shared by every graph holding the very same relation tensors, so a
        masked or edge-deleted copy of a graph (explanations, deletion tests) rebuilds only the
        operators of the relations it changed."""
        if any(r.weight.requires_grad for r in rels):
            return build()
        tensors = tuple(t for r in rels for t in (r.src, r.dst, r.weight))
        key = (name,) + tuple(id(t) for t in tensors)
        hit = self._op_cache.get(key)
        if hit is not None and all(a is b for a, b in zip(hit[0], tensors)):
            return hit[1]
        op = build()
        self._op_cache[key] = (tensors, op)        # holds the tensors, so their ids stay unique
        while len(self._op_cache) > 64:
            self._op_cache.pop(next(iter(self._op_cache)))
        return op

    def _build(self, graph: Graph, dev) -> dict:
        cfg = self.cfg
        nu, nm = self.n_users, self.n_movies
        kg = knowledge(graph, concepts=cfg.concepts)
        nc = kg.n_concepts
        if nc > self.concept.num_embeddings or (nc and nc != self.concept.num_embeddings):
            raise ValueError(f"the graph has {nc} concepts, the model was built with "
                             f"{self.concept.num_embeddings}")
        ops: dict = {}
        inter = {name: graph.get(name) for name in ("pos", "neu", "neg")}
        for name, r in inter.items():
            ops[f"sym_{name}"] = self._shared(f"sym:{dev}", (r,), lambda r=r: sym_norm_adj(
                nu + nm, r.src, nu + r.dst, r.weight).to(dev))
        sides = {"item_side": (kg.has, nm), "user_like": (kg.likes, nu), "user_dislike": (kg.dislikes, nu)}
        if nc:
            for name, (r, n_rows) in sides.items():
                op, op_t = self._shared(f"row:{n_rows}:{nc}:{dev}", (r,), lambda r=r, n=n_rows: tuple(
                    x.to(dev) for x in row_norm(r.src, r.dst, r.weight, (n, nc))))
                ops[name], ops[name + "_t"] = op, op_t
        # stage-2 relations: (relation, dst type, src type) -> CSR [dst x src] of edge weights
        rels: list[tuple[str, str, str]] = []
        pairs = {name: (r, "user", "movie") for name, r in inter.items()}
        if nc:
            pairs.update({"has": (kg.has, "movie", "concept"), "likes": (kg.likes, "user", "concept"),
                          "dislikes": (kg.dislikes, "user", "concept")})
        sizes = {"user": nu, "movie": nm, "concept": nc}
        for rel, (r, a, b) in pairs.items():
            if len(r) == 0:
                continue
            if rel == "neu" and cfg.neutral_weight <= 0:
                continue
            if not cfg.signed_gates and RELATIONS[rel][0] < 0:
                continue
            shape = (sizes[a], sizes[b])
            ops[f"r_{rel}_{a}"], ops[f"r_{rel}_{b}"] = self._shared(
                f"adj:{shape}:{dev}", (r,), lambda r=r, shape=shape: (
                    csr(r.src, r.dst, r.weight, shape).to(dev),
                    csr(r.dst, r.src, r.weight, (shape[1], shape[0])).to(dev)))
            rels += [(rel, a, b), (rel, b, a)]
        ops["rels"] = rels
        ops["n_concepts"] = nc
        ops["source"] = kg.source
        # movie-concept edges for the structure loss (no gradient needed there)
        ops["kg_edges"] = (kg.has.src, kg.has.dst, kg.has.weight.detach())
        return ops

    # -- propagation -------------------------------------------------------------------------
    def stage1(self, ops: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        cfg = self.cfg
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

    def stage2(self, xs: dict[str, torch.Tensor], ops: dict) -> dict[str, torch.Tensor]:
        acc = dict(xs)
        for _ in range(self.cfg.stage2_layers):
            new = {t: torch.zeros_like(v) for t, v in xs.items()}
            for rel, dst, src in ops["rels"]:
                r = ops[f"r_{rel}_{dst}"]
                x = xs[src]
                if self.cfg.attention:
                    logit = torch.tanh(x @ self.att[f"{rel}_{dst}"]) * 2.0     # in [-2, 2]
                    e = torch.exp(logit).unsqueeze(1)
                else:
                    e = torch.ones(len(x), 1, device=x.device)
                agg = spmm(r, torch.cat([e * x, e], 1), ops[f"r_{rel}_{src}"] if src != dst else None)
                msg = agg[:, :-1] / agg[:, -1:].clamp(min=1e-12)
                new[dst] = new[dst] + self._gate(rel) * msg
            xs = new
            acc = {t: acc[t] + xs[t] for t in acc}
        return {t: v / (self.cfg.stage2_layers + 1) for t, v in acc.items()}

    def embeddings(self, graph: Graph | None = None):
        """(users, movies, concepts) final embeddings propagated over ``graph`` (default: the
        graph the model was built with)."""
        ops = self.operators(graph if graph is not None else self.graph)
        zu, zm, zc = self.stage1(ops)
        self._stage1 = (zu, zm)
        self._kg_edges = ops["kg_edges"] if ops["n_concepts"] else None
        if self.cfg.stage2 and ops["rels"]:
            out = self.stage2({"user": zu, "movie": zm, "concept": zc}, ops)
            self._has_stage2 = True
            return out["user"], out["movie"], out["concept"]
        self._has_stage2 = False
        return zu, zm, zc

    def ego(self, users, movies):
        return [self.user(users), self.movie(movies)]

    # -- extra losses ------------------------------------------------------------------------
    def extra_loss(self, batch: dict, emb: tuple) -> dict[str, torch.Tensor]:
        """Terms beyond BPR for the graph of the last :meth:`embeddings` call."""
        cfg = self.cfg
        u, m, c = emb
        users, pos = batch["users"], batch["pos"]
        out: dict[str, torch.Tensor] = {}
        if cfg.hard_negative_weight > 0 and "hard" in batch and bool(batch["hard_mask"].any()):
            out["hard"] = cfg.hard_negative_weight * losses.bpr(
                u[users], m[pos], m[batch["hard"]], batch["hard_mask"])
        if cfg.cl_weight > 0 and getattr(self, "_has_stage2", False):
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
            kg = self._kg_edges
            if kg is not None and len(kg[0]):
                pick = torch.randint(0, len(kg[0]), (min(cfg.struct_batch, len(kg[0])),))
                dev = u.device
                mc = m[kg[0][pick].to(dev)]
                cc = c[kg[1][pick].to(dev)]
                cw = kg[2][pick].to(dev).float()
            out["struct"] = cfg.struct_weight * losses.structure(u[users], m[pos], un, mn, mc, cc, cw)
        return out
