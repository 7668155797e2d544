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
from posterkg.lookup import find_sorted
from posterkg.ratings import NEGATIVE_BELOW, POSITIVE_MIN, signs
from posterkg.store import Store

PARTS = ("train", "valid", "test")
RELEVANT_MIN = POSITIVE_MIN   # a rating >= 4 is a positive / relevant item (posterkg.ratings)


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
class History:
    """Per-user known interactions at scoring time (what ``score``/``recommend`` take, as
    implicit's ``user_items``): rows sorted by user, then (timestamp, movie id).

    ``users``/``movies``/``ratings``/``ts`` are parallel arrays; ``indptr`` gives each user's
    slice. :meth:`csr` is the binary users x movies matrix (all rated movies: what the protocol
    excludes from the ranking); ``positives`` only rating >= 4."""

    n_users: int
    n_movies: int
    users: np.ndarray
    movies: np.ndarray
    ratings: np.ndarray
    ts: np.ndarray
    part: str | None = None      # the part this history predicts ("valid": train rows; "test": train + valid)

    def __post_init__(self) -> None:
        self.indptr = np.concatenate([[0], np.cumsum(np.bincount(self.users, minlength=self.n_users))]).astype(np.int64)
        self._mats: dict = {}

    def _mat(self, keep: np.ndarray | None, key: str) -> sp.csr_matrix:
        if key not in self._mats:
            u, m = (self.users, self.movies) if keep is None else (self.users[keep], self.movies[keep])
            mat = sp.csr_matrix((np.ones(len(u), np.float32), (u, m)), shape=(self.n_users, self.n_movies))
            mat.sum_duplicates()
            mat.data[:] = 1.0
            self._mats[key] = mat
        return self._mats[key]

    def csr(self) -> sp.csr_matrix:
        """Every known (user, movie), binary: the movies excluded from the ranking."""
        return self._mat(None, "all")

    def positives(self) -> sp.csr_matrix:
        return self._mat(self.ratings >= RELEVANT_MIN, "pos")

    def sequence(self, user: int, positives_only: bool = True) -> np.ndarray:
        """The user's movies in time order (by default only rating >= 4)."""
        a, b = self.indptr[user], self.indptr[user + 1]
        m = self.movies[a:b]
        return m[self.ratings[a:b] >= RELEVANT_MIN] if positives_only else m

    def __len__(self) -> int:
        return len(self.users)


@dataclasses.dataclass
class Interactions:
    user_ids: np.ndarray                 # node index -> users.user_id
    movie_ids: np.ndarray                # node index -> movies.movie_id
    parts: dict[str, Part]
    relevant_min: float = RELEVANT_MIN

    def __post_init__(self) -> None:
        self._cache: dict[tuple, sp.csr_matrix] = {}

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_movies(self) -> int:
        return len(self.movie_ids)

    # -- matrices ----------------------------------------------------------------------------
    def matrix(self, *parts: str, min_rating: float | None = None,
               below_rating: float | None = None) -> sp.csr_matrix:
        """Binary users x movies CSR of the rows of ``parts`` with ``min_rating <= rating <
        below_rating`` (either bound optional)."""
        key = (parts, min_rating, below_rating)
        if key not in self._cache:
            us, ms = [], []
            for name in parts:
                p = self.parts[name]
                keep = np.ones(len(p), dtype=bool)
                if min_rating is not None:
                    keep &= p.ratings >= min_rating
                if below_rating is not None:
                    keep &= p.ratings < below_rating
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
        """Explicitly disliked train movies (sign -1 under :mod:`posterkg.ratings`)."""
        return self.matrix("train", below_rating=NEGATIVE_BELOW)

    def train_edges(self, sign: int) -> tuple[np.ndarray, np.ndarray]:
        """(user, movie) index arrays of train edges with the given sign (+1 / 0 / -1), by the
        one rating rule of :mod:`posterkg.ratings` (the graphs stage uses the same)."""
        p = self.parts["train"]
        keep = signs(p.ratings) == int(np.sign(sign))
        return p.users[keep], p.movies[keep]

    def history(self, part: str) -> "History":
        """What is known about every user when ``part`` is predicted: the rows of the earlier
        parts (``valid`` -> train; ``test`` -> train + valid), in time order per user."""
        earlier = PARTS[: PARTS.index(part)]
        key = ("history",) + earlier
        if key not in self._cache:
            ps = [self.parts[n] for n in earlier]
            u = np.concatenate([p.users for p in ps])
            m = np.concatenate([p.movies for p in ps])
            r = np.concatenate([p.ratings for p in ps])
            t = np.concatenate([p.ts for p in ps])
            order = np.lexsort((m, t, u))          # by user, then (timestamp, movie id)
            self._cache[key] = History(self.n_users, self.n_movies, u[order], m[order], r[order], t[order], part)
        return self._cache[key]

    def restricted(self, user_ids: np.ndarray, movie_ids: np.ndarray) -> tuple["Interactions", dict]:
        """The same rows in the index space of a saved id vocabulary (``user_ids``/``movie_ids``
        ascending): rows whose user or movie is not in it are dropped and counted."""
        user_ids = np.asarray(user_ids, np.int64)
        movie_ids = np.asarray(movie_ids, np.int64)

        parts, dropped_u, dropped_m = {}, set(), set()
        for name, p in self.parts.items():
            u, oku = find_sorted(user_ids, self.user_ids[p.users])
            m, okm = find_sorted(movie_ids, self.movie_ids[p.movies])
            dropped_u.update(self.user_ids[p.users[~oku]].tolist())
            dropped_m.update(self.movie_ids[p.movies[~okm]].tolist())
            ok = oku & okm
            parts[name] = Part(u[ok], m[ok], p.ratings[ok], p.ts[ok])
        new_movies = len(np.setdiff1d(self.movie_ids, movie_ids))
        return (Interactions(user_ids, movie_ids, parts, self.relevant_min),
                {"users": len(dropped_u), "movies": max(len(dropped_m), new_movies)})

    def refit_view(self) -> "Interactions":
        """The data a model is *refit* on (the harness's refit rule): the train and valid rows
        together as the train part, an empty valid part, the test part unchanged. ``history``,
        ``seen`` and ``relevant`` of ``test`` are the same as here; a model's training data (train
        history, ``train_pos``) now include the valid period."""
        h = self.history("test")                     # train + valid rows, in the protocol's order
        va = self.parts["valid"]
        return Interactions(self.user_ids, self.movie_ids,
                            {"train": Part(h.users, h.movies, h.ratings, h.ts),
                             "valid": va.select(np.zeros(len(va), bool)), "test": self.parts["test"]},
                            self.relevant_min)

    def shifted_view(self, share: float = 0.1) -> "Interactions":
        """The protocol one period earlier, to choose between rules on valid without reading
        test: each user's train rows split like the fixed protocol (the last max(1, floor(n *
        share)) of the n train rows, by (timestamp, movie id), become the inner valid part; users
        with fewer than 10 train rows keep them all in train), and the valid part becomes the
        test part."""
        h = self.history("valid")                    # the train rows, in the protocol's order
        tr = Part(h.users, h.movies, h.ratings, h.ts)
        counts = np.bincount(tr.users, minlength=self.n_users)
        start = np.concatenate([[0], np.cumsum(counts)])[:-1]
        rank = np.arange(len(tr)) - start[tr.users]                 # position within the user's rows
        n = counts[tr.users]
        k = np.maximum(1, np.floor(n * share).astype(np.int64))
        inner = (n >= 10) & (rank >= n - k)
        return Interactions(self.user_ids, self.movie_ids,
                            {"train": tr.select(~inner), "valid": tr.select(inner), "test": self.parts["valid"]},
                            self.relevant_min)

    def summary(self) -> dict:
        return {"users": self.n_users, "movies": self.n_movies,
                **{name: len(p) for name, p in self.parts.items()},
                "train_pos": int(self.train_pos.nnz), "train_neg": int(self.train_neg.nnz)}


PART_CODE = {name: i for i, name in enumerate(PARTS)}   # the part as a UTINYINT code in SQL


def read_split_rows(store: Store) -> dict[str, np.ndarray]:
    """``split`` joined with ``ratings`` as numpy columns, ordered by user, then (timestamp, movie
    id): ``user_id``/``movie_id`` int32, ``part`` uint8 (the index in :data:`PARTS`; 3 for any
    other label), ``rating`` float32 (NaN when NULL), ``ts`` int64 (0 when NULL). DuckDB fills
    the arrays directly (``fetchnumpy``): no per-row Python object (25M ratings: 0.4 GB of
    columns instead of 4.6 GB with ``part`` as Python strings)."""
    case = " ".join(f"WHEN '{name}' THEN {code}" for name, code in PART_CODE.items())
    cols = store.execute(
        f"SELECT s.user_id::INTEGER AS user_id, s.movie_id::INTEGER AS movie_id, "
        f"(CASE s.part {case} ELSE {len(PARTS)} END)::UTINYINT AS part, "
        f"r.rating::FLOAT AS rating, coalesce(r.ts, 0)::BIGINT AS ts FROM split s "
        f"JOIN ratings r USING (user_id, movie_id) ORDER BY s.user_id, r.ts, s.movie_id"
    ).fetchnumpy()
    out = {}
    for name, dtype, fill in (("user_id", np.int32, 0), ("movie_id", np.int32, 0), ("part", np.uint8, len(PARTS)),
                              ("rating", np.float32, np.nan), ("ts", np.int64, 0)):
        col = cols[name]
        if isinstance(col, np.ma.MaskedArray):
            col = col.filled(fill)
        out[name] = np.ascontiguousarray(col, dtype=dtype)
    return out


def load_interactions(store: Store, *, relevant_min: float = RELEVANT_MIN) -> Interactions:
    """Read ``split`` + ``ratings`` (and the ``movies`` catalogue) into :class:`Interactions`."""
    for table in ("movies", "ratings", "split"):
        if not store.table_exists(table):
            raise InputError(f"table {table} is missing: run `posterkg ingest` and `posterkg split` first")
    movie_ids = np.asarray(store.execute("SELECT movie_id FROM movies ORDER BY movie_id").fetchnumpy()["movie_id"],
                           np.int64)
    rows = read_split_rows(store)
    if len(rows["user_id"]) == 0:
        raise InputError("the split table is empty: run `posterkg split` first")
    uid = rows.pop("user_id")
    # rows are ordered by user: the distinct ids and each row's index without a sort
    first = np.flatnonzero(np.r_[True, uid[1:] != uid[:-1]])
    user_ids = uid[first].astype(np.int64)
    u_idx = np.repeat(np.arange(len(first), dtype=np.int64), np.diff(np.r_[first, len(uid)]))
    del uid
    mids = rows.pop("movie_id")
    m_idx, known = find_sorted(movie_ids, mids)
    unknown = ~known
    if unknown.any():
        raise InputError(f"{int(unknown.sum())} split rows name movies missing from the movies table "
                         f"(e.g. movie {int(mids[unknown][0])})")
    del mids, known, unknown
    ratings, ts, part_col = rows["rating"], rows["ts"], rows["part"]
    parts = {}
    for code, name in enumerate(PARTS):
        keep = part_col == code
        parts[name] = Part(u_idx[keep], m_idx[keep], ratings[keep], ts[keep])
    return Interactions(user_ids, movie_ids, parts, relevant_min)


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
