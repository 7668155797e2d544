"""Export the stored graph for other tools.

* ``graphml``: one GraphML file written with networkx (a ``MultiDiGraph``: a user may like a
  concept long-term and short-term). Node ids are ``user:<id>``, ``movie:<id>``,
  ``concept:<id>``; every node has ``kind`` and a readable ``label``; every edge has
  ``relation`` (``pos|neu|neg|has|likes|dislikes``) and ``weight``. Opens in Gephi, Cytoscape,
  yEd, ``networkx.read_graphml``.
* ``neo4j``: a folder of CSV files in the header format of ``neo4j-admin database import full``
  (ID spaces ``User``, ``Movie``, ``Concept``; typed properties such as ``year:int``,
  ``genres:string[]`` with ``;`` between items, ``ts:long``) plus ``import.sh`` with the exact
  command. Concept nodes carry two labels, ``Concept`` and their knowledge type.

Relationship types in Neo4j: ``LIKED`` / ``NEUTRAL`` / ``DISLIKED`` (user -> movie, with rating,
ts), ``HAS_CONCEPT`` (movie -> concept, weight), ``PREFERS`` / ``AVOIDS`` (user -> concept, with
horizon, score, support; ``AVOIDS`` for negative scores).
"""

from __future__ import annotations

from pathlib import Path

from posterkg.errors import InputError

REL_NAMES = {1: ("pos", "LIKED"), 0: ("neu", "NEUTRAL"), -1: ("neg", "DISLIKED")}


def _require_built(store) -> None:
    if not store.table_exists("graph_info") or store.count("graph_info") == 0:
        raise InputError("the graph tables are not built; run `posterkg graph build` first")


def _user_filter(max_users: int) -> str:
    if max_users and max_users > 0:
        return (f"user_id IN (SELECT DISTINCT user_id FROM user_movie_edges "
                f"ORDER BY user_id LIMIT {int(max_users)})")
    return "TRUE"


def _horizon_filter(horizon: str) -> str:
    if horizon not in ("long", "short", "both"):
        raise InputError(f"horizon must be long, short or both, not {horizon!r}")
    return "TRUE" if horizon == "both" else f"horizon = '{horizon}'"


def _concept_nodes_sql() -> str:
    return """
        SELECT e.concept_id, any_value(e.type) AS type,
               coalesce(any_value(c.name), 'concept ' || e.concept_id) AS name
        FROM (SELECT concept_id, type FROM movie_concept_edges
              UNION ALL SELECT p.concept_id, NULL FROM user_prefs p) e
        LEFT JOIN concepts c USING (concept_id)
        GROUP BY e.concept_id ORDER BY e.concept_id"""


def export_graphml(store, out: str | Path, *, horizon: str = "both", max_users: int = 0) -> dict:
    """Write a GraphML file; return node and edge counts."""
    import networkx as nx

    _require_built(store)
    uf, hf = _user_filter(max_users), _horizon_filter(horizon)
    g = nx.MultiDiGraph(name="posterkg")
    users = store.execute(f"SELECT DISTINCT user_id FROM user_movie_edges WHERE {uf} "
                          "ORDER BY user_id").fetchall()
    for (u,) in users:
        g.add_node(f"user:{u}", kind="user", label=f"user {u}", db_id=int(u))
    movies = store.execute("SELECT movie_id, coalesce(title, ''), coalesce(year, 0), "
                           "coalesce(array_to_string(genres, '|'), '') FROM movies "
                           "ORDER BY movie_id").fetchall()
    for m, title, year, genres in movies:
        g.add_node(f"movie:{m}", kind="movie", label=title, db_id=int(m), year=int(year),
                   genres=genres)
    for c, ctype, name in store.execute(_concept_nodes_sql()).fetchall():
        g.add_node(f"concept:{c}", kind="concept", label=name, db_id=int(c),
                   type=ctype or "")
    for u, m, sign, rating, ts in store.execute(
            f"SELECT user_id, movie_id, sign, rating, ts FROM user_movie_edges WHERE {uf} "
            "ORDER BY user_id, ts").fetchall():
        g.add_edge(f"user:{u}", f"movie:{m}", relation=REL_NAMES[int(sign)][0],
                   weight=float(rating), rating=float(rating), ts=int(ts))
    for m, c, w in store.execute("SELECT movie_id, concept_id, weight FROM movie_concept_edges "
                                 "ORDER BY movie_id, concept_id").fetchall():
        g.add_edge(f"movie:{m}", f"concept:{c}", relation="has", weight=float(w))
    for u, c, h, s, n in store.execute(
            f"SELECT user_id, concept_id, horizon, score, support FROM user_prefs "
            f"WHERE {uf} AND {hf} ORDER BY user_id, horizon, concept_id").fetchall():
        g.add_edge(f"user:{u}", f"concept:{c}", relation="likes" if s > 0 else "dislikes",
                   weight=abs(float(s)), score=float(s), horizon=h, support=int(n))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    nx.write_graphml(g, out)
    return {"nodes": g.number_of_nodes(), "edges": g.number_of_edges(), "path": str(out)}


def export_neo4j(store, out_dir: str | Path, *, horizon: str = "both", max_users: int = 0) -> dict:
    """Write Neo4j admin-import CSVs and ``import.sh`` into ``out_dir``; return row counts."""
    _require_built(store)
    uf, hf = _user_filter(max_users), _horizon_filter(horizon)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    has_users = store.table_exists("users")
    user_sql = (
        f"""SELECT user_id AS "userId:ID(User)", gender, age AS "age:int", occupation, zip,
                   'User' AS ":LABEL"
            FROM users WHERE {uf} ORDER BY user_id""" if has_users else
        f"""SELECT DISTINCT user_id AS "userId:ID(User)", 'User' AS ":LABEL"
            FROM user_movie_edges WHERE {uf} ORDER BY 1""")
    files = {
        "users.csv": user_sql,
        "movies.csv": """
            SELECT movie_id AS "movieId:ID(Movie)", title, year AS "year:int",
                   array_to_string(genres, ';') AS "genres:string[]", 'Movie' AS ":LABEL"
            FROM movies ORDER BY movie_id""",
        "concepts.csv": f"""
            SELECT concept_id AS "conceptId:ID(Concept)", name, type,
                   'Concept' || CASE WHEN type IS NULL THEN '' ELSE ';' || type END AS ":LABEL"
            FROM ({_concept_nodes_sql()})""",
        "rated.csv": f"""
            SELECT user_id AS ":START_ID(User)", movie_id AS ":END_ID(Movie)",
                   CASE sign WHEN 1 THEN 'LIKED' WHEN 0 THEN 'NEUTRAL' ELSE 'DISLIKED' END
                       AS ":TYPE",
                   rating AS "rating:double", ts AS "ts:long", sign AS "sign:int"
            FROM user_movie_edges WHERE {uf} ORDER BY user_id, ts""",
        "has_concept.csv": """
            SELECT movie_id AS ":START_ID(Movie)", concept_id AS ":END_ID(Concept)",
                   'HAS_CONCEPT' AS ":TYPE", weight AS "weight:double"
            FROM movie_concept_edges ORDER BY movie_id, concept_id""",
        "preferences.csv": f"""
            SELECT user_id AS ":START_ID(User)", concept_id AS ":END_ID(Concept)",
                   CASE WHEN score > 0 THEN 'PREFERS' ELSE 'AVOIDS' END AS ":TYPE",
                   horizon, score AS "score:double", support AS "support:int"
            FROM user_prefs WHERE {uf} AND {hf} ORDER BY user_id, horizon, concept_id""",
    }
    counts = {}
    for name, sql in files.items():
        path = out / name
        store.execute(f"COPY ({sql}) TO '{_sql_str(path)}' (HEADER, DELIMITER ',', QUOTE '\"', "
                      "ESCAPE '\"')")
        counts[name] = int(store.scalar(f"SELECT count(*) FROM ({sql})"))
    nodes = " ".join(f"--nodes={n}" for n in ("users.csv", "movies.csv", "concepts.csv"))
    rels = " ".join(f"--relationships={n}"
                    for n in ("rated.csv", "has_concept.csv", "preferences.csv"))
    script = out / "import.sh"
    script.write_text(
        "#!/bin/sh\n"
        "# Import into a new, empty Neo4j database (stop it first). Run from this folder:\n"
        "#   NEO4J_HOME=/path/to/neo4j sh import.sh [database]\n"
        "set -e\n"
        'DB="${1:-neo4j}"\n'
        f'"$NEO4J_HOME/bin/neo4j-admin" database import full --array-delimiter=";" '
        f'{nodes} {rels} "$DB"\n',
        encoding="utf-8",
    )
    script.chmod(0o755)
    return counts


def _sql_str(path: Path) -> str:
    return str(path).replace("'", "''")
