"""A tiny database for the model contract test (not a test module): the planted-taste ratings of
``tests/gnn_synth.py`` (12 users, 24 movies, four genres) plus five visual concepts, movie-concept
edges, signed user-concept preferences, ``graph_info``, random dense poster/text features and
hand-made semantic IDs (versions "poster" and "text"), so every input a registered model may ask
for can be assembled by the train stage's code."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from gnn_synth import make_db
from posterkg.embed.posters import resolve_feature_encoder
from posterkg.store import open_store

MINILM = resolve_feature_encoder("text", "minilm")     # sentence-transformers/all-MiniLM-L6-v2#mean

CONCEPTS = [(1, "Color_Palette", "warm"), (2, "Color_Palette", "cool"), (3, "Lighting", "low-key"),
            (4, "Typography", "bold"), (5, "Visual_Mood", "eerie")]


def make_world(path, n_users: int = 12, n_movies: int = 24, per_user: int = 14, seed: int = 0):
    make_db(path, n_users=n_users, n_movies=n_movies, per_user=per_user, seed=seed)
    rng = np.random.default_rng(seed + 1)
    with open_store(path) as s:
        s.execute("CREATE TABLE concepts(concept_id INTEGER PRIMARY KEY, type VARCHAR, name VARCHAR, version INTEGER)")
        s.insert_df("concepts", pd.DataFrame(CONCEPTS, columns=["concept_id", "type", "name"]).assign(version=1))
        s.execute("CREATE TABLE movie_concept_edges(movie_id INTEGER, concept_id INTEGER, type VARCHAR, weight DOUBLE)")
        s.execute("CREATE TABLE user_prefs(user_id INTEGER, concept_id INTEGER, horizon VARCHAR, score DOUBLE, "
                  "support INTEGER)")
        s.execute("CREATE TABLE graph_info(built_at TIMESTAMP DEFAULT current_timestamp, config JSON, counts JSON)")
        ctype = {c: t for c, t, _ in CONCEPTS}
        rows = []
        for m in range(1, n_movies + 1):
            for c in sorted(rng.choice(5, int(rng.integers(1, 4)), replace=False) + 1):
                rows.append((m, int(c), ctype[int(c)], float(np.round(rng.uniform(0.3, 1.0), 3))))
        s.insert_df("movie_concept_edges", pd.DataFrame(rows, columns=["movie_id", "concept_id", "type", "weight"]))
        prefs = []
        for u in range(1, n_users + 1):
            for c in range(1, 6):
                score = float(np.round(rng.normal(0, 0.6), 3))
                if abs(score) > 0.2:
                    prefs.append((u, c, "long", score, 3))
        s.insert_df("user_prefs", pd.DataFrame(prefs, columns=["user_id", "concept_id", "horizon", "score", "support"]))
        s.execute("INSERT INTO graph_info (config, counts) VALUES (?, ?)", [json.dumps({"pref_horizon": "long"}), "{}"])
        # stored under the names `posterkg embed` writes (the text alias minilm resolves to its model)
        for table, enc, dim in (("poster_embeddings", "efficientnet-lite0", 6), ("text_embeddings", MINILM, 5)):
            s.execute(f"CREATE TABLE {table}(movie_id INTEGER, encoder VARCHAR, vector FLOAT[])")
            vec = rng.normal(size=(n_movies, dim)).astype(np.float32)
            s.insert_df(table, pd.DataFrame({"movie_id": np.arange(1, n_movies + 1), "encoder": enc,
                                             "vector": [v.tolist() for v in vec]}))
        write_semantic_ids(s, list(range(1, n_movies + 1)), create=True)
    return path


def semantic_codes(movie_id: int, version: str) -> list[int]:
    """A hand-made unique semantic ID (2 codes of 4, then a disambiguation code) per movie and
    version, in the layout of ``posterkg semantic-ids build`` (``semantic_ids.codes``)."""
    i = movie_id - 1 if version == "poster" else (7 * movie_id) % 101
    return [i % 4, (i // 4) % 4, i // 16]


def write_semantic_ids(s, movie_ids, create: bool = False) -> None:
    if create:
        s.execute("CREATE TABLE semantic_ids(movie_id BIGINT, version VARCHAR, codes INTEGER[], "
                  "PRIMARY KEY (movie_id, version))")
        s.execute("CREATE TABLE semantic_id_versions(version VARCHAR PRIMARY KEY, features VARCHAR[], "
                  "levels INTEGER, codebook_size INTEGER, created_at TIMESTAMP DEFAULT current_timestamp, "
                  "metrics JSON, state BLOB, config JSON)")
        for v, f in (("poster", ["poster", "genres"]), ("text", ["text", "genres"])):
            s.execute("INSERT INTO semantic_id_versions (version, features, levels, codebook_size, metrics, "
                      "config) VALUES (?, ?, 2, 4, '{}', '{}')", [v, f])
    rows = [(int(m), v, semantic_codes(int(m), v)) for v in ("poster", "text") for m in movie_ids]
    s.insert_df("semantic_ids", pd.DataFrame(rows, columns=["movie_id", "version", "codes"]))


def add_movies(path, n: int = 10) -> list[int]:
    """Ingest ``n`` new movies (with poster concepts and features) after a model was trained."""
    with open_store(path) as s:
        top = int(s.scalar("SELECT max(movie_id) FROM movies"))
        ids = list(range(top + 1, top + 1 + n))
        s.insert_df("movies", pd.DataFrame({"movie_id": ids, "title": [f"New {i}" for i in ids], "year": 2024,
                                            "genres": [["Red"] for _ in ids]}))
        s.insert_df("movie_concept_edges", pd.DataFrame({"movie_id": ids, "concept_id": 1, "type": "Color_Palette",
                                                         "weight": 0.9}))
        for table, enc, dim in (("poster_embeddings", "efficientnet-lite0", 6), ("text_embeddings", MINILM, 5)):
            s.insert_df(table, pd.DataFrame({"movie_id": ids, "encoder": enc,
                                             "vector": [[0.5] * dim for _ in ids]}))
        write_semantic_ids(s, ids)      # new movies get IDs from the frozen tokenizer
    return ids
