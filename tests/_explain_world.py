"""A hand-made world for the explanation tests: a few movies, concepts and users whose right
explanation is known, the tables of the graph contract (and ratings + split, all train, so the
train stage's input assembly builds the model graph from them), and a tiny linear Recommender
(:class:`TinyModel`) served through the real :class:`~posterkg.gnn.api.TrainedModel`.

User 1 liked only cool-blue posters (The Matrix, Blade Runner), disliked harsh-red ones (Red
Planet, Crimson Tide); Gattaca is cool blue with low-key lighting; Kill Bill is harsh red;
Mixed Signals is both.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd
import torch

from posterkg.gnn.base import Recommender

CONCEPTS = [  # concept_id, type, name
    (1, "Color_Palette", "cool blue"),
    (2, "Lighting", "low-key lighting"),
    (3, "Color_Palette", "harsh red"),
    (4, "Typography", "bold sans-serif"),
    (5, "Visual_Mood", "cheerful"),
    (6, "Era_Style", "retro"),
    (7, "Lighting", "high-key lighting"),
]
MOVIES = {  # movie_id: (title, year, {concept: weight})
    1: ("The Matrix", 1999, {1: 1.0, 2: 0.8, 4: 0.5}),
    2: ("Blade Runner", 1982, {1: 1.0, 2: 0.9, 6: 0.3}),
    3: ("Red Planet", 2000, {3: 1.0, 4: 0.6}),
    4: ("Crimson Tide", 1995, {3: 0.9, 5: 0.2}),
    5: ("Happy Days", 1990, {5: 1.0, 6: 0.7, 7: 0.8}),
    10: ("Gattaca", 1997, {1: 1.0, 2: 0.7, 4: 0.6}),
    11: ("Kill Bill", 2003, {3: 1.0, 4: 0.6, 5: 0.3}),
    12: ("Mixed Signals", 2001, {1: 0.6, 3: 0.8, 4: 0.5}),
    13: ("Sunny Side", 1988, {5: 1.0, 7: 1.0}),
}
RATINGS = [  # user, movie, rating, ts
    (1, 1, 5, 100), (1, 2, 5, 200), (1, 3, 1, 150), (1, 4, 2, 160),
    (2, 5, 5, 100), (2, 4, 4, 110), (2, 13, 5, 120),
    (3, 1, 4, 100), (3, 10, 5, 110), (3, 2, 4, 120),
]
PREFS = [  # user, concept, horizon, score
    (1, 1, "long", 0.8), (1, 2, "long", 0.2), (1, 7, "long", 0.6), (1, 6, "long", 0.5), (1, 3, "long", -0.7),
    (1, 1, "short", 0.5), (1, 2, "short", 0.9), (1, 3, "short", -0.5),
    (2, 5, "long", 0.9), (2, 7, "long", 0.7),
]
COLORS = {1: (40, 80, 200), 2: (10, 10, 30), 3: (220, 30, 30), 5: (250, 220, 120), 7: (250, 250, 250)}


def make_db(path: Path, posters_dir: Path | None = None):
    """Write the hand-made tables (and, if asked, JPEG posters) and return an open Store."""
    from posterkg.store import open_store

    store = open_store(path)
    con = store.con
    con.execute("CREATE TABLE movies(movie_id INTEGER PRIMARY KEY, title VARCHAR, year INTEGER, genres VARCHAR[])")
    con.execute("CREATE TABLE users(user_id INTEGER PRIMARY KEY, gender VARCHAR, age INTEGER, occupation VARCHAR, zip VARCHAR)")
    con.execute("CREATE TABLE concepts(concept_id INTEGER PRIMARY KEY, type VARCHAR, name VARCHAR, version INTEGER)")
    con.execute("CREATE TABLE movie_concept_edges(movie_id INTEGER, concept_id INTEGER, type VARCHAR, weight DOUBLE)")
    con.execute("CREATE TABLE user_movie_edges(user_id INTEGER, movie_id INTEGER, sign SMALLINT, rating DOUBLE, ts BIGINT)")
    con.execute("CREATE TABLE user_prefs(user_id INTEGER, concept_id INTEGER, horizon VARCHAR, score DOUBLE, support INTEGER)")
    con.execute("CREATE TABLE posters(movie_id INTEGER PRIMARY KEY, path VARCHAR, width INTEGER, height INTEGER, "
                "sha256 VARCHAR, status VARCHAR, error VARCHAR)")
    con.execute("CREATE TABLE raw_points(movie_id INTEGER, type VARCHAR, value VARCHAR, confidence DOUBLE, "
                "backend VARCHAR, model VARCHAR, schema_hash VARCHAR, run_id VARCHAR)")
    ctype = {c: t for c, t, _ in CONCEPTS}
    cname = {c: n for c, _, n in CONCEPTS}
    store.insert_df("movies", pd.DataFrame(
        {"movie_id": list(MOVIES), "title": [v[0] for v in MOVIES.values()],
         "year": [v[1] for v in MOVIES.values()], "genres": [["Drama"] for _ in MOVIES]}))
    store.insert_df("users", pd.DataFrame({"user_id": [1, 2, 3], "gender": "F", "age": 25,
                                           "occupation": "x", "zip": "0"}))
    store.insert_df("concepts", pd.DataFrame(CONCEPTS, columns=["concept_id", "type", "name"]).assign(version=1))
    store.insert_df("movie_concept_edges", pd.DataFrame(
        [(m, c, ctype[c], w) for m, v in MOVIES.items() for c, w in v[2].items()],
        columns=["movie_id", "concept_id", "type", "weight"]))
    store.insert_df("raw_points", pd.DataFrame(
        [(m, ctype[c], cname[c], w, "hand", "none", "h", "r") for m, v in MOVIES.items() for c, w in v[2].items()],
        columns=["movie_id", "type", "value", "confidence", "backend", "model", "schema_hash", "run_id"]))
    store.insert_df("user_movie_edges", pd.DataFrame(
        [(u, m, 1 if r >= 4 else (0 if r == 3 else -1), float(r), ts) for u, m, r, ts in RATINGS],
        columns=["user_id", "movie_id", "sign", "rating", "ts"]))
    store.insert_df("user_prefs", pd.DataFrame(PREFS, columns=["user_id", "concept_id", "horizon", "score"]).assign(support=1))
    con.execute("CREATE TABLE ratings(user_id INTEGER, movie_id INTEGER, rating DOUBLE, ts BIGINT)")
    con.execute("CREATE TABLE split(user_id INTEGER, movie_id INTEGER, part VARCHAR)")
    con.execute("CREATE TABLE graph_info(built_at TIMESTAMP DEFAULT current_timestamp, config JSON, counts JSON)")
    store.insert_df("ratings", pd.DataFrame(RATINGS, columns=["user_id", "movie_id", "rating", "ts"]).astype(
        {"rating": float}))
    store.insert_df("split", pd.DataFrame([(u, m, "train") for u, m, _, _ in RATINGS],
                                          columns=["user_id", "movie_id", "part"]))
    con.execute("INSERT INTO graph_info (config, counts) VALUES (?, ?)", [json.dumps({"pref_horizon": "long"}), "{}"])
    if posters_dir is not None:
        from PIL import Image, ImageDraw

        posters_dir.mkdir(parents=True, exist_ok=True)
        rows = []
        for m, (title, _, conc) in MOVIES.items():
            top = max(conc, key=conc.get)
            im = Image.new("RGB", (185, 278), COLORS.get(top, (120, 120, 120)))
            ImageDraw.Draw(im).text((10, 240), title, fill=(255, 255, 255))
            p = posters_dir / f"{m}.jpg"
            im.save(p, "JPEG", quality=85)
            rows.append((m, str(p), 185, 278, "x", "ok", None))
        store.insert_df("posters", pd.DataFrame(rows, columns=["movie_id", "path", "width", "height", "sha256",
                                                                "status", "error"]))
    return store


class TinyModel(Recommender):
    """A linear recommender over the world's graph, differentiable in every edge weight it uses:
    score(u, M) = h_u . h_M with one-hot concept features,
    h_M = sum_c w(M, c) e_c * scale_c over ``has``; h_u = mean over liked h_M - mean over
    disliked h_M (``pos``/``neg``) + sum likes w e_c - sum dislikes w e_c.
    ``scale`` (concept index -> factor) lets a test make the model value a concept differently
    from the graph; ``no_grad`` detaches its output (to test the fallback)."""

    trainer = "none"

    def __init__(self, inputs, scale: dict[int, float] | None = None, no_grad: bool = False):
        super().__init__(inputs)
        nc = inputs.graph.sizes["concept"]
        self.scale = torch.ones(nc)
        for c, f in (scale or {}).items():
            self.scale[c] = f
        self.no_grad = no_grad

    def embeddings(self, graph=None):
        g = self.graph if graph is None else graph
        nu, nm, nc = g.sizes["user"], g.sizes["movie"], g.sizes["concept"]
        E = torch.diag(self.scale)
        has = g.get("has")
        hm = torch.zeros(nm, nc).index_add(0, has.src, has.weight[:, None] * E[has.dst])
        hu = torch.zeros(nu, nc)
        for rel, sign in (("pos", 1.0), ("neg", -1.0)):
            r = g.get(rel)
            deg = torch.zeros(nu).index_add(0, r.src, torch.ones(len(r))).clamp(min=1)
            hu = hu + sign * torch.zeros(nu, nc).index_add(0, r.src, r.weight[:, None] * hm[r.dst] / deg[r.src, None])
        for rel, sign in (("likes", 1.0), ("dislikes", -1.0)):
            r = g.get(rel)
            hu = hu + sign * torch.zeros(nu, nc).index_add(0, r.src, r.weight[:, None] * E[r.dst])
        if self.no_grad:
            return hu.detach(), hm.detach()
        return hu, hm


def tiny_model(store, scale: dict[int, float] | None = None, no_grad: bool = False):
    """A TrainedModel (the real class) over the world's database with a :class:`TinyModel`;
    ``scale`` is keyed by concept id."""
    from posterkg.gnn.api import TrainedModel
    from posterkg.gnn.inputs import assemble

    inputs = assemble(store).inputs
    sc = {inputs.ids.index("concept", c): f for c, f in (scale or {}).items()}
    model = TinyModel(inputs, sc, no_grad).eval()
    model.name = "tiny"
    return TrainedModel("tiny", "tiny", 0, {}, {}, model, inputs)


def jpeg_ok(data: bytes) -> bool:
    from PIL import Image

    return data[:3] == b"\xff\xd8\xff" and Image.open(io.BytesIO(data)).format == "JPEG"


def concepts_from_points(store) -> int:
    """Stand-in for the vocabulary stage on real data: every distinct (type, value) of
    ``raw_points`` is a concept (the pixel tagger answers from a closed set of values), and a
    movie's weight for it is the point's confidence. Writes the vocabulary's own tables."""
    from posterkg.schema.project import ensure_tables

    ensure_tables(store)
    store.execute("""
        INSERT INTO concepts (concept_id, type, name, version)
        SELECT row_number() OVER (ORDER BY type, value), type, value, 1
        FROM (SELECT DISTINCT type, value FROM raw_points)""")
    store.execute("""
        INSERT INTO movie_concepts (movie_id, concept_id, weight, n_points)
        SELECT r.movie_id, c.concept_id, max(r.confidence), count(*)
        FROM raw_points r JOIN concepts c ON c.type = r.type AND c.name = r.value
        GROUP BY r.movie_id, c.concept_id""")
    return store.count("concepts")
