"""The recommender contract every model follows, and the inputs a stage hands a model.

Data path (``docs/architecture.md``): the train stage (:mod:`posterkg.gnn.inputs`) reads the
database once and builds

* an :class:`IdVocab` - database ids <-> node indices for users, movies and concepts, built once
  and **saved with every model**, so a stored model always scores in the index space it was
  trained in (new users and movies ingested later are reported, never silently re-indexed);
* :class:`~posterkg.gnn.data.Interactions` - the split's rows in that index space;
* a :class:`Graph` - the fused graph's edges (``edge_index`` + ``edge_weight`` per relation) in
  that index space;
* optional movie-side side information: genres and dense features (poster, text embeddings).

These travel together as :class:`ModelInputs`. **Models never open the database.**

A model (:class:`Recommender`) is built from ``ModelInputs`` and its own config dataclass
(``Config``; defaults are data in :mod:`posterkg.gnn.registry`), and offers:

* ``embeddings(graph)`` - for dot-product models: (user matrix, movie matrix, ...) computed from
  the graph *given as an argument*, as PyG's ``LightGCN.get_embedding(edge_index)`` does.
  Explanations multiply the graph's edge weights by a mask (:meth:`Graph.masked`) and make the
  same call; no copy of the model's algebra lives anywhere else.
* ``score(users, history)`` - ``[len(users), n_movies]`` scores given each user's known
  interactions (a :class:`~posterkg.gnn.data.History`, as implicit's ``user_items``): train for
  valid, train + valid for test and for recommending (the one fold-in rule). Seen movies are
  masked by the caller (:func:`posterkg.gnn.evaluate.evaluate`, ``TrainedModel.recommend``).
* training: ``trainer = "bpr"`` models are trained by the shared BPR loop
  (:mod:`posterkg.gnn.train`); ``trainer = "fit"`` models implement ``fit`` (closed form, or
  their own loss, e.g. SASRec's cross-entropy over the next item); ``trainer = "none"`` needs
  nothing (MostPop).
"""

from __future__ import annotations

import dataclasses
import io
from typing import Any, Callable, ClassVar

import numpy as np
import torch
from torch import nn

from posterkg.lookup import find_sorted

# relation -> (source node type, destination node type); every relation is also used reversed
RELATIONS: dict[str, tuple[str, str]] = {
    "pos": ("user", "movie"),        # liked in train (rating >= 4)
    "neu": ("user", "movie"),        # neutral (3 .. 3.5)
    "neg": ("user", "movie"),        # disliked (< 3)
    "has": ("movie", "concept"),     # the poster shows the concept (weight: tagger confidence)
    "likes": ("user", "concept"),    # preference score > 0
    "dislikes": ("user", "concept"),  # preference score < 0 (weight = -score)
    "genre": ("movie", "genre"),     # MovieLens text genre
}


@dataclasses.dataclass
class IdVocab:
    """Database ids <-> indices for every node type; ascending ids, saved with each model."""

    user_ids: np.ndarray
    movie_ids: np.ndarray
    concept_ids: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))
    genre_names: list[str] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        self.user_ids = np.asarray(self.user_ids, np.int64)
        self.movie_ids = np.asarray(self.movie_ids, np.int64)
        self.concept_ids = np.asarray(self.concept_ids, np.int64)

    @property
    def sizes(self) -> dict[str, int]:
        return {"user": len(self.user_ids), "movie": len(self.movie_ids),
                "concept": len(self.concept_ids), "genre": len(self.genre_names)}

    def lookup(self, node_type: str, ids) -> tuple[np.ndarray, np.ndarray]:
        """(indices, known mask) of database ``ids``; unknown ids get -1."""
        table = {"user": self.user_ids, "movie": self.movie_ids, "concept": self.concept_ids}[node_type]
        pos, ok = find_sorted(table, np.asarray(ids, np.int64))
        return np.where(ok, pos, -1), ok

    def index(self, node_type: str, db_id: int) -> int:
        """The index of one database id; ``KeyError`` when the vocabulary does not have it."""
        pos, ok = self.lookup(node_type, [int(db_id)])
        if not ok[0]:
            raise KeyError(f"{node_type} {db_id} is not in the model's vocabulary")
        return int(pos[0])

    def has(self, node_type: str, db_id: int) -> bool:
        return bool(self.lookup(node_type, [int(db_id)])[1][0])

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        np.savez(buf, user_ids=self.user_ids, movie_ids=self.movie_ids, concept_ids=self.concept_ids,
                 genre_names=np.asarray(self.genre_names, dtype=object).astype(str))
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, blob: bytes) -> "IdVocab":
        z = np.load(io.BytesIO(bytes(blob)), allow_pickle=False)
        return cls(z["user_ids"], z["movie_ids"], z["concept_ids"], [str(g) for g in z["genre_names"]])

    def summary(self) -> dict[str, int]:
        return self.sizes


@dataclasses.dataclass
class Relation:
    src: torch.Tensor      # long [E] source node indices
    dst: torch.Tensor      # long [E] destination node indices
    weight: torch.Tensor   # float [E]

    def __len__(self) -> int:
        return int(self.src.numel())


class Graph:
    """The fused graph in :class:`IdVocab` index space: per relation (see :data:`RELATIONS`)
    source and destination indices and edge weights.

    Operators derived from it (normalised adjacencies, CSR matrices) are cached on the graph by
    :meth:`cached` as long as no weight requires grad; a masked copy (:meth:`masked`) shares the
    structure and recomputes them with the gradient flowing to the mask."""

    def __init__(self, sizes: dict[str, int], relations: dict[str, Relation] | None = None):
        self.sizes = dict(sizes)
        self.relations: dict[str, Relation] = {}
        self._cache: dict[str, Any] = {}
        for name, rel in (relations or {}).items():
            self.add(name, rel.src, rel.dst, rel.weight)

    def add(self, name: str, src, dst, weight=None) -> "Graph":
        if name not in RELATIONS:
            raise ValueError(f"unknown relation {name!r}; known: {', '.join(RELATIONS)}")
        src = torch.as_tensor(np.asarray(src) if not torch.is_tensor(src) else src, dtype=torch.long)
        dst = torch.as_tensor(np.asarray(dst) if not torch.is_tensor(dst) else dst, dtype=torch.long)
        if weight is None:
            w = torch.ones(len(src))
        else:
            w = weight if torch.is_tensor(weight) else torch.as_tensor(np.asarray(weight), dtype=torch.float32)
        self.relations[name] = Relation(src, dst, w.float())
        self._cache.clear()
        return self

    def __contains__(self, name: str) -> bool:
        return name in self.relations and len(self.relations[name]) > 0

    def get(self, name: str) -> Relation:
        if name in self.relations:
            return self.relations[name]
        e = torch.zeros(0, dtype=torch.long)
        return Relation(e, e, torch.zeros(0))

    @property
    def differentiable(self) -> bool:
        return any(r.weight.requires_grad for r in self.relations.values())

    def cached(self, key: str, build: Callable[[], Any]) -> Any:
        """``build()`` once per graph (never cached when a weight carries a gradient)."""
        if self.differentiable:
            return build()
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    def masked(self, masks: dict[str, torch.Tensor]) -> "Graph":
        """A graph whose relation ``r`` weights are ``weight * masks[r]`` (same structure)."""
        out = Graph(self.sizes)
        for name, rel in self.relations.items():
            w = rel.weight * masks[name] if name in masks else rel.weight
            out.relations[name] = Relation(rel.src, rel.dst, w)
        return out

    def without(self, *names: str) -> "Graph":
        out = Graph(self.sizes)
        out.relations = {n: r for n, r in self.relations.items() if n not in names}
        return out

    def with_edges(self, name: str, src, dst, weight=None) -> "Graph":
        """A copy with ``name`` extended by more edges (fold-in of new interactions)."""
        out = Graph(self.sizes)
        out.relations = dict(self.relations)
        old = self.get(name)
        src = torch.as_tensor(np.asarray(src), dtype=torch.long)
        dst = torch.as_tensor(np.asarray(dst), dtype=torch.long)
        w = torch.ones(len(src)) if weight is None else torch.as_tensor(np.asarray(weight), dtype=torch.float32)
        out.relations[name] = Relation(torch.cat([old.src, src]), torch.cat([old.dst, dst]),
                                       torch.cat([old.weight, w]))
        return out

    def with_history(self, history) -> "Graph":
        """A copy whose user-movie relations (pos/neu/neg) are the interactions of ``history``
        (a :class:`~posterkg.gnn.data.History`) by the one rating rule: the fold-in of the
        valid ratings at test time (graph models propagate over them)."""
        from posterkg.ratings import signs

        out = Graph(self.sizes)
        out.relations = dict(self.relations)
        sg = signs(history.ratings)
        for name, sign in (("pos", 1), ("neu", 0), ("neg", -1)):
            keep = sg == sign
            out.relations[name] = Relation(torch.as_tensor(history.users[keep], dtype=torch.long),
                                           torch.as_tensor(history.movies[keep], dtype=torch.long),
                                           torch.ones(int(keep.sum())))
        return out

    def summary(self) -> dict[str, int]:
        return {**{f"n_{k}": v for k, v in self.sizes.items()},
                **{k: len(r) for k, r in self.relations.items()}}


@dataclasses.dataclass
class ModelInputs:
    """Everything a model may use, assembled by the stage (models never open the database)."""

    ids: IdVocab
    data: Any                                   # posterkg.gnn.data.Interactions (ids' index space)
    graph: Graph | None = None
    # dense movie features: name ("poster", "text") -> [n_movies, d] float32; rows of movies
    # without the feature are zero and ``feature_mask[name]`` is False there
    features: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    feature_mask: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    source: str = ""                            # where the knowledge side came from (for reports)
    # semantic IDs (posterkg semantic-ids build): [n_movies, L + 1] int64 codes of version
    # ``semantic_version``, a row of -1 for a movie without an ID (models with a ``semantic_ids``
    # config key: TIGER)
    semantic_ids: np.ndarray | None = None
    semantic_version: str = ""

    @property
    def n_users(self) -> int:
        return len(self.ids.user_ids)

    @property
    def n_movies(self) -> int:
        return len(self.ids.movie_ids)


@dataclasses.dataclass
class FitInfo:
    """What a model's own ``fit`` reports back to the harness."""

    history: list[dict[str, Any]]
    best_epoch: int
    valid: dict[str, float]
    seconds_per_epoch: float


class Recommender(nn.Module):
    """Base class of every recommender (see the module docstring for the contract)."""

    name: ClassVar[str] = "base"
    trainer: ClassVar[str] = "bpr"        # "bpr" | "fit" | "none"

    @dataclasses.dataclass
    class Config:
        pass

    def __init__(self, inputs: ModelInputs, cfg=None):
        super().__init__()
        self.cfg = cfg if cfg is not None else type(self).Config()
        self.n_users, self.n_movies = inputs.n_users, inputs.n_movies
        self.graph = inputs.graph           # the default graph embeddings() propagates over
        self._final = None                  # cached final embeddings (eval mode)
        self._folded: dict = {}             # final embeddings over the graph + a later history

    # -- dot-product models ----------------------------------------------------------------
    def embeddings(self, graph: Graph | None = None) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError(f"{self.name} is not a dot-product model")

    def ego(self, users: torch.Tensor, movies: torch.Tensor) -> list[torch.Tensor]:
        """The free parameters the L2 regulariser acts on for a batch."""
        return []

    def reg_loss(self, users, pos, neg) -> torch.Tensor:
        parts = self.ego(users, torch.cat([pos, neg]))
        if not parts:
            return torch.zeros(())
        return sum(p.pow(2).sum() for p in parts) / (2 * len(users))

    def extra_loss(self, batch: dict, emb: tuple) -> dict[str, torch.Tensor]:
        """Model-specific loss terms beyond BPR (name -> weighted value)."""
        return {}

    def final_embeddings(self) -> tuple[torch.Tensor, ...]:
        """``embeddings(self.graph)`` computed once and kept (dropped by ``train()``)."""
        if self._final is None or self.training:
            with torch.no_grad():
                out = tuple(x.detach() for x in self.embeddings(self.graph))
            if self.training:
                return out
            self._final = out
        return self._final

    def movie_vectors(self) -> torch.Tensor:
        """[n_movies, d] the model's learned movie representations (``similar``, reports)."""
        return self.final_embeddings()[1]

    def history_embeddings(self, history=None) -> tuple[torch.Tensor, ...]:
        """The final embeddings for scoring with ``history``: the train graph's for the valid
        history (what the model was trained on); for a later history (test: train + valid) the
        same parameters propagated over the graph with those interactions as edges (the
        harness's fold-in rule for graph models; no refit). Cached per history."""
        part = getattr(history, "part", None)
        if history is None or part in (None, "valid") or self.graph is None or self.training:
            return self.final_embeddings()
        key = (part, len(history))
        if key not in self._folded:
            with torch.no_grad():
                self._folded[key] = tuple(x.detach() for x in self.embeddings(self.graph.with_history(history)))
        return self._folded[key]

    def train(self, mode: bool = True):
        self._final = None
        self._folded = {}
        return super().train(mode)

    def load_state_dict(self, *args, **kwargs):
        self._final = None
        self._folded = {}
        return super().load_state_dict(*args, **kwargs)

    # -- every model -------------------------------------------------------------------------
    @torch.no_grad()
    def score(self, users: torch.Tensor, history=None) -> torch.Tensor:
        """``[len(users), n_movies]`` scores; ``history`` is the users' known interactions: graph
        models propagate over them when they go beyond train (:meth:`history_embeddings`)."""
        emb = self.history_embeddings(history)
        return emb[0][users] @ emb[1].T

    def refit_config(self):
        """The model config of a refit on train + valid (:func:`posterkg.gnn.train.refit`): the
        settings chosen on valid, fixed. Models that choose settings inside ``fit`` (EASE, ItemKNN)
        narrow their grids to the chosen values."""
        return self.cfg

    def fit(self, inputs: ModelInputs, train_cfg, valid_fn: Callable[["Recommender"], dict]) -> FitInfo:
        raise NotImplementedError(f"{self.name} is trained by the {self.trainer!r} trainer")
