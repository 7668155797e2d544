"""The train stage's input assembly (posterkg/gnn/inputs.py) on a hand-made database whose graph
is known: which rating becomes which relation, which part counts, and the concept relations."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from posterkg.gnn.inputs import assemble
from posterkg.store import open_store

# user, movie, rating, part
RATINGS = [
    (1, 10, 5.0, "train"), (1, 11, 4.0, "train"), (1, 12, 3.5, "train"), (1, 13, 3.0, "train"),
    (1, 14, 2.5, "train"), (1, 15, 1.0, "train"), (1, 16, 4.5, "valid"), (1, 17, 2.0, "test"),
    (2, 10, 2.0, "train"), (2, 11, 4.5, "train"), (2, 13, 1.5, "train"), (2, 12, 5.0, "test"),
    (3, 15, 4.0, "train"), (3, 14, 3.0, "valid"), (3, 16, 0.5, "train"),
]
# what the rating rule says, train part only
WANT = {
    "pos": {(1, 10), (1, 11), (2, 11), (3, 15)},          # >= 4
    "neu": {(1, 12), (1, 13)},                            # 3 .. 3.5
    "neg": {(1, 14), (1, 15), (2, 10), (2, 13), (3, 16)},  # < 3
}
MOVIE_CONCEPTS = [(10, 7, 0.9), (11, 7, 0.4), (11, 8, 1.0), (15, 9, 0.6), (99, 7, 1.0)]   # 99: not a movie
PREFS = [(1, 7, "long", 0.8), (1, 9, "long", -0.5), (2, 8, "long", 0.3), (2, 7, "short", -0.9),
         (3, 9, "long", -0.2)]


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "h.duckdb"
    with open_store(path) as s:
        s.execute("CREATE TABLE movies(movie_id INTEGER PRIMARY KEY, title VARCHAR, year INTEGER, genres VARCHAR[])")
        s.insert_df("movies", pd.DataFrame({"movie_id": range(10, 19), "title": [f"M{i}" for i in range(10, 19)],
                                            "year": 2000, "genres": [["Drama"], ["Comedy", "Drama"]] * 4 + [[]]}))
        df = pd.DataFrame(RATINGS, columns=["user_id", "movie_id", "rating", "part"])
        df["ts"] = range(len(df))
        s.execute("CREATE TABLE ratings(user_id INTEGER, movie_id INTEGER, rating DOUBLE, ts BIGINT)")
        s.insert_df("ratings", df[["user_id", "movie_id", "rating", "ts"]])
        s.execute("CREATE TABLE split(user_id INTEGER, movie_id INTEGER, part VARCHAR)")
        s.insert_df("split", df[["user_id", "movie_id", "part"]])
        s.execute("CREATE TABLE movie_concept_edges(movie_id INTEGER, concept_id INTEGER, type VARCHAR, weight DOUBLE)")
        s.insert_df("movie_concept_edges", pd.DataFrame(MOVIE_CONCEPTS, columns=["movie_id", "concept_id", "weight"])
                    .assign(type="Color_Palette")[["movie_id", "concept_id", "type", "weight"]])
        s.execute("CREATE TABLE user_prefs(user_id INTEGER, concept_id INTEGER, horizon VARCHAR, score DOUBLE, "
                  "support INTEGER)")
        s.insert_df("user_prefs", pd.DataFrame(PREFS, columns=["user_id", "concept_id", "horizon", "score"])
                    .assign(support=1))
        s.execute("CREATE TABLE graph_info(built_at TIMESTAMP DEFAULT current_timestamp, config JSON, counts JSON)")
        s.execute("INSERT INTO graph_info (config, counts) VALUES (?, ?)", [json.dumps({"pref_horizon": "long"}), "{}"])
    return path


def _pairs(inputs, rel, src_type="user", dst_type="movie", weights=False):
    ids = inputs.ids
    table = {"user": ids.user_ids, "movie": ids.movie_ids, "concept": ids.concept_ids}
    r = inputs.graph.get(rel)
    out = {(int(table[src_type][a]), int(table[dst_type][b])): float(w)
           for a, b, w in zip(r.src.tolist(), r.dst.tolist(), r.weight.tolist())}
    assert len(out) == len(r)    # no duplicate edges
    return out if weights else set(out)


def test_signed_relations_follow_the_rating_rule_on_train_only(db):
    with open_store(db, read_only=True) as s:
        inputs = assemble(s).inputs
    for rel, want in WANT.items():
        assert _pairs(inputs, rel) == want, rel
    # every interaction edge weighs 1; valid and test rows are not in the graph
    for rel in WANT:
        assert set(inputs.graph.get(rel).weight.tolist()) == {1.0}
    assert list(inputs.ids.movie_ids) == list(range(10, 19))      # the whole catalogue
    assert list(inputs.ids.user_ids) == [1, 2, 3]


def test_concept_relations_and_signed_preferences(db):
    with open_store(db, read_only=True) as s:
        inputs = assemble(s).inputs
    assert list(inputs.ids.concept_ids) == [7, 8, 9]
    assert _pairs(inputs, "has", "movie", "concept", weights=True) == {
        (10, 7): pytest.approx(0.9), (11, 7): pytest.approx(0.4), (11, 8): pytest.approx(1.0),
        (15, 9): pytest.approx(0.6)}                                # movie 99 is not in the catalogue
    # long horizon (graph_info): likes = score > 0, dislikes = -score for score < 0
    assert _pairs(inputs, "likes", "user", "concept", weights=True) == {
        (1, 7): pytest.approx(0.8), (2, 8): pytest.approx(0.3)}
    assert _pairs(inputs, "dislikes", "user", "concept", weights=True) == {
        (1, 9): pytest.approx(0.5), (3, 9): pytest.approx(0.2)}
    assert inputs.ids.genre_names == ["Comedy", "Drama"]
    assert len(inputs.graph.get("genre")) == 12
