"""Retrieval for one user: the user's subgraph, read from the graph stage's tables.

* ``user_movie_edges``: the user's *train* interactions (valid and test ratings never get here),
  in time order (``ts``, then movie id), each with its rating and sign (+1 liked, 0 neutral,
  -1 disliked);
* ``movie_concept_edges``: the concepts of each of those movies, with their weights, strongest
  first (the movie side of the knowledge graph);
* ``movies``: titles and years, for a model that knows films;
* the user's current interest nodes: the previous interests run of the same key for this user
  (when the user is re-extracted because the input changed), else the user's ``user_prefs``
  rows (strongest first).

:func:`input_hashes` hashes, per user, exactly what the answer depends on (train interactions,
their concepts, ``user_prefs``), so a user with new ratings is re-extracted and the others are not.
The previous run's interests are not part of the hash: they are shown only when the input changed.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Sequence

import pandas as pd

from posterkg.errors import InputError


@dataclasses.dataclass
class Vocabulary:
    version: int
    by_id: dict[int, tuple[str, str]]            # concept_id -> (type, name)
    types: list[str]                             # knowledge types, sorted

    @property
    def by_name(self) -> dict[tuple[str, str], int]:
        return {tn: cid for cid, tn in self.by_id.items()}

    def names(self, ctype: str) -> list[str]:
        return sorted(n for t, n in self.by_id.values() if t == ctype)

    def ids(self, ctype: str) -> list[int]:
        return sorted((cid for cid, (t, _) in self.by_id.items() if t == ctype),
                      key=lambda c: self.by_id[c][1])


@dataclasses.dataclass
class Interaction:
    movie_id: int
    title: str
    year: int | None
    rating: float
    sign: int
    ts: int
    concepts: list[tuple[int, float]]            # (concept_id, weight), strongest first


@dataclasses.dataclass
class UserData:
    user_id: int
    history: list[Interaction]                   # train interactions, oldest first
    prefs: list[tuple[int, str, float]]          # user_prefs: (concept_id, horizon, score)
    previous: list[tuple[int, str, str, float]] = dataclasses.field(default_factory=list)
    # previous run's interests: (concept_id, horizon, polarity, confidence)


def graph_settings(store) -> dict:
    """The ``[graph]`` settings of the last ``graph build`` (graph_info), or {}."""
    if not store.table_exists("graph_info"):
        return {}
    row = store.execute("SELECT config FROM graph_info ORDER BY built_at DESC LIMIT 1").fetchall()
    return json.loads(row[0][0]) if row and row[0][0] else {}


def require_graph(store) -> None:
    for t in ("user_movie_edges", "movie_concept_edges"):
        if not store.table_exists(t) or store.count(t) == 0:
            raise InputError(f"table {t} is empty or missing; run `posterkg graph build` first "
                             "(after `posterkg schema` has projected the posters' concepts)")


def vocab_version(store, wanted: int | None = None) -> int:
    """``wanted``, else the vocabulary version of the graph's movie -> concept edges."""
    if wanted:
        return int(wanted)
    gv = graph_settings(store).get("vocab_version")
    if gv is not None:
        return int(gv)
    if store.table_exists("vocab_concepts"):
        v = store.scalar("SELECT max(vc.version) FROM vocab_concepts vc WHERE vc.concept_id IN "
                         "(SELECT concept_id FROM movie_concept_edges)")
        if v is not None:
            return int(v)
    v = store.scalar("SELECT max(c.version) FROM concepts c WHERE c.concept_id IN "
                     "(SELECT concept_id FROM movie_concept_edges)")
    if v is None:
        raise InputError("no vocabulary version found for movie_concept_edges; run `posterkg schema`")
    return int(v)


def load_vocabulary(store, version: int) -> Vocabulary:
    """The concepts of a frozen vocabulary version (``vocab_concepts``; a bare ``concepts`` table
    with a ``version`` column otherwise)."""
    frame = None
    if store.table_exists("vocab_concepts"):
        frame = store.df("SELECT concept_id, type, name FROM vocab_concepts WHERE version = ? "
                         "ORDER BY concept_id", [version])
    if frame is None or frame.empty:
        frame = store.df("SELECT concept_id, type, name FROM concepts WHERE version = ? "
                         "ORDER BY concept_id", [version])
    if frame.empty:
        raise InputError(f"vocabulary version {version} has no concepts")
    by_id = {int(c): (str(t), str(n)) for c, t, n in zip(frame["concept_id"], frame["type"], frame["name"])}
    return Vocabulary(version, by_id, sorted({t for t, _ in by_id.values()}))


def select_users(store, users: Sequence[int] | None, limit: int | None) -> list[int]:
    """Users with train interactions (all, or ``users``), ascending, the first ``limit``."""
    require_graph(store)
    have = [int(u) for (u,) in store.execute(
        "SELECT DISTINCT user_id FROM user_movie_edges ORDER BY user_id").fetchall()]
    if users is not None:
        wanted = {int(u) for u in users}
        missing = sorted(wanted - set(have))
        if missing:
            raise InputError(f"user(s) {', '.join(map(str, missing[:10]))} have no train "
                             "interactions in user_movie_edges")
        have = [u for u in have if u in wanted]
    return have[:limit] if limit else have


def _register_users(store, user_ids: Sequence[int]) -> None:
    store.register("_interest_users", pd.DataFrame({"user_id": [int(u) for u in user_ids]}))


def input_hashes(store, user_ids: Sequence[int], *, stats: bool = False, current_k: int = 5,
                 concepts_per_movie: int = 8, extra: str = "") -> dict[int, str]:
    """Per user: a hash of what the answer depends on, at the precision it is used.

    * the train interactions (movie, rating, ts) in time order, each with its movie's concepts
      (LLM: the ids shown, ``concepts_per_movie`` strongest; ``stats``: every concept and weight,
      which choose the evidence);
    * ``user_prefs``: LLM: the ``current_k`` strongest rows per horizon and sign with the score
      as printed (2 decimals); ``stats``: every row's concept, horizon, sign and confidence level.

    ``user_prefs`` scores move a little for every user whenever anyone's ratings change (the base
    rate is global); hashing them at the precision the answer uses keeps those users untouched.
    """
    if not user_ids:
        return {}
    _register_users(store, user_ids)
    try:
        if stats:
            mc = """SELECT movie_id, string_agg(concept_id || '=' || round(weight, 9), ','
                                            ORDER BY concept_id) AS c
                    FROM movie_concept_edges GROUP BY movie_id"""
            pr = """SELECT user_id, string_agg(concept_id || ':' || horizon || ':' || sign(score) || ':'
                        || greatest(1, least(8, round((1 - exp(-abs(score))) * 8))), ','
                        ORDER BY concept_id, horizon) AS p
                    FROM user_prefs WHERE user_id IN (SELECT user_id FROM _interest_users)
                      AND score <> 0
                    GROUP BY user_id"""
        else:
            mc = f"""SELECT movie_id, string_agg(concept_id::VARCHAR, ' ' ORDER BY weight DESC, concept_id)
                         AS c
                     FROM (SELECT *, row_number() OVER (PARTITION BY movie_id
                                                        ORDER BY weight DESC, concept_id) AS k
                           FROM movie_concept_edges) WHERE k <= {int(concepts_per_movie)}
                     GROUP BY movie_id"""
            pr = f"""SELECT user_id, string_agg(concept_id || ':' || horizon || ':' || round(score, 2), ','
                                            ORDER BY horizon, sign(score), abs(score) DESC, concept_id) AS p
                     FROM (SELECT *, row_number() OVER (PARTITION BY user_id, horizon, sign(score)
                                                        ORDER BY abs(score) DESC, concept_id) AS k
                           FROM user_prefs WHERE user_id IN (SELECT user_id FROM _interest_users)
                             AND score <> 0)
                     WHERE k <= {int(current_k)}
                     GROUP BY user_id"""
        if not store.table_exists("user_prefs"):
            pr = "SELECT NULL::INTEGER AS user_id, NULL::VARCHAR AS p WHERE false"
        rows = store.execute(f"""
            WITH mc AS ({mc}),
            pr AS ({pr}),
            h AS (
                SELECT e.user_id, string_agg(e.movie_id || ':' || e.rating || ':' || e.ts || ':' ||
                                             coalesce(mc.c, ''), ';' ORDER BY e.ts, e.movie_id) AS h
                FROM user_movie_edges e LEFT JOIN mc USING (movie_id)
                WHERE e.user_id IN (SELECT user_id FROM _interest_users)
                GROUP BY e.user_id)
            SELECT h.user_id, md5(h.h || '|' || coalesce(pr.p, '') || '|' || ?)
            FROM h LEFT JOIN pr USING (user_id)
        """, [extra]).fetchall()
    finally:
        store.con.unregister("_interest_users")
    return {int(u): str(h)[:16] for u, h in rows}


def load_users(store, user_ids: Sequence[int], *, previous_key: tuple | None = None
               ) -> dict[int, UserData]:
    """The subgraph of each user (see the module docstring), in one query per table.

    ``previous_key = (backend, model, vocab_version, spec_hash)``: attach the user's interests of
    that key when some exist (the user is being re-extracted)."""
    _register_users(store, user_ids)
    try:
        e = store.df("""
            SELECT e.user_id, e.movie_id, e.rating, e.sign, e.ts, m.title, m.year
            FROM user_movie_edges e LEFT JOIN movies m USING (movie_id)
            WHERE e.user_id IN (SELECT user_id FROM _interest_users)
            ORDER BY e.user_id, e.ts, e.movie_id""") if store.table_exists("movies") else store.df("""
            SELECT user_id, movie_id, rating, sign, ts, NULL AS title, NULL AS year
            FROM user_movie_edges WHERE user_id IN (SELECT user_id FROM _interest_users)
            ORDER BY user_id, ts, movie_id""")
        mc = store.df("""
            SELECT movie_id, concept_id, weight FROM movie_concept_edges
            WHERE movie_id IN (SELECT DISTINCT movie_id FROM user_movie_edges
                               WHERE user_id IN (SELECT user_id FROM _interest_users))
            ORDER BY movie_id, weight DESC, concept_id""")
        prefs = store.df("""
            SELECT user_id, concept_id, horizon, score FROM user_prefs
            WHERE user_id IN (SELECT user_id FROM _interest_users)
            ORDER BY user_id, horizon, abs(score) DESC, concept_id""") \
            if store.table_exists("user_prefs") else pd.DataFrame(
                columns=["user_id", "concept_id", "horizon", "score"])
        prev = None
        if previous_key is not None and store.table_exists("user_interests"):
            prev = store.df("""
                SELECT user_id, concept_id, horizon, polarity, confidence FROM user_interests
                WHERE backend = ? AND model = ? AND vocab_version = ? AND spec_hash = ?
                  AND user_id IN (SELECT user_id FROM _interest_users)
                ORDER BY user_id, horizon, polarity, confidence DESC, concept_id""", list(previous_key))
    finally:
        store.con.unregister("_interest_users")
    concepts: dict[int, list[tuple[int, float]]] = {}
    for m, c, w in zip(mc["movie_id"].tolist(), mc["concept_id"].tolist(), mc["weight"].tolist()):
        concepts.setdefault(int(m), []).append((int(c), float(w)))
    out = {int(u): UserData(int(u), [], []) for u in user_ids}
    for u, m, r, s, ts, title, year in zip(e["user_id"].tolist(), e["movie_id"].tolist(),
                                           e["rating"].tolist(), e["sign"].tolist(), e["ts"].tolist(),
                                           e["title"].tolist(), e["year"].tolist()):
        y = None if year is None or pd.isna(year) else int(year)
        out[int(u)].history.append(Interaction(int(m), "" if title is None or pd.isna(title) else str(title),
                                               y, float(r), int(s), int(ts), concepts.get(int(m), [])))
    for u, c, h, s in zip(prefs["user_id"].tolist(), prefs["concept_id"].tolist(),
                          prefs["horizon"].tolist(), prefs["score"].tolist()):
        out[int(u)].prefs.append((int(c), str(h), float(s)))
    if prev is not None:
        for u, c, h, p, conf in prev.itertuples(index=False):
            out[int(u)].previous.append((int(c), str(h), str(p), float(conf)))
    return out
