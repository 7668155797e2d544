"""Stage side of the recommenders: read the database once and assemble :class:`ModelInputs`.

This is the only module of :mod:`posterkg.gnn` that reads the database for models (the train
stage, ``posterkg train``, ``load_model`` and the benchmarks call it); models get the result.

* ids: users with rows in ``split``, every movie of ``movies``, every concept with a movie or
  preference edge, MovieLens' genres; or, for a stored model, the :class:`IdVocab` it was saved
  with (rows naming users or movies outside it are dropped and counted in ``unknown``).
* graph: interaction relations (pos/neu/neg) from the train part by the one rating rule
  (:mod:`posterkg.ratings`, the same edges ``graph build`` writes), ``has`` from
  ``movie_concept_edges``, ``likes``/``dislikes`` from ``user_prefs`` or, when the last
  ``graph build`` set ``[graph] user_interests``, from those interests (horizon as ``[graph]
  pref_horizon`` of the last build), ``genre`` from ``movies.genres``.
* features: ``poster_embeddings`` / ``text_embeddings`` rows of the requested encoders.
* semantic IDs: ``semantic_ids`` rows of the requested version (:func:`load_semantic_ids`).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from posterkg.errors import InputError
from posterkg.gnn.base import Graph, IdVocab, ModelInputs
from posterkg.gnn.data import Interactions, load_interactions


@dataclasses.dataclass
class Assembled:
    inputs: ModelInputs
    unknown: dict[str, int]      # rows dropped because their ids are not in a saved vocabulary


def _genres(store) -> tuple[list[str], np.ndarray, np.ndarray]:
    df = store.df("SELECT movie_id, unnest(genres) AS genre FROM movies")
    df = df.dropna()
    names = sorted(df["genre"].unique().tolist())
    return names, df["movie_id"].to_numpy(np.int64), df["genre"].to_numpy()


def _concept_ids(store) -> np.ndarray:
    parts = []
    if store.table_exists("movie_concept_edges"):
        parts.append("SELECT concept_id AS id FROM movie_concept_edges")
    if store.table_exists("user_prefs"):
        parts.append("SELECT concept_id AS id FROM user_prefs")
    if not parts:
        return np.zeros(0, np.int64)
    return store.df(f"SELECT DISTINCT id FROM ({' UNION '.join(parts)}) ORDER BY id")["id"].to_numpy(np.int64)


def graph_built(store) -> bool:
    return store.table_exists("graph_info") and store.count("graph_info") > 0


def add_user_concepts(g: Graph, ids: IdVocab, edges) -> Graph:
    """Set ``g``'s likes/dislikes relations from ``edges`` (``user_id``, ``concept_id``, signed
    ``score`` columns, database ids; score > 0 likes, < 0 dislikes with weight -score); rows
    naming ids outside ``ids`` are dropped."""
    u, ok1 = ids.lookup("user", edges["user_id"])
    c, ok2 = ids.lookup("concept", edges["concept_id"])
    s = np.asarray(edges["score"], np.float32)
    ok = ok1 & ok2
    g.add("likes", u[ok & (s > 0)], c[ok & (s > 0)], s[ok & (s > 0)])
    g.add("dislikes", u[ok & (s < 0)], c[ok & (s < 0)], -s[ok & (s < 0)])
    return g


def build_graph(store, ids: IdVocab, data: Interactions, *, concepts: bool = True) -> Graph:
    g = Graph(ids.sizes)
    for name, sign in (("pos", 1), ("neu", 0), ("neg", -1)):
        u, m = data.train_edges(sign)
        g.add(name, u, m)
    if concepts and len(ids.concept_ids) and graph_built(store):
        mc = store.execute("SELECT movie_id, concept_id, weight FROM movie_concept_edges "
                           "ORDER BY movie_id, concept_id").fetchnumpy()
        m, ok1 = ids.lookup("movie", mc["movie_id"])
        c, ok2 = ids.lookup("concept", mc["concept_id"])
        ok = ok1 & ok2
        g.add("has", m[ok], c[ok], np.abs(np.asarray(mc["weight"], np.float32)[ok]))
        # the graph's user -> concept edges as the last `graph build` defined them: user_prefs,
        # or user_interests when [graph] user_interests selected them (one definition for every
        # reader: posterkg.interests.edges.user_concept_sql)
        from posterkg.interests.edges import user_concept_sql

        sql, params = user_concept_sql(store)
        p = store.execute(f"SELECT * FROM ({sql}) ORDER BY user_id, concept_id", params).fetchnumpy()
        add_user_concepts(g, ids, p)
    if ids.genre_names:
        _, gm, gg = _genres(store)
        m, ok = ids.lookup("movie", gm)
        gidx = {n: i for i, n in enumerate(ids.genre_names)}
        gi = np.array([gidx.get(x, -1) for x in gg], np.int64)
        ok &= gi >= 0
        g.add("genre", m[ok], gi[ok])
    return g


def load_features(store, ids: IdVocab, features: dict[str, str]) -> tuple[dict, dict]:
    """``features``: name ("poster"/"text") -> encoder, a stored name or an alias (``minilm``,
    ``pixels``), read by :func:`posterkg.embed.posters.load_features`. Missing tables or rows are
    an error that names the command that writes them."""
    from posterkg.embed.posters import load_features as read_features

    out, mask = {}, {}
    for name, encoder in features.items():
        if name not in ("poster", "text"):
            raise InputError(f"unknown feature {name!r}; known: poster, text")
        movie_ids, vecs = read_features(store, name, encoder)
        m, ok = ids.lookup("movie", movie_ids)
        mat = np.zeros((len(ids.movie_ids), vecs.shape[1]), np.float32)
        mat[m[ok]] = vecs[ok]
        has = np.zeros(len(ids.movie_ids), bool)
        has[m[ok]] = True
        out[name], mask[name] = mat, has
    return out, mask


def load_semantic_ids(store, ids: IdVocab, version: str) -> np.ndarray:
    """[n_movies, L + 1] int64 semantic IDs of ``version`` from ``semantic_ids`` (a row of -1 for
    a movie without one). A missing table or version is an error naming the command that
    builds it."""
    hint = f"run `posterkg semantic-ids build --version {version}` first"
    if not store.table_exists("semantic_ids"):
        raise InputError(f"table semantic_ids is missing: {hint}")
    df = store.df("SELECT movie_id, codes FROM semantic_ids WHERE version = ? ORDER BY movie_id", [version])
    if len(df) == 0:
        known = store.df("SELECT DISTINCT version FROM semantic_ids ORDER BY version")["version"].tolist()
        raise InputError(f"no semantic IDs of version {version!r} (built: {', '.join(known) or 'none'}): {hint}")
    lengths = {len(c) for c in df["codes"]}
    if len(lengths) != 1:
        raise InputError(f"semantic IDs of version {version!r} have different lengths {sorted(lengths)}: {hint}")
    m, ok = ids.lookup("movie", df["movie_id"].to_numpy(np.int64))
    codes = np.stack([np.asarray(c, np.int64) for c in df["codes"]])
    out = np.full((len(ids.movie_ids), lengths.pop()), -1, np.int64)
    out[m[ok]] = codes[ok]
    return out


def assemble(store, *, vocab: IdVocab | None = None, features: dict[str, str] | None = None,
             need_graph: bool = False) -> Assembled:
    """The inputs of every model from the database (see the module docstring).

    ``features`` may name a semantic-ID version under ``"semantic_ids"``
    (:func:`posterkg.gnn.stage.feature_spec`): read for training; for a stored model
    (``vocab`` given) it is not read again, the model carries the IDs it was trained with."""
    features = dict(features or {})
    semantic = features.pop("semantic_ids", None)
    data = load_interactions(store)
    unknown = {"users": 0, "movies": 0}
    vocab_given = vocab is not None
    if vocab is None:
        names, _, _ = _genres(store)
        vocab = IdVocab(data.user_ids, data.movie_ids, _concept_ids(store), names)
    else:
        data, unknown = data.restricted(vocab.user_ids, vocab.movie_ids)
    if need_graph and not graph_built(store):
        raise InputError("the graph tables are not built: run `posterkg graph build` first")
    graph = build_graph(store, vocab, data)
    feats, fmask = load_features(store, vocab, features)
    source = "graph tables" if graph_built(store) else "interactions and genres only"
    inputs = ModelInputs(vocab, data, graph, feats, fmask, source)
    if semantic and not vocab_given:
        inputs.semantic_ids = load_semantic_ids(store, vocab, semantic)
        inputs.semantic_version = str(semantic)
    return Assembled(inputs, unknown)
