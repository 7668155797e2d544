"""Movie -> concept edges, typed by knowledge type.

``movie_concepts`` (written by the vocabulary stage) gives, per movie, the concepts its poster
shows with a weight derived from the tagger's confidences; ``concepts`` gives each concept's
knowledge type. The edge table joins the two::

    movie_concept_edges(movie_id, concept_id, type, weight)

Only one vocabulary version is used: ``[graph] vocab_version``, or by default the newest version
that ``movie_concepts`` refers to. Edges lighter than ``min_concept_weight`` are dropped, and so
are edges to movies missing from the ``movies`` table.
"""

from __future__ import annotations

from posterkg.errors import InputError


def _pick_version(store, wanted: int | None) -> int | None:
    has_version = bool(store.scalar(
        "SELECT count(*) FROM information_schema.columns "
        "WHERE table_name = 'concepts' AND column_name = 'version'"))
    if not has_version:
        return None
    if wanted is not None:
        return int(wanted)
    v = store.scalar(
        "SELECT max(c.version) FROM movie_concepts mc JOIN concepts c USING (concept_id)")
    return None if v is None else int(v)


def build_movie_concept_edges(store, cfg) -> int:
    """Replace ``movie_concept_edges``; return the edge count."""
    from posterkg.graphs import ensure_tables, graph_config

    gc = graph_config(cfg)
    for table in ("movie_concepts", "concepts"):
        if not store.table_exists(table):
            raise InputError(
                f"table {table} is missing; run `posterkg schema freeze` and "
                "`posterkg schema project` first")
    ensure_tables(store)
    version = _pick_version(store, gc.vocab_version)
    where = ["mc.weight >= ?"]
    params: list = [gc.min_concept_weight]
    if version is not None:
        where.append("c.version = ?")
        params.append(version)
    with store.transaction() as con:
        con.execute("DELETE FROM movie_concept_edges")
        con.execute(
            f"""
            INSERT INTO movie_concept_edges (movie_id, concept_id, type, weight)
            SELECT mc.movie_id, mc.concept_id, c.type, mc.weight
            FROM movie_concepts mc
            JOIN concepts c USING (concept_id)
            JOIN movies m USING (movie_id)
            WHERE {' AND '.join(where)}
            ORDER BY mc.movie_id, mc.concept_id
            """,
            params,
        )
    return store.count("movie_concept_edges")
