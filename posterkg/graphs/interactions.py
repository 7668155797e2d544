"""User - movie interaction edges from the train part of the split.

Only ``split.part = 'train'`` ratings become edges, so nothing the model is evaluated on leaks into
the graph (valid/test ratings are never read here). Each edge is signed from the rating:

====== =========== ========
sign   rating      meaning
====== =========== ========
+1     >= 4        liked
0      3           neutral
-1     <= 2        disliked
====== =========== ========

and keeps the rating and its timestamp. The rule is :mod:`posterkg.ratings` (shared with the
recommenders); half-star ratings (ML-25M) follow the same thresholds: 3.5 is neutral, 2.5 disliked.
"""

from __future__ import annotations

from posterkg.errors import InputError

from posterkg.ratings import sign_of, sign_sql  # noqa: F401  (the one rating rule)

SIGN_SQL = sign_sql("r.rating")


def build_user_movie_edges(store) -> int:
    """Replace ``user_movie_edges`` with the signed train interactions; return the edge count."""
    from posterkg.graphs import ensure_tables

    for table, hint in (("ratings", "posterkg ingest"), ("split", "posterkg split")):
        if not store.table_exists(table) or store.count(table) == 0:
            raise InputError(f"table {table} is empty or missing; run `{hint}` first")
    ensure_tables(store)
    with store.transaction() as con:
        con.execute("DELETE FROM user_movie_edges")
        con.execute(
            f"""
            INSERT INTO user_movie_edges (user_id, movie_id, sign, rating, ts)
            SELECT r.user_id, r.movie_id, {SIGN_SQL}, r.rating, r.ts
            FROM ratings r JOIN split s USING (user_id, movie_id)
            WHERE s.part = 'train'
            ORDER BY r.user_id, r.ts, r.movie_id
            """
        )
    return store.count("user_movie_edges")
