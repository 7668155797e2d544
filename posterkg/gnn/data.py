"""Interactions for training and evaluation, read from the ``split`` table.

:func:`load_interactions` turns ``split`` joined with ``ratings`` into an :class:`Interactions`:

* index maps: node index <-> database id for users and movies. Movies are *every* movie of the
  ``movies`` table (the catalogue every model ranks over, the same node set as the graphs'
  ``GraphBundle``); users are every user with at least one row in ``split``.
* one :class:`Part` per split part (``train`` / ``valid`` / ``test``) as parallel numpy arrays
  (user index, movie index, rating, timestamp);
* scipy CSR matrices (users x movies) for the per-user seen sets, the relevant sets
  (rating >= ``relevant_min``) and the train positives / explicit dislikes.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import scipy.sparse as sp

from posterkg.errors import InputError
from posterkg.store import Store

PARTS = ("train", "valid", "test")
RELEVANT_MIN = 4.0   # a rating >= 4 is a positive / relevant item
DISLIKED_MAX = 2.0   # a rating <= 2 is an explicit dislike (hard negative)


@dataclasses.dataclass
class Part:
    users: np.ndarray     # int64 user indices
    movies: np.ndarray    # int64 movie indices
    ratings: np.ndarray   # float32
    ts: np.ndarray        # int64

    def __len__(self) -> int:
        return len(self.users)

    def select(self, mask: np.ndarray) -> "Part":
        return Part(self.users[mask], self.movies[mask], self.ratings[mask], self.ts[mask])


@dataclasses.dataclass
class Interactions:
    user_ids: np.ndarray                 # node index -> users.user_id
    movie_ids: np.ndarray                # node index -> movies.movie_id
    parts: dict[str, Part]
    relevant_min: float = RELEVANT_MIN
    disliked_max: float = DISLIKED_MAX

    def __post_init__(self) -> None:
        self.user_index = {int(u): i for i, u in enumerate(self.user_ids)}
        self.movie_index = {int(m): i for i, m in enumerate(self.movie_ids)}
        self._cache: dict[tuple, sp.csr_matrix] = {}

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_movies(self) -> int:
        return len(self.movie_ids)

    # -- matrices ----------------------------------------------------------------------------
    def matrix(self, *parts: str, min_rating: float | None = None,
               max_rating: float | None = None) -> sp.csr_matrix:
        """Binary users x movies CSR of the rows of ``parts`` within the rating bounds."""
        key = (parts, min_rating, max_rating)
        if key not in self._cache:
            us, ms = [], []
            for name in parts:
                p = self.parts[name]
                keep = np.ones(len(p), dtype=bool)
                if min_rating is not None:
                    keep &= p.ratings >= min_rating
                if max_rating is not None:
                    keep &= p.ratings <= max_rating
                us.append(p.users[keep])
                ms.append(p.movies[keep])
            u = np.concatenate(us) if us else np.zeros(0, np.int64)
            m = np.concatenate(ms) if ms else np.zeros(0, np.int64)
            mat = sp.csr_matrix((np.ones(len(u), np.float32), (u, m)),
                                shape=(self.n_users, self.n_movies))
            mat.sum_duplicates()
            mat.data[:] = 1.0
            self._cache[key] = mat
        return self._cache[key]

    def seen(self, part: str) -> sp.csr_matrix:
        """Movies excluded from the ranking when evaluating on ``part``: every movie of the earlier
        parts (``test`` -> train + valid, ``valid`` -> train)."""
        earlier = PARTS[: PARTS.index(part)]
        return self.matrix(*earlier)

    def relevant(self, part: str) -> sp.csr_matrix:
        return self.matrix(part, min_rating=self.relevant_min)

    @property
    def train_pos(self) -> sp.csr_matrix:
        return self.matrix("train", min_rating=self.relevant_min)

    @property
    def train_neg(self) -> sp.csr_matrix:
        """Explicitly disliked train movies (rating <= ``disliked_max``)."""
        return self.matrix("train", max_rating=self.disliked_max)

    def train_edges(self, sign: int) -> tuple[np.ndarray, np.ndarray]:
        """(user, movie) index arrays of train edges with the given sign (+1 / 0 / -1)."""
        p = self.parts["train"]
        if sign > 0:
            keep = p.ratings >= self.relevant_min
        elif sign < 0:
            keep = p.ratings <= self.disliked_max
        else:
            keep = (p.ratings > self.disliked_max) & (p.ratings < self.relevant_min)
        return p.users[keep], p.movies[keep]

    def summary(self) -> dict:
        return {"users": self.n_users, "movies": self.n_movies,
                **{name: len(p) for name, p in self.parts.items()},
                "train_pos": int(self.train_pos.nnz), "train_neg": int(self.train_neg.nnz)}


def load_interactions(store: Store, *, relevant_min: float = RELEVANT_MIN,
                      disliked_max: float = DISLIKED_MAX) -> Interactions:
    """Read ``split`` + ``ratings`` (and the ``movies`` catalogue) into :class:`Interactions`."""
    for table in ("movies", "ratings", "split"):
        if not store.table_exists(table):
            raise InputError(f"table {table} is missing: run `posterkg ingest` and `posterkg split` first")
    movie_ids = store.df("SELECT movie_id FROM movies ORDER BY movie_id")["movie_id"].to_numpy(np.int64)
    rows = store.df(
        "SELECT s.user_id, s.movie_id, s.part, r.rating, r.ts FROM split s "
        "JOIN ratings r USING (user_id, movie_id) ORDER BY s.user_id, r.ts, s.movie_id"
    )
    if len(rows) == 0:
        raise InputError("the split table is empty: run `posterkg split` first")
    user_ids = np.unique(rows["user_id"].to_numpy(np.int64))
    u_idx = np.searchsorted(user_ids, rows["user_id"].to_numpy(np.int64))
    mids = rows["movie_id"].to_numpy(np.int64)
    m_idx = np.searchsorted(movie_ids, mids)
    m_idx_c = np.minimum(m_idx, len(movie_ids) - 1)
    unknown = movie_ids[m_idx_c] != mids
    if unknown.any():
        raise InputError(f"{int(unknown.sum())} split rows name movies missing from the movies table "
                         f"(e.g. movie {int(mids[unknown][0])})")
    ratings = rows["rating"].to_numpy(np.float32)
    ts = rows["ts"].to_numpy(np.int64)
    part_col = rows["part"].to_numpy()
    parts = {}
    for name in PARTS:
        keep = part_col == name
        parts[name] = Part(u_idx[keep], m_idx[keep], ratings[keep], ts[keep])
    return Interactions(user_ids, movie_ids, parts, relevant_min, disliked_max)


def from_frames(ratings, split, movie_ids=None) -> Interactions:
    """Build :class:`Interactions` from pandas frames (``ratings``: user_id, movie_id, rating[, ts];
    ``split``: user_id, movie_id, part) without a database; used by tests and synthetic data."""
    import pandas as pd

    rows = split.merge(ratings, on=["user_id", "movie_id"], how="inner")
    if "ts" not in rows:
        rows["ts"] = 0
    rows = rows.sort_values(["user_id", "ts", "movie_id"])
    movie_ids = np.unique(np.asarray(movie_ids if movie_ids is not None else rows["movie_id"], np.int64))
    user_ids = np.unique(rows["user_id"].to_numpy(np.int64))
    u_idx = np.searchsorted(user_ids, rows["user_id"].to_numpy(np.int64))
    m_idx = np.searchsorted(movie_ids, rows["movie_id"].to_numpy(np.int64))
    parts = {}
    for name in PARTS:
        keep = (rows["part"] == name).to_numpy()
        parts[name] = Part(u_idx[keep], m_idx[keep], rows["rating"].to_numpy(np.float32)[keep],
                           pd.to_numeric(rows["ts"]).to_numpy(np.int64)[keep])
    return Interactions(user_ids, movie_ids, parts)
