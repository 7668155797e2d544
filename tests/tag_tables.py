"""The tagging tables of a database as sorted rows, for tests that compare two runs
(local vs Ray, resumed vs clean): ``raw_points`` and ``tag_status`` without their time columns."""

from __future__ import annotations

from posterkg.store import open_store


def tag_rows(db, *, error: bool = False):
    """``(points, statuses)`` of database ``db``, both sorted; ``error`` adds the statuses'
    error text."""
    with open_store(db, read_only=True) as store:
        pts = store.execute(
            "SELECT movie_id, type, value, confidence, backend, model, schema_hash "
            "FROM raw_points ORDER BY ALL").fetchall()
        st = store.execute(
            "SELECT movie_id, backend, model, schema_hash, status, reason, "
            + ("error, " if error else "") + "attempts FROM tag_status ORDER BY ALL").fetchall()
    return pts, st
