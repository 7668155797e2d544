"""The fused user - movie - concept graph as a PyG ``HeteroData``.

:func:`build_hetero` reads the edge tables written by ``posterkg graph build`` (building them first
when they are missing and the store is writable) and returns a :class:`GraphBundle`:

* node types ``user`` (every user of the ``users`` table, plus any user with train edges),
  ``movie`` (every movie of the ``movies`` table) and ``concept`` (every concept with a movie or
  preference edge); node index order is ascending database id;
* edge types and their reverses (``rev_`` + relation, same weights and attributes)::

      ('user', 'pos', 'movie')       liked in train (rating >= 4)        ts, rating
      ('user', 'neu', 'movie')       rating 3                             ts, rating
      ('user', 'neg', 'movie')       disliked (rating <= 2)               ts, rating
      ('movie', 'has', 'concept')    poster shows concept                 weight = movie_concept_edges.weight
      ('user', 'likes', 'concept')   preference score > 0                 weight = score
      ('user', 'dislikes', 'concept') preference score < 0                weight = -score (> 0)

  (the preferences are ``user_prefs`` by default; with ``[graph] user_interests`` they are the
  ``user_interests`` rows of that backend or run, score = +/- confidence)

* every edge store has ``edge_index`` (long, 2 x E) and ``edge_weight`` (float, E); interaction
  edges also ``ts`` (long, seconds) and ``rating`` (float). Interaction ``edge_weight`` is
  ``(r-3)/2`` for liked, ``(3-r)/2`` for disliked and 1 for neutral with
  ``interaction_weight = "rating"``, else 1. Empty relations are present with zero edges, so the
  metadata is the same on every data set.
* ``data['concept'].type_id`` indexes ``bundle.concept_type_names``; ``data[t].db_id`` holds the
  database ids of each node type.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from posterkg.errors import InputError
from posterkg.graphs import graph_config
from posterkg.lookup import find_sorted

INTERACTIONS = (("pos", 1), ("neu", 0), ("neg", -1))
EDGE_TYPES = [
    ("user", "pos", "movie"),
    ("user", "neu", "movie"),
    ("user", "neg", "movie"),
    ("movie", "has", "concept"),
    ("user", "likes", "concept"),
    ("user", "dislikes", "concept"),
]
REVERSE_EDGE_TYPES = [(d, f"rev_{r}", s) for s, r, d in EDGE_TYPES]


@dataclasses.dataclass
class GraphBundle:
    """A ``HeteroData`` plus the maps between node indices and database ids."""

    data: Any                                # torch_geometric.data.HeteroData
    user_ids: np.ndarray                     # node index -> user_id
    movie_ids: np.ndarray                    # node index -> movie_id
    concept_ids: np.ndarray                  # node index -> concept_id (each ascending)
    concept_type_names: list[str] = dataclasses.field(default_factory=list)
    config: Any = None                       # the GraphConfig it was built with

    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    @property
    def num_movies(self) -> int:
        return len(self.movie_ids)

    @property
    def num_concepts(self) -> int:
        return len(self.concept_ids)

    def index(self, node_type: str, db_ids) -> np.ndarray:
        """Node indices of database ids of ``node_type`` ("user", "movie", "concept"); an id
        without a node raises :class:`InputError`."""
        return _lookup(getattr(self, f"{node_type}_ids"), db_ids)

    def summary(self) -> dict[str, int]:
        out = {"user": self.num_users, "movie": self.num_movies, "concept": self.num_concepts}
        for et in self.data.edge_types:
            out["-".join(et)] = int(self.data[et].edge_index.shape[1])
        return out


def _ids(store, sql: str) -> np.ndarray:
    return np.asarray(store.execute(sql).fetchnumpy()["id"], dtype=np.int64)


def _lookup(sorted_ids: np.ndarray, ids) -> np.ndarray:
    """Node indices of database ``ids`` (``sorted_ids`` ascending, as every node list is)."""
    pos, ok = find_sorted(sorted_ids, np.asarray(ids, dtype=np.int64))
    if not ok.all():
        raise InputError("an edge refers to a node id missing from its node table")
    return pos


def _ensure_built(store, gc) -> None:
    built = store.table_exists("graph_info") and store.count("graph_info") > 0
    if built:
        return
    if store.read_only:
        raise InputError("the graph tables are not built; run `posterkg graph build` first")
    from posterkg.graphs import build_graphs

    build_graphs(store, gc)


def _stored_config(store):
    """The [graph] settings of the last build (so ``build_hetero(store)`` matches it), else defaults."""
    import json

    from posterkg.graphs import GraphConfig

    if store.table_exists("graph_info"):
        row = store.execute("SELECT config FROM graph_info ORDER BY built_at DESC LIMIT 1").fetchone()
        if row and row[0]:
            known = {f.name for f in dataclasses.fields(GraphConfig)}
            return GraphConfig(**{k: v for k, v in json.loads(row[0]).items() if k in known})
    return GraphConfig()


def _edge_store(data, et, src, dst, weight, **attrs) -> None:
    import torch

    data[et].edge_index = torch.as_tensor(np.stack([src, dst]).astype(np.int64)).reshape(2, -1)
    data[et].edge_weight = torch.as_tensor(np.asarray(weight, dtype=np.float32))
    for k, v in attrs.items():
        data[et][k] = torch.as_tensor(v)


def build_hetero(store, cfg: Any = None) -> GraphBundle:
    """Build the fused graph from the store (see the module docstring for its layout).

    ``cfg``: a :class:`~posterkg.graphs.GraphConfig`, a ``Config`` or a dict of ``[graph]`` keys;
    ``None`` uses the settings of the last ``graph build`` (defaults if there was none).
    """
    import torch
    import torch_geometric.transforms as T
    from torch_geometric.data import HeteroData

    gc = _stored_config(store) if cfg is None else graph_config(cfg)
    _ensure_built(store, gc)

    users_sql = "SELECT user_id AS id FROM user_movie_edges"
    if store.table_exists("users"):
        users_sql = f"SELECT user_id AS id FROM users UNION {users_sql}"
    user_ids = _ids(store, f"SELECT DISTINCT id FROM ({users_sql}) ORDER BY id")
    movies_sql = "SELECT movie_id AS id FROM user_movie_edges"
    if store.table_exists("movies"):
        movies_sql = f"SELECT movie_id AS id FROM movies UNION {movies_sql}"
    movie_ids = _ids(store, f"SELECT DISTINCT id FROM ({movies_sql}) ORDER BY id")
    # user -> concept preferences: user_prefs, or user_interests ([graph] user_interests)
    prefs_params: list = []
    if gc.user_interests:
        from posterkg.graphs.preferences import interest_scores_sql

        prefs_sql, prefs_params = interest_scores_sql(store, gc.user_interests, gc.pref_horizon)
    elif gc.pref_horizon == "mix":
        prefs_sql = ("SELECT user_id, concept_id, sum(score) / 2 AS score FROM user_prefs "
                     "GROUP BY user_id, concept_id")
    else:
        prefs_sql = (f"SELECT user_id, concept_id, score FROM user_prefs "
                     f"WHERE horizon = '{gc.pref_horizon}'")
    p = store.execute(f"SELECT * FROM ({prefs_sql}) WHERE score <> 0 "
                      "ORDER BY user_id, concept_id", prefs_params).fetchnumpy()
    concept_ids = _ids(store, "SELECT DISTINCT id FROM (SELECT concept_id AS id FROM "
                       "movie_concept_edges UNION SELECT concept_id FROM user_prefs) ORDER BY id")
    if gc.user_interests and len(p["concept_id"]):
        concept_ids = np.union1d(concept_ids, np.asarray(p["concept_id"], dtype=np.int64))

    data = HeteroData()
    data["user"].num_nodes = len(user_ids)
    data["movie"].num_nodes = len(movie_ids)
    data["concept"].num_nodes = len(concept_ids)
    data["user"].db_id = torch.as_tensor(user_ids)
    data["movie"].db_id = torch.as_tensor(movie_ids)
    data["concept"].db_id = torch.as_tensor(concept_ids)

    # concept types: from the edges (every concept node with a movie edge has one)
    ctypes = store.df("SELECT DISTINCT concept_id, type FROM movie_concept_edges")
    cmap = dict(zip(ctypes["concept_id"].astype(int), ctypes["type"]))
    type_names = sorted(set(cmap.values()))
    tix = {t: i for i, t in enumerate(type_names)}
    data["concept"].type_id = torch.as_tensor(
        [tix.get(cmap.get(int(c)), -1) for c in concept_ids.tolist()], dtype=torch.long)

    # interactions
    e = store.execute("SELECT user_id, movie_id, sign, rating, ts FROM user_movie_edges "
                      "ORDER BY user_id, ts, movie_id").fetchnumpy()
    u = _lookup(user_ids, e["user_id"])
    m = _lookup(movie_ids, e["movie_id"])
    sign = np.asarray(e["sign"], dtype=np.int64)
    rating = np.asarray(e["rating"], dtype=np.float64)
    ts = np.asarray(e["ts"], dtype=np.int64)
    for rel, s in INTERACTIONS:
        sel = sign == s
        if gc.interaction_weight == "unit" or s == 0:
            w = np.ones(int(sel.sum()))
        else:
            w = (rating[sel] - 3.0) / 2.0 * s
        _edge_store(data, ("user", rel, "movie"), u[sel], m[sel], w,
                    ts=ts[sel], rating=rating[sel].astype(np.float32))

    # movie -> concept
    mc = store.execute("SELECT movie_id, concept_id, weight FROM movie_concept_edges "
                       "ORDER BY movie_id, concept_id").fetchnumpy()
    _edge_store(data, ("movie", "has", "concept"), _lookup(movie_ids, mc["movie_id"]),
                _lookup(concept_ids, mc["concept_id"]), mc["weight"])

    # user -> concept preferences (queried above)
    pu = _lookup(user_ids, p["user_id"])
    pc = _lookup(concept_ids, p["concept_id"])
    score = np.asarray(p["score"], dtype=np.float64)
    _edge_store(data, ("user", "likes", "concept"), pu[score > 0], pc[score > 0], score[score > 0])
    _edge_store(data, ("user", "dislikes", "concept"), pu[score < 0], pc[score < 0],
                -score[score < 0])

    data = T.ToUndirected()(data)
    return GraphBundle(data=data, user_ids=user_ids, movie_ids=movie_ids, concept_ids=concept_ids,
                       concept_type_names=type_names, config=gc)
