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

and keeps the rating and its timestamp. Half-star ratings (ML-25M) follow the same thresholds:
3.5 is neutral, 2.5 disliked.
"""

from __future__ import annotations

from posterkg.errors import InputError

SIGN_SQL = "CASE WHEN r.rating >= 4 THEN 1 WHEN r.rating > 2.5 THEN 0 ELSE -1 END"


def sign_of(rating: float) -> int:
    """The sign of one rating (the same rule as the SQL above)."""
    return 1 if rating >= 4 else (0 if rating > 2.5 else -1)


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
