"""A hand-made world for the explanation tests: a few movies, concepts and users whose right
explanation is known, the tables of the graph contract, a GraphBundle-like object, and a tiny
differentiable model with the TrainedModel interface (bundle, rescore, score, recommend,
movie_embeddings).

User 1 liked only cool-blue posters (The Matrix, Blade Runner), disliked harsh-red ones (Red
Planet, Crimson Tide); Gattaca is cool blue with low-key lighting; Kill Bill is harsh red;
Mixed Signals is both.
"""

from __future__ import annotations

import io
import types
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch_geometric.data import HeteroData

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


def build_bundle(store):
    """A GraphBundle-shaped object built from the contract tables (both edge directions)."""
    mv = store.df("SELECT movie_id FROM movies ORDER BY movie_id").movie_id.to_numpy()
    us = store.df("SELECT user_id FROM users ORDER BY user_id").user_id.to_numpy()
    cs = store.df("SELECT concept_id FROM concepts ORDER BY concept_id").concept_id.to_numpy()
    mi = {int(m): i for i, m in enumerate(mv)}
    ui = {int(u): i for i, u in enumerate(us)}
    ci = {int(c): i for i, c in enumerate(cs)}
    d = HeteroData()
    d["user"].num_nodes, d["movie"].num_nodes, d["concept"].num_nodes = len(us), len(mv), len(cs)

    def put(rel, src, dst, a, b, w, rev):
        ei = torch.tensor([a, b], dtype=torch.long).reshape(2, -1)
        w = torch.tensor(w, dtype=torch.float32)
        d[src, rel, dst].edge_index, d[src, rel, dst].edge_weight = ei, w
        d[dst, rev, src].edge_index, d[dst, rev, src].edge_weight = ei.flip(0), w.clone()

    mc = store.df("SELECT * FROM movie_concept_edges")
    put("has", "movie", "concept", [mi[m] for m in mc.movie_id], [ci[c] for c in mc.concept_id],
        mc.weight.tolist(), "rev_has")
    e = store.df("SELECT * FROM user_movie_edges")
    for sign, rel in ((1, "pos"), (0, "neu"), (-1, "neg")):
        s = e[e.sign == sign]
        put(rel, "user", "movie", [ui[u] for u in s.user_id], [mi[m] for m in s.movie_id],
            [1.0] * len(s), f"rev_{rel}")
    p = store.df("SELECT * FROM user_prefs WHERE horizon = 'long'")
    for rel, sel in (("likes", p.score > 0), ("dislikes", p.score < 0)):
        s = p[sel]
        put(rel, "user", "concept", [ui[u] for u in s.user_id], [ci[c] for c in s.concept_id],
            s.score.abs().tolist(), f"rev_{rel}")
    return types.SimpleNamespace(data=d, user_ids=us, movie_ids=mv, concept_ids=cs,
                                 user_index=ui, movie_index=mi, concept_index=ci)


class TinyModel:
    """score(u, M) = h_u . h_M with one-hot concept features:
    h_M = sum_c w(c->M) e_c * scale_c; h_u = mean over liked h_M - mean over disliked h_M
    + sum likes w e_c - sum dislikes w e_c. Differentiable in every edge weight it uses.
    ``scale`` (concept id -> factor) lets a test make the model value a concept differently
    from the graph; ``no_grad`` makes rescore hide its gradient (to test the fallback)."""

    def __init__(self, bundle, scale: dict[int, float] | None = None, no_grad: bool = False,
                 train_edges=None):
        self.bundle = bundle
        self.scale = torch.ones(len(bundle.concept_ids))
        for c, f in (scale or {}).items():
            self.scale[bundle.concept_index[c]] = f
        self.no_grad = no_grad

    def _embed(self, b, user: int | None = None):
        """(h_u for every user, or only row ``user`` when given; h_M for every movie)."""
        d = b.data
        nm, nu, nc = d["movie"].num_nodes, d["user"].num_nodes, d["concept"].num_nodes
        E = torch.diag(self.scale)
        st = d["concept", "rev_has", "movie"]
        hm = torch.zeros(nm, nc).index_add(0, st.edge_index[1], st.edge_weight[:, None] * E[st.edge_index[0]])
        hu = torch.zeros(nu, nc)

        def edges(st):  # only the target user's edges when one is given (same result, faster)
            src, dst = st.edge_index
            w = st.edge_weight
            if user is not None:
                keep = dst == user
                src, dst, w = src[keep], dst[keep], w[keep]
            return src, dst, w

        for rel, sign in (("rev_pos", 1.0), ("rev_neg", -1.0)):
            src, dst, w = edges(d["movie", rel, "user"])
            deg = torch.zeros(nu).index_add(0, dst, torch.ones(dst.numel())).clamp(min=1)
            hu = hu + sign * torch.zeros(nu, nc).index_add(0, dst, w[:, None] * hm[src] / deg[dst, None])
        for rel, sign in (("rev_likes", 1.0), ("rev_dislikes", -1.0)):
            src, dst, w = edges(d["concept", rel, "user"])
            hu = hu + sign * torch.zeros(nu, nc).index_add(0, dst, w[:, None] * E[src])
        return hu, hm

    def rescore(self, bundle, user_id, movie_ids):
        ctx = torch.no_grad() if self.no_grad else torch.enable_grad()
        with ctx:
            u = bundle.user_index[int(user_id)]
            hu, hm = self._embed(bundle, u)
            idx = torch.tensor([bundle.movie_index[int(m)] for m in movie_ids])
            s = hm[idx] @ hu[u]
        return s.detach() if self.no_grad else s

    def score(self, user_ids, movie_ids=None):
        with torch.no_grad():
            hu, hm = self._embed(self.bundle)
            u = torch.tensor([self.bundle.user_index[int(x)] for x in np.atleast_1d(user_ids)])
            s = hu[u] @ hm.T
            if movie_ids is not None:
                s = s[:, [self.bundle.movie_index[int(m)] for m in movie_ids]]
        return s

    def recommend(self, user_id, k=10):
        s = self.score([user_id])[0]
        seen = set()
        for rel in ("pos", "neu", "neg"):
            ei = self.bundle.data["user", rel, "movie"].edge_index
            seen |= set(ei[1][ei[0] == self.bundle.user_index[user_id]].tolist())
        order = [i for i in torch.argsort(s, descending=True).tolist() if i not in seen][:k]
        return [(int(self.bundle.movie_ids[i]), float(s[i])) for i in order]

    def movie_embeddings(self):
        with torch.no_grad():
            return self._embed(self.bundle)[1]


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
