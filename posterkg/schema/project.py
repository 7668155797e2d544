"""Projection: map raw knowledge points onto the frozen vocabulary.

Each unique ``(type, value)`` of the points to project is embedded once (cached) and matched
against the concept centroids of its type with a FAISS inner-product index:

* a value that is a member (or the name) of a concept of its type maps to it directly
  (similarity 1.0): frozen members never drift to a neighbour;
* else the nearest centroid, when its cosine similarity is at least ``[schema] threshold``;
* else the point stays unassigned (``concept_id`` NULL): the *candidate pool* that
  ``schema grow`` clusters into new concepts. A point whose type is not a known knowledge type
  is projected (and pooled) as type ``Others``, its own type kept in ``source_type``.

The per-value decisions are then joined onto the points in DuckDB, so a million points cost one
join, not a million searches.

Incremental by default: only movies that have selected raw points but no ``point_concepts`` rows
yet are projected; rows written earlier are never rewritten, except pooled (unassigned) rows,
which are retried when a newer vocabulary version exists (``retry_pool``). ``full=True`` clears and
re-projects everything. ``movie_concepts`` is recomputed only for the movies touched.

movie_concepts.weight aggregates the confidences ``c_i`` of a movie's points assigned to one
concept: ``noisy_or`` (default) = 1 - prod(1 - c_i) (several independent sightings raise belief,
never above 1), ``max`` = max c_i, ``sum`` = sum c_i.

Which raw points: ``[schema] backend/model/schema_hash``; empty backend/model mean the most recent
tag run's (``tag_runs.started_at``; without a tag_runs table, the greatest ``run_id``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np
import pandas as pd

from posterkg.embed.index import VectorIndex
from posterkg.errors import InputError
from posterkg.schema import vocab as V
from posterkg.schema.discover import SchemaConfig
from posterkg.store import Store

COMPONENT = "projection"
MIGRATIONS = [
    """
    CREATE TABLE IF NOT EXISTS point_concepts (
        movie_id INTEGER NOT NULL,
        type VARCHAR NOT NULL,          -- the point's type, or 'Others' when unknown
        source_type VARCHAR NOT NULL,   -- the type as tagged
        value VARCHAR NOT NULL,
        confidence DOUBLE NOT NULL,
        concept_id INTEGER,             -- NULL: unassigned, in the candidate pool
        similarity DOUBLE,              -- cosine to the chosen (or nearest) concept
        version INTEGER NOT NULL,       -- vocabulary version it was projected with
        backend VARCHAR NOT NULL,
        model VARCHAR NOT NULL,
        schema_hash VARCHAR NOT NULL,
        run_id VARCHAR NOT NULL
    );
    CREATE TABLE IF NOT EXISTS movie_concepts (
        movie_id INTEGER NOT NULL,
        concept_id INTEGER NOT NULL,
        weight DOUBLE NOT NULL,
        n_points INTEGER NOT NULL,
        PRIMARY KEY (movie_id, concept_id)
    );
    """,
]

OTHERS = "Others"
FALLBACK_TYPES = ["Color_Palette", "Visual_Mood", "Composition", "Lighting", "Texture",
                  "Character_Presentation", "Era_Style", "Genre_Visual", "Typography", OTHERS]


def ensure_tables(store: Store) -> None:
    V.ensure_tables(store)
    store.migrate(COMPONENT, MIGRATIONS)


def known_types() -> list[str]:
    try:
        from posterkg.vlm.knowledge import load_schema

        names = list(load_schema().type_names)
    except Exception:  # the tagging schema is optional here; the contract's list is the fallback
        names = list(FALLBACK_TYPES)
    return names + ([OTHERS] if OTHERS not in names else [])


# -- which raw points ------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Selection:
    backend: str
    model: str
    schema_hash: str   # "" = any

    def where(self, alias: str = "r") -> tuple[str, list[Any]]:
        sql = f"{alias}.backend = ? AND {alias}.model = ?"
        params: list[Any] = [self.backend, self.model]
        if self.schema_hash:
            sql += f" AND {alias}.schema_hash = ?"
            params.append(self.schema_hash)
        return sql, params


def select_points(store: Store, cfg: SchemaConfig) -> Selection:
    """Resolve ``[schema] backend/model/schema_hash`` (empty = latest tag run's)."""
    if not store.table_exists("raw_points") or not store.count("raw_points"):
        raise InputError("no raw_points yet; run `posterkg tag` first")
    backend, model = cfg.backend, cfg.model
    if not backend or not model:
        def latest(table: str, where: str, order: str):
            """Newest (backend, model) of ``table`` matching the given backend/model."""
            q, params = f"SELECT backend, model FROM {table} WHERE {where}", []
            for col, val in (("backend", backend), ("model", model)):
                if val:
                    q, params = q + f" AND {col} = ?", params + [val]
            rows = store.execute(q + f" ORDER BY {order} DESC LIMIT 1", params).fetchall()
            return rows[0] if rows else None

        row = latest("tag_runs", "points > 0", "started_at") if store.table_exists("tag_runs") else None
        if row is None:
            row = latest("raw_points", "true", "run_id")
        if row is None:
            raise InputError(f"no raw_points for backend={backend or '*'} model={model or '*'}")
        backend, model = row
    return Selection(str(backend), str(model), cfg.schema_hash)


def open_mode_filter(store: Store, alias: str = "r") -> str:
    """SQL that keeps only points of open-mode tag runs (all points when runs are unknown)."""
    if store.table_exists("tag_runs"):
        return (f"({alias}.run_id NOT IN (SELECT run_id FROM tag_runs WHERE mode <> 'open'))")
    return "true"


# -- matching --------------------------------------------------------------------------------

def _type_expr(types: Sequence[str], alias: str = "r") -> str:
    lits = ", ".join("'" + t.replace("'", "''") + "'" for t in types)
    return f"CASE WHEN {alias}.type IN ({lits}) THEN {alias}.type ELSE '{OTHERS}' END"


def match_values(values: pd.DataFrame, concepts: pd.DataFrame, vectors: np.ndarray,
                 threshold: float, index_kind: str = "auto") -> pd.DataFrame:
    """For unique (type, value) rows + their vectors: concept_id (or NA) and similarity."""
    out_id = np.full(len(values), -1, dtype=np.int64)
    out_sim = np.full(len(values), np.nan, dtype=np.float64)
    member_of: dict[tuple[str, str], int] = {}
    for cid, t, name, ms in zip(concepts["concept_id"], concepts["type"], concepts["name"], concepts["members"]):
        for m in [name, *ms]:
            member_of.setdefault((t, m.strip().lower()), int(cid))
    types = values["type"].to_numpy()
    for t in pd.unique(types):
        rows = np.flatnonzero(types == t)
        sub = concepts[concepts["type"] == t]
        if len(sub) == 0:
            continue
        cen = np.stack([np.asarray(c, dtype=np.float32) for c in sub["centroid"]])
        index = VectorIndex(cen.shape[1], kind=index_kind).add(cen)
        sims, ids = index.search(vectors[rows], 1)
        cids = sub["concept_id"].to_numpy()[ids[:, 0]]
        ok = sims[:, 0] >= threshold
        out_id[rows[ok]] = cids[ok]
        out_sim[rows] = sims[:, 0]
    vals = values["value"].tolist()
    for i, (t, v) in enumerate(zip(types, vals)):
        cid = member_of.get((t, v.strip().lower()))
        if cid is not None:
            out_id[i], out_sim[i] = cid, 1.0
    res = values[["type", "value"]].copy()
    res["concept_id"] = pd.array(np.where(out_id >= 0, out_id, 0), dtype="Int64")
    res.loc[out_id < 0, "concept_id"] = pd.NA
    res["similarity"] = out_sim
    return res


# -- the projection job ----------------------------------------------------------------------

def project(store: Store, cfg: SchemaConfig, cache, *, version: int | None = None,
            movies: Sequence[int] | None = None, full: bool = False, retry_pool: bool = True,
            selection: Selection | None = None) -> dict[str, Any]:
    """Project selected raw points onto vocabulary ``version`` (latest); return a summary."""
    ensure_tables(store)
    v = V._resolve_version(store, version)
    V.check_model(store, cache, v)
    sel = selection or select_points(store, cfg)
    where, params = sel.where("r")
    types = known_types()
    if full:
        with store.transaction():
            store.execute("DELETE FROM point_concepts")
            store.execute("DELETE FROM movie_concepts")
    movie_filter = ""
    mparams: list[Any] = []
    if movies is not None:
        store.register("_proj_movies", pd.DataFrame({"movie_id": list(map(int, movies))}))
        movie_filter = " AND r.movie_id IN (SELECT movie_id FROM _proj_movies)"
    # New movies: selected points, none projected yet (under the same backend/model).
    store.execute("DROP TABLE IF EXISTS _proj_new")
    store.execute(
        f"CREATE TEMP TABLE _proj_new AS SELECT DISTINCT r.movie_id FROM raw_points r WHERE {where}{movie_filter} "
        "AND r.movie_id NOT IN (SELECT DISTINCT movie_id FROM point_concepts p WHERE p.backend = ? AND p.model = ?)",
        params + mparams + [sel.backend, sel.model])
    n_new = int(store.scalar("SELECT count(*) FROM _proj_new"))
    te = _type_expr(types, "r")
    uniq = store.df(
        f"SELECT DISTINCT {te} AS type, r.value FROM raw_points r JOIN _proj_new n USING (movie_id) WHERE {where}",
        params)
    pool = pd.DataFrame(columns=["type", "value"])
    if retry_pool:
        pool = store.df("SELECT DISTINCT type, value FROM point_concepts WHERE concept_id IS NULL AND version < ? "
                        "AND backend = ? AND model = ?", [v, sel.backend, sel.model])
    todo = pd.concat([uniq, pool], ignore_index=True).drop_duplicates(["type", "value"]).reset_index(drop=True)
    concepts = V.version_concepts(store, v, with_centroids=True)
    if len(todo):
        vectors = cache.embed(todo["value"].tolist(), desc="embedding values")
        mapping = match_values(todo, concepts, vectors, cfg.threshold, cfg.index)
    else:
        mapping = pd.DataFrame({"type": [], "value": [], "concept_id": pd.array([], dtype="Int64"),
                                "similarity": []})
    store.register("_proj_map", mapping)
    try:
        with store.transaction():
            store.execute(
                "INSERT INTO point_concepts SELECT r.movie_id, m.type, r.type, r.value, r.confidence, "
                "m.concept_id, m.similarity, ?, r.backend, r.model, r.schema_hash, r.run_id "
                f"FROM raw_points r JOIN _proj_new n USING (movie_id) JOIN _proj_map m "
                f"ON m.type = {te} AND m.value = r.value WHERE {where}",
                [v] + params)
            retried = 0
            touched_sql = "SELECT movie_id FROM _proj_new"
            if retry_pool:
                store.execute("DROP TABLE IF EXISTS _proj_retry")
                store.execute(
                    "CREATE TEMP TABLE _proj_retry AS SELECT DISTINCT p.movie_id FROM point_concepts p "
                    "JOIN _proj_map m ON m.type = p.type AND m.value = p.value "
                    "WHERE p.concept_id IS NULL AND p.version < ? AND m.concept_id IS NOT NULL "
                    "AND p.backend = ? AND p.model = ?", [v, sel.backend, sel.model])
                retried = int(store.scalar("SELECT count(*) FROM _proj_retry"))
                store.execute(
                    "UPDATE point_concepts SET concept_id = m.concept_id, similarity = m.similarity, version = ? "
                    "FROM _proj_map m WHERE point_concepts.type = m.type AND point_concepts.value = m.value "
                    "AND point_concepts.concept_id IS NULL AND point_concepts.version < ? "
                    "AND point_concepts.backend = ? AND point_concepts.model = ?",
                    [v, v, sel.backend, sel.model])
                touched_sql += " UNION SELECT movie_id FROM _proj_retry"
            _rebuild_movie_concepts(store, cfg.aggregate, touched_sql, sel)
    finally:
        store.con.unregister("_proj_map")
        if movies is not None:
            store.con.unregister("_proj_movies")
    stats = store.execute(
        "SELECT count(*), count(concept_id) FROM point_concepts p JOIN _proj_new USING (movie_id) "
        "WHERE p.backend = ? AND p.model = ?", [sel.backend, sel.model]).fetchall()[0]
    return {"version": v, "backend": sel.backend, "model": sel.model, "new_movies": n_new,
            "points": int(stats[0]), "assigned": int(stats[1]), "pooled": int(stats[0] - stats[1]),
            "unique_values": len(uniq), "embedded": cache.misses, "pool_movies_retried": retried}


def _rebuild_movie_concepts(store: Store, aggregate: str, touched_sql: str, sel: Selection) -> None:
    weight = {
        "noisy_or": "1 - product(1 - least(greatest(confidence, 0), 1))",
        "max": "max(confidence)",
        "sum": "sum(confidence)",
    }[aggregate]
    store.execute(f"DELETE FROM movie_concepts WHERE movie_id IN ({touched_sql})")
    store.execute(
        f"INSERT INTO movie_concepts SELECT movie_id, concept_id, {weight}, count(*) FROM point_concepts "
        f"WHERE movie_id IN ({touched_sql}) AND concept_id IS NOT NULL AND backend = ? AND model = ? "
        "GROUP BY movie_id, concept_id", [sel.backend, sel.model])
