"""Item features of the RQ-VAE: blocks read from the database, standardised, L2-normalised, concatenated.

Blocks (any combination, in the order given):

* ``poster``: the movie's row of ``poster_embeddings`` for the poster encoder;
* ``text``: its row of ``text_embeddings`` for the text encoder;
* ``concepts``: its bag over concept ids from ``movie_concept_edges`` (|weight| per concept);
* ``genres``: multi-hot over ``movies.genres``;
* ``year``: the release year (``movies.year``) as soft bins: a Gaussian bump (width
  ``YEAR_WIDTH`` years) at each of ``YEAR_STEP``-year centres spanning the build's years, so
  movies a few years apart get close vectors and a decade boundary is no cliff; the centres are
  the block's frozen vocabulary (a later movie beyond them gets the tails of the outer bins);
* ``collab``: a collaborative vector, the movie's liked-by row (train part of the split, rating
  >= 4) projected onto the top ``collab_dim`` right singular vectors of the train matrix
  (scikit-learn's ``TruncatedSVD``), so movies liked by the same users get close vectors. Only the
  train part is read: the valid and test ratings of the split never shape an ID. The user list
  and the projection are frozen with the version, so a movie ingested later is projected from
  its own train ratings (none: the block is missing for it, as for a cold movie).

Each block is standardised per dimension (mean and standard deviation over the movies that have
it; a constant dimension keeps its scale) and each row of it L2-normalised, so every block weighs
the same in the concatenation. A movie without a requested feature gets zeros for that block
(counted in ``missing``). The :class:`Normaliser` (means, standard deviations and the concept /
genre vocabularies of the build) is stored with the version, so a movie ingested later is
encoded exactly as the build's movies were.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from posterkg.errors import ConfigError, InputError
from posterkg.lookup import find

FEATURES = ("poster", "text", "concepts", "genres", "year", "collab")
YEAR_STEP = 5      # years between the centres of the year block's bins
YEAR_WIDTH = 5.0   # the standard deviation of each bin's Gaussian, in years


@dataclasses.dataclass
class Block:
    name: str
    encoder: str                    # stored encoder name ("" for concepts / genres)
    vocab: list                     # concept ids / genre names / year centres / user ids (collab); [] for dense
    mean: np.ndarray
    std: np.ndarray
    proj: np.ndarray | None = None  # collab: [len(vocab) users, dim] projection

    @property
    def dim(self) -> int:
        return len(self.mean)


@dataclasses.dataclass
class Normaliser:
    blocks: list[Block]

    @property
    def dim(self) -> int:
        return sum(b.dim for b in self.blocks)

    def to_state(self) -> dict:
        import torch

        return {"blocks": [{"name": b.name, "encoder": b.encoder, "vocab": list(b.vocab),
                            "mean": torch.as_tensor(b.mean), "std": torch.as_tensor(b.std),
                            **({} if b.proj is None else {"proj": torch.as_tensor(b.proj)})}
                           for b in self.blocks]}

    @classmethod
    def from_state(cls, state: dict) -> "Normaliser":
        return cls([Block(d["name"], d["encoder"], list(d["vocab"]), d["mean"].numpy().astype(np.float32),
                          d["std"].numpy().astype(np.float32),
                          d["proj"].numpy().astype(np.float32) if "proj" in d else None)
                    for d in state["blocks"]])


def check_features(features) -> list[str]:
    if not isinstance(features, (list, tuple)) or not features:
        raise ConfigError(f"semantic-id features must be a non-empty list of {', '.join(FEATURES)}; "
                          f"got {features!r}")
    bad = [f for f in features if f not in FEATURES]
    if bad:
        raise ConfigError(f"unknown semantic-id feature(s) {', '.join(map(repr, bad))}; known: {', '.join(FEATURES)}")
    if len(set(features)) != len(features):
        raise ConfigError(f"semantic-id features repeat a block: {features!r}")
    return list(features)


def _raw_dense(store, kind: str, encoder: str, movie_ids: np.ndarray) -> tuple[str, np.ndarray, np.ndarray]:
    from posterkg.embed.posters import load_features, resolve_feature_encoder

    table = {"poster": "poster_embeddings", "text": "text_embeddings"}[kind]
    if not store.table_exists(table):
        raise InputError(f"table {table} is missing: run `posterkg embed {kind}s` first")
    name = resolve_feature_encoder(kind, encoder)
    ids, mat = load_features(store, kind, name)
    i, ok = find(np.asarray(movie_ids, np.int64), np.asarray(ids, np.int64))
    out = np.zeros((len(movie_ids), mat.shape[1]), np.float32)
    has = np.zeros(len(movie_ids), bool)
    out[i[ok]] = mat[ok]
    has[i[ok]] = True
    return name, out, has


def _raw_concepts(store, movie_ids: np.ndarray, vocab: list | None):
    if not store.table_exists("movie_concept_edges"):
        raise InputError("table movie_concept_edges is missing: run `posterkg graph build` first")
    mc = store.execute("SELECT movie_id, concept_id, weight FROM movie_concept_edges").fetchnumpy()
    if vocab is None:
        vocab = sorted(int(c) for c in np.unique(mc["concept_id"]))
    if not vocab:
        raise InputError("movie_concept_edges is empty: run `posterkg graph build` after `posterkg schema`")
    i, ok_m = find(np.asarray(movie_ids, np.int64), np.asarray(mc["movie_id"], np.int64))
    j, ok_c = find(np.asarray(vocab, np.int64), np.asarray(mc["concept_id"], np.int64))
    ok = ok_m & ok_c
    out = np.zeros((len(movie_ids), len(vocab)), np.float32)
    out[i[ok], j[ok]] = np.abs(np.asarray(mc["weight"], np.float32)[ok])
    return vocab, out, out.any(1)


def _raw_genres(store, movie_ids: np.ndarray, vocab: list | None):
    rows = store.execute("SELECT movie_id, genres FROM movies").fetchall()
    if vocab is None:
        vocab = sorted({str(g) for _, gs in rows for g in (gs or []) if g and g != "(no genres listed)"})
    if not vocab:
        raise InputError("no movie has genres in table movies")
    gpos = {g: j for j, g in enumerate(vocab)}
    out = np.zeros((len(movie_ids), len(vocab)), np.float32)
    rows_i, ok = find(np.asarray(movie_ids, np.int64), np.array([int(m) for m, _ in rows], np.int64))
    for i, keep, (_, gs) in zip(rows_i.tolist(), ok.tolist(), rows):
        if not keep:
            continue
        for g in gs or []:
            j = gpos.get(str(g))
            if j is not None:
                out[i, j] = 1.0
    return vocab, out, out.any(1)


def _raw_year(store, movie_ids: np.ndarray, vocab: list | None):
    """(centres, X, has): each movie's year as Gaussian soft bins over ``centres`` (years)."""
    rows = store.execute("SELECT movie_id, year FROM movies WHERE year IS NOT NULL").fetchnumpy()
    i, ok = find(np.asarray(movie_ids, np.int64), np.asarray(rows["movie_id"], np.int64))
    years = np.asarray(rows["year"], np.float64)
    if vocab is None:
        if not ok.any():
            raise InputError("no movie has a year in table movies")
        lo, hi = years[ok].min(), years[ok].max()
        vocab = list(range(int(lo // YEAR_STEP) * YEAR_STEP, int(hi) + YEAR_STEP, YEAR_STEP))
    out = np.zeros((len(movie_ids), len(vocab)), np.float32)
    has = np.zeros(len(movie_ids), bool)
    centres = np.asarray(vocab, np.float64)
    out[i[ok]] = np.exp(-0.5 * ((years[ok, None] - centres[None]) / YEAR_WIDTH) ** 2)
    has[i[ok]] = True
    return vocab, out, has


def _raw_collab(store, movie_ids: np.ndarray, users: list | None, proj: np.ndarray | None,
                dim: int, seed: int):
    """(users, proj, X, has): each movie's train-positive row over ``users`` times ``proj``.
    A build (``proj`` None) fits the projection: the top ``dim`` right singular vectors of the
    movies x users train-positive matrix."""
    import scipy.sparse as sp

    from posterkg.ratings import POSITIVE_MIN

    if not store.table_exists("split") or not store.count("split", "WHERE part = 'train'"):
        raise InputError("the collab semantic-id feature reads the train part of the split: "
                         "run `posterkg split` first")
    liked = store.execute(
        "SELECT s.user_id, s.movie_id FROM split s JOIN ratings r USING (user_id, movie_id) "
        f"WHERE s.part = 'train' AND r.rating >= {POSITIVE_MIN}").fetchnumpy()
    if users is None:
        users = sorted(int(u) for u in np.unique(liked["user_id"]))
    rows, r_ok = find(np.asarray(movie_ids, np.int64), np.asarray(liked["movie_id"], np.int64))
    cols, c_ok = find(np.asarray(users, np.int64), np.asarray(liked["user_id"], np.int64))
    keep = r_ok & c_ok
    rows, cols = rows[keep], cols[keep]
    mat = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(len(movie_ids), len(users)))
    if proj is None:
        from sklearn.decomposition import TruncatedSVD

        k = min(dim, min(mat.shape) - 1)
        if k < 1 or mat.nnz == 0:
            raise InputError("too few train ratings >= 4 for the collab semantic-id feature")
        proj = TruncatedSVD(n_components=k, random_state=seed).fit(mat).components_.T.astype(np.float32)
    has = np.asarray(mat.getnnz(axis=1) > 0)
    return users, proj, np.asarray(mat @ proj, np.float32), has


def _apply(raw: np.ndarray, has: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    x = (raw - mean) / std
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    x[~has] = 0.0
    return x.astype(np.float32)


def item_features(store, movie_ids: np.ndarray, features: list[str] | None = None, *,
                  poster_encoder: str = "efficientnet-lite0", text_encoder: str = "minilm",
                  normaliser: Normaliser | None = None, collab_dim: int = 64,
                  seed: int = 0) -> tuple[np.ndarray, Normaliser, dict[str, int]]:
    """(X float32 [len(movie_ids), dim], normaliser, missing per block) for these movies.

    Without ``normaliser`` the statistics and vocabularies are computed on these movies (a build);
    with one (an incremental ``assign``) they are the build's, encoders included."""
    movie_ids = np.asarray(movie_ids, np.int64)
    if normaliser is None:
        features = check_features(features)
        specs = [(f, {"poster": poster_encoder, "text": text_encoder}.get(f, ""), None) for f in features]
    else:
        specs = [(b.name, b.encoder, b) for b in normaliser.blocks]
    blocks, parts, missing = [], [], {}
    for name, encoder, fixed in specs:
        vocab: list = []
        proj = None
        if name in ("poster", "text"):
            encoder, raw, has = _raw_dense(store, name, encoder, movie_ids)
            if fixed is not None and raw.shape[1] != fixed.dim:
                raise InputError(f"{name} embeddings of {encoder!r} now have {raw.shape[1]} dimensions, "
                                 f"the semantic-id version was built on {fixed.dim}")
        elif name == "concepts":
            vocab, raw, has = _raw_concepts(store, movie_ids, fixed.vocab if fixed else None)
        elif name == "collab":
            vocab, proj, raw, has = _raw_collab(store, movie_ids, fixed.vocab if fixed else None,
                                                fixed.proj if fixed else None, collab_dim, seed)
        elif name == "year":
            vocab, raw, has = _raw_year(store, movie_ids, fixed.vocab if fixed else None)
        else:
            vocab, raw, has = _raw_genres(store, movie_ids, fixed.vocab if fixed else None)
        if fixed is None:
            if not has.any():
                raise InputError(f"no movie has the {name!r} feature")
            mean = raw[has].mean(0)
            std = raw[has].std(0)
            std = np.where(std > 1e-6, std, 1.0).astype(np.float32)
            fixed = Block(name, encoder, vocab, mean.astype(np.float32), std, proj)
        blocks.append(fixed)
        parts.append(_apply(raw, has, fixed.mean, fixed.std))
        missing[name] = int((~has).sum())
    return np.concatenate(parts, 1), Normaliser(blocks), missing
