"""Descriptive statistics of the stored graphs (``posterkg graph stats``)."""

from __future__ import annotations

from typing import Any

from posterkg.graphs.export import _require_built


def graph_stats(store, top: int = 10) -> dict[str, Any]:
    """Counts, degrees, preference summaries and the most liked / disliked concepts."""
    _require_built(store)
    one = lambda sql: store.execute(sql).fetchone()  # noqa: E731
    out: dict[str, Any] = {}
    n_users, n_edges = one("SELECT count(DISTINCT user_id), count(*) FROM user_movie_edges")
    out["nodes"] = {
        "users_with_train_edges": int(n_users),
        "movies": store.count("movies") if store.table_exists("movies") else None,
        "movies_with_concepts": int(one("SELECT count(DISTINCT movie_id) FROM movie_concept_edges")[0]),
        "concepts": int(one("SELECT count(DISTINCT concept_id) FROM movie_concept_edges")[0]),
    }
    edges = {"user-movie": int(n_edges)}
    for sign, name in ((1, "pos"), (0, "neu"), (-1, "neg")):
        edges[f"user-{name}-movie"] = store.count("user_movie_edges", f"WHERE sign = {sign}")
    edges["movie-has-concept"] = store.count("movie_concept_edges")
    for h in ("long", "short"):
        edges[f"user-likes-concept ({h})"] = store.count(
            "user_prefs", f"WHERE horizon = '{h}' AND score > 0")
        edges[f"user-dislikes-concept ({h})"] = store.count(
            "user_prefs", f"WHERE horizon = '{h}' AND score < 0")
    out["edges"] = edges

    def deg(sql: str) -> dict[str, float]:
        mean, med, mx = one(f"SELECT avg(n), median(n), max(n) FROM ({sql})")
        return {"mean": float(mean or 0), "median": float(med or 0), "max": int(mx or 0)}

    out["degrees"] = {
        "interactions per user": deg("SELECT count(*) n FROM user_movie_edges GROUP BY user_id"),
        "train users per movie": deg("SELECT count(*) n FROM user_movie_edges GROUP BY movie_id"),
        "concepts per movie": deg("SELECT count(*) n FROM movie_concept_edges GROUP BY movie_id"),
        "movies per concept": deg("SELECT count(*) n FROM movie_concept_edges GROUP BY concept_id"),
    }
    out["concepts_by_type"] = {
        t: int(n) for t, n in store.execute(
            "SELECT type, count(DISTINCT concept_id) FROM movie_concept_edges GROUP BY type "
            "ORDER BY type").fetchall()}
    # how much long- and short-term tastes agree: Jaccard of each user's liked concepts
    jac = one("""
        WITH l AS (SELECT user_id, concept_id FROM user_prefs WHERE horizon='long' AND score>0),
             s AS (SELECT user_id, concept_id FROM user_prefs WHERE horizon='short' AND score>0),
             i AS (SELECT user_id, count(*) n FROM l JOIN s USING (user_id, concept_id) GROUP BY 1),
             nl AS (SELECT user_id, count(*) n FROM l GROUP BY 1),
             ns AS (SELECT user_id, count(*) n FROM s GROUP BY 1)
        SELECT avg(coalesce(i.n, 0) / (nl.n + ns.n - coalesce(i.n, 0)))
        FROM nl JOIN ns USING (user_id) LEFT JOIN i USING (user_id)""")[0]
    out["long_short_jaccard"] = None if jac is None else float(jac)
    name = ("coalesce(c.name, 'concept ' || p.concept_id)" if store.table_exists("concepts")
            else "'concept ' || p.concept_id")
    join = "LEFT JOIN concepts c USING (concept_id)" if store.table_exists("concepts") else ""
    out["top_concepts"] = [
        {"concept_id": int(cid), "name": nm, "likers": int(lk), "dislikers": int(dk),
         "mean_score": float(ms)}
        for cid, nm, lk, dk, ms in store.execute(f"""
            SELECT p.concept_id, any_value({name}),
                   count(*) FILTER (WHERE score > 0), count(*) FILTER (WHERE score < 0),
                   avg(score)
            FROM user_prefs p {join} WHERE horizon = 'long'
            GROUP BY p.concept_id ORDER BY 3 DESC, 1 LIMIT {int(top)}""").fetchall()]
    return out
