"""Graph construction: signs, weights, long vs short term preferences on a hand-made case, the
fused HeteroData (reverse edges, id maps), and a build on real ML-1M with genres standing in for
visual concepts."""

from __future__ import annotations

import math

import numpy as np
import pytest

from posterkg.errors import ConfigError, InputError
from posterkg.graphs import GraphConfig, build_graphs, graph_config
from posterkg.store import open_store

DAY = 86400
CORE_DDL = """
CREATE TABLE IF NOT EXISTS movies (movie_id INTEGER PRIMARY KEY, title VARCHAR, year INTEGER,
                                   genres VARCHAR[]);
CREATE TABLE IF NOT EXISTS users (user_id INTEGER PRIMARY KEY, gender VARCHAR, age INTEGER,
                                  occupation VARCHAR, zip VARCHAR);
CREATE TABLE IF NOT EXISTS ratings (user_id INTEGER, movie_id INTEGER, rating DOUBLE, ts BIGINT,
                                    PRIMARY KEY (user_id, movie_id));
CREATE TABLE IF NOT EXISTS split (user_id INTEGER, movie_id INTEGER, part VARCHAR,
                                  PRIMARY KEY (user_id, movie_id));
"""
VOCAB_DDL = """
CREATE TABLE IF NOT EXISTS concepts (concept_id INTEGER PRIMARY KEY, type VARCHAR, name VARCHAR,
                                     version INTEGER);
CREATE TABLE IF NOT EXISTS movie_concepts (movie_id INTEGER, concept_id INTEGER, weight DOUBLE,
                                           PRIMARY KEY (movie_id, concept_id));
"""

# movie -> {concept: weight}
MOVIE_CONCEPTS = {
    10: {100: 1.0, 101: 0.5},
    11: {100: 1.0},
    12: {100: 0.8, 102: 1.0},
    13: {101: 1.0},
    14: {101: 1.0, 102: 1.0},
    15: {102: 0.6},
    16: {100: 1.0},
}
# (user, movie, rating, day, part)
RATINGS = [
    (1, 10, 5, 0, "train"),
    (1, 11, 4, 10, "train"),
    (1, 12, 3, 20, "train"),
    (1, 13, 2, 30, "train"),
    (1, 14, 1, 40, "train"),
    (1, 15, 4, 50, "train"),
    (1, 16, 1, 60, "valid"),   # never in the graph
    (2, 10, 4, 0, "train"),
    (2, 13, 5, 5, "train"),
    (2, 14, 5, 9, "test"),     # never in the graph
]


@pytest.fixture
def hand_db(tmp_path):
    store = open_store(tmp_path / "hand.duckdb")
    store.execute(CORE_DDL)
    store.execute(VOCAB_DDL)
    for m in range(10, 18):
        store.execute("INSERT INTO movies VALUES (?, ?, 1999, ['Drama'])", [m, f"Movie {m}"])
    for u in (1, 2, 3):   # user 3 has no ratings at all
        store.execute("INSERT INTO users VALUES (?, 'F', 25, 'x', '00000')", [u])
    for u, m, r, d, part in RATINGS:
        store.execute("INSERT INTO ratings VALUES (?, ?, ?, ?)", [u, m, r, 1_000_000 + d * DAY])
        store.execute("INSERT INTO split VALUES (?, ?, ?)", [u, m, part])
    store.execute("INSERT INTO concepts VALUES (100, 'Color_Palette', 'warm', 1), "
                  "(101, 'Lighting', 'low-key', 1), (102, 'Composition', 'busy', 1), "
                  "(900, 'Lighting', 'old-version concept', 0)")
    for m, cs in MOVIE_CONCEPTS.items():
        for c, w in cs.items():
            store.execute("INSERT INTO movie_concepts VALUES (?, ?, ?)", [m, c, w])
    store.execute("INSERT INTO movie_concepts VALUES (11, 900, 1.0)")   # other version: ignored
    yield store
    store.close()


CFG = GraphConfig(half_life_days=20, short_n=3, smoothing=2.0, min_support=1, top_k=0)


def _prefs(store):
    rows = store.execute("SELECT user_id, concept_id, horizon, score, support FROM user_prefs").fetchall()
    return {(u, c, h): (s, n) for u, c, h, s, n in rows}


def test_interaction_signs_and_split(hand_db):
    counts = build_graphs(hand_db, CFG)
    rows = hand_db.execute("SELECT user_id, movie_id, sign, rating, ts FROM user_movie_edges "
                           "ORDER BY user_id, movie_id").fetchall()
    assert counts["user_movie_edges"] == len(rows) == 8
    got = {(u, m): (s, r, t) for u, m, s, r, t in rows}
    assert (1, 16) not in got and (2, 14) not in got          # valid/test never leak in
    assert [got[(1, m)][0] for m in (10, 11, 12, 13, 14, 15)] == [1, 1, 0, -1, -1, 1]
    assert got[(2, 13)] == (1, 5.0, 1_000_000 + 5 * DAY)


def test_movie_concept_edges_typed_and_versioned(hand_db):
    build_graphs(hand_db, CFG)
    rows = hand_db.execute("SELECT movie_id, concept_id, type, weight FROM movie_concept_edges").fetchall()
    assert len(rows) == sum(len(v) for v in MOVIE_CONCEPTS.values())   # version-0 concept dropped
    assert (12, 100, "Color_Palette", 0.8) in rows
    assert (14, 101, "Lighting", 1.0) in rows
    build_graphs(hand_db, GraphConfig(min_concept_weight=0.7, vocab_version=1))
    assert hand_db.count("movie_concept_edges", "WHERE weight < 0.7") == 0
    assert hand_db.count("movie_concept_edges") == 8   # 10 minus 10->101 (0.5), 15->102 (0.6)
    build_graphs(hand_db, GraphConfig(vocab_version=0))
    assert hand_db.execute("SELECT movie_id, concept_id FROM movie_concept_edges").fetchall() == [(11, 900)]


def test_preferences_by_hand(hand_db):
    build_graphs(hand_db, CFG)
    prefs = _prefs(hand_db)
    k = 2.0
    # base rates over all 8 train interactions (users 1 and 2), weights clipped to [0, 1]
    p0 = {100: (1 + 1 + 0.8 + 1) / 8,        # movies 10, 11, 12 (user 1) and 10 (user 2)
          101: (0.5 + 1 + 1 + 0.5 + 1) / 8,  # 10, 13, 14 (user 1) and 10, 13 (user 2)
          102: (1 + 1 + 0.6) / 8}            # 12, 14, 15

    # short term: user 1's last 3 interactions are 13 (disliked), 14 (disliked), 15 (liked)
    wl, wd = 1.0, 2.0
    s_102 = math.log((0.6 + k * p0[102]) / (wl + k)) - math.log((1.0 + k * p0[102]) / (wd + k))
    s_101 = math.log((0 + k * p0[101]) / (wl + k)) - math.log((2.0 + k * p0[101]) / (wd + k))
    assert prefs[(1, 102, "short")][0] == pytest.approx(s_102, abs=1e-9)
    assert prefs[(1, 102, "short")][1] == 2
    assert prefs[(1, 101, "short")][0] == pytest.approx(s_101, abs=1e-9)
    assert prefs[(1, 101, "short")][0] < -0.8           # two recent dislikes, no like: negative
    assert (1, 100, "short") not in prefs               # no liked/disliked short-term movie has it

    # long term: half-life 20 days from day 50; the neutral (day 20) is no evidence
    w = {d: 0.5 ** ((50 - d) / 20) for d in (0, 10, 30, 40, 50)}
    wl, wd = w[0] + w[10] + w[50], w[30] + w[40]
    sl = {100: w[0] * 1 + w[10] * 1, 101: w[0] * 0.5, 102: w[50] * 0.6}
    sd = {100: 0.0, 101: w[30] + w[40], 102: w[40] * 1.0}
    for c in (100, 101, 102):
        want = math.log((sl[c] + k * p0[c]) / (wl + k)) - math.log((sd[c] + k * p0[c]) / (wd + k))
        assert prefs[(1, c, "long")][0] == pytest.approx(want, abs=1e-9), c
    assert prefs[(1, 100, "long")][0] > 0.3 and prefs[(1, 101, "long")][0] < -0.3
    assert prefs[(1, 100, "long")][1] == 2 and prefs[(1, 101, "long")][1] == 3
    # long and short disagree on warm (100): liked long ago, absent lately
    assert prefs[(1, 100, "long")][0] > 0 and (1, 100, "short") not in prefs

    # user 2 has no dislikes: the score is the smoothed lift of the liked rate over the base rate
    wl2 = 0.5 ** (5 / 20) + 1.0
    s = math.log((0.5 ** (5 / 20) * 1.0 + k * p0[100]) / (wl2 + k)) - math.log(p0[100])
    assert prefs[(2, 100, "long")][0] == pytest.approx(s, abs=1e-9)
    assert 3 not in {u for u, _, _ in prefs}


def test_half_life_and_smoothing_matter(hand_db):
    build_graphs(hand_db, CFG)
    a = _prefs(hand_db)[(1, 100, "long")][0]
    build_graphs(hand_db, GraphConfig(half_life_days=2000, short_n=3, smoothing=2.0, top_k=0))
    b = _prefs(hand_db)[(1, 100, "long")][0]
    assert b > a            # old likes of warm movies count more with a long half-life
    build_graphs(hand_db, GraphConfig(half_life_days=20, short_n=3, smoothing=200.0, top_k=0))
    c = _prefs(hand_db)[(1, 100, "long")][0]
    assert 0 < c < a / 10   # a strong prior shrinks towards 0


def test_top_k_min_support_and_dense(hand_db):
    build_graphs(hand_db, GraphConfig(half_life_days=20, short_n=3, smoothing=2.0, top_k=1))
    rows = hand_db.execute("SELECT user_id, horizon, score > 0, count(*) FROM user_prefs "
                           "GROUP BY ALL").fetchall()
    assert rows and all(n == 1 for *_, n in rows)
    build_graphs(hand_db, GraphConfig(half_life_days=20, short_n=3, smoothing=2.0, top_k=0,
                                      min_support=3))
    assert hand_db.count("user_prefs", "WHERE support < 3") == 0
    assert hand_db.count("user_prefs") == 1           # only (1, 101, long) has 3
    build_graphs(hand_db, GraphConfig(half_life_days=20, short_n=3, smoothing=2.0, top_k=0,
                                      min_support=0))
    prefs = _prefs(hand_db)
    # absence is evidence: warm is in none of user 1's last 3 movies (1 liked, 2 disliked), so
    # its score is ln((W_D + k) / (W_L + k)) = ln(4 / 3): missing from two dislikes, one like
    assert prefs[(1, 100, "short")][1] == 0
    assert prefs[(1, 100, "short")][0] == pytest.approx(math.log(4 / 3), abs=1e-9)
    assert len([k for k in prefs if k[0] == 1]) == 2 * 3   # every concept, both horizons


def test_config_validation():
    with pytest.raises(ConfigError):
        graph_config({"smoothing": 0})
    with pytest.raises(ConfigError):
        graph_config({"pref_horizon": "forever"})
    with pytest.raises(ConfigError):
        graph_config({"half_life": 3})        # unknown key
    assert graph_config({"short_n": 5}).short_n == 5


def test_missing_inputs_are_clean_errors(tmp_path):
    with open_store(tmp_path / "empty.duckdb") as store:
        with pytest.raises(InputError, match="posterkg ingest"):
            build_graphs(store)
        store.execute(CORE_DDL)
        store.execute("INSERT INTO ratings VALUES (1, 1, 4, 0)")
        store.execute("INSERT INTO split VALUES (1, 1, 'train')")
        with pytest.raises(InputError, match="schema"):
            build_graphs(store)


def test_hetero_bundle(hand_db):
    from posterkg.graphs.hetero import EDGE_TYPES, REVERSE_EDGE_TYPES, build_hetero

    b = build_hetero(hand_db, CFG)              # builds the tables itself when missing
    d = b.data
    assert list(b.user_ids) == [1, 2, 3]        # user 3 (no ratings) is still a node
    assert list(b.movie_ids) == list(range(10, 18))
    assert list(b.concept_ids) == [100, 101, 102]
    for kind in ("user", "movie", "concept"):
        ids = getattr(b, f"{kind}_ids")
        assert b.index(kind, ids[::-1]).tolist() == list(range(len(ids)))[::-1]
    with pytest.raises(InputError, match="missing"):
        b.index("movie", [10, 99])
    assert set(d.edge_types) == set(EDGE_TYPES) | set(REVERSE_EDGE_TYPES)
    for et in d.edge_types:
        st = d[et]
        assert st.edge_index.dtype.is_floating_point is False and st.edge_index.shape[0] == 2
        assert st.edge_weight.shape == (st.edge_index.shape[1],)
        assert bool((st.edge_weight > 0).all())
        if "movie" in (et[0], et[2]) and "user" in (et[0], et[2]):
            assert st.ts.shape == st.edge_weight.shape
    for (s, r, t), (rt, rr, rs) in zip(EDGE_TYPES, REVERSE_EDGE_TYPES):
        fwd, rev = d[s, r, t], d[rt, rr, rs]
        assert rr == f"rev_{r}" and (rt, rs) == (t, s)
        assert fwd.edge_index.flip(0).tolist() == rev.edge_index.tolist()
        assert fwd.edge_weight.tolist() == rev.edge_weight.tolist()

    def edges(rel):
        st = d["user", rel, "movie"]
        return {(int(b.user_ids[u]), int(b.movie_ids[m])): (float(w), int(ts))
                for (u, m), w, ts in zip(st.edge_index.t().tolist(), st.edge_weight, st.ts)}

    pos, neu, neg = edges("pos"), edges("neu"), edges("neg")
    assert {k: v[0] for k, v in pos.items()} == {(1, 10): 1.0, (1, 11): 0.5, (1, 15): 0.5,
                                                 (2, 10): 0.5, (2, 13): 1.0}
    assert {k: v[0] for k, v in neg.items()} == {(1, 13): 0.5, (1, 14): 1.0}
    assert {k: v[0] for k, v in neu.items()} == {(1, 12): 1.0}
    assert pos[(1, 15)][1] == 1_000_000 + 50 * DAY

    has = d["movie", "has", "concept"]
    got = {(int(b.movie_ids[m]), int(b.concept_ids[c])): round(float(w), 6)
           for (m, c), w in zip(has.edge_index.t().tolist(), has.edge_weight)}
    assert got == {(m, c): w for m, cs in MOVIE_CONCEPTS.items() for c, w in cs.items()}

    prefs = {(u, c): s for (u, c, h), (s, _) in _prefs(hand_db).items() if h == "long"}
    likes, dislikes = d["user", "likes", "concept"], d["user", "dislikes", "concept"]
    got_l = {(int(b.user_ids[u]), int(b.concept_ids[c])): float(w)
             for (u, c), w in zip(likes.edge_index.t().tolist(), likes.edge_weight)}
    got_d = {(int(b.user_ids[u]), int(b.concept_ids[c])): -float(w)
             for (u, c), w in zip(dislikes.edge_index.t().tolist(), dislikes.edge_weight)}
    assert got_l.keys() == {k for k, s in prefs.items() if s > 0}
    assert got_d.keys() == {k for k, s in prefs.items() if s < 0}
    for key, s in {**got_l, **got_d}.items():
        assert s == pytest.approx(prefs[key], rel=1e-5)
    types = [b.concept_type_names[i] for i in d["concept"].type_id.tolist()]
    assert types == ["Color_Palette", "Lighting", "Composition"]

    unit = build_hetero(hand_db, GraphConfig(interaction_weight="unit", half_life_days=20))
    assert unit.data["user", "pos", "movie"].edge_weight.tolist() == [1.0] * 5


def test_hetero_read_only_needs_build(tmp_path, hand_db):
    from posterkg.graphs.hetero import build_hetero

    path = hand_db.path
    hand_db.close()
    with open_store(path, read_only=True) as ro, pytest.raises(InputError, match="graph build"):
        build_hetero(ro)


@pytest.mark.slow
def test_build_on_ml1m_with_genre_concepts(ml1m_db_copy):
    """Real ML-1M (../shared) with genres as a stand-in concept vocabulary."""
    from posterkg.graphs.hetero import build_hetero

    with open_store(ml1m_db_copy) as store:
        if not store.table_exists("concepts"):
            store.execute(VOCAB_DDL)
        store.execute("DELETE FROM movie_concepts")
        store.execute("DELETE FROM concepts")
        store.execute("""
            INSERT INTO concepts
            SELECT 1000 + row_number() OVER (ORDER BY g) AS concept_id, 'Genre_Visual', g, 1
            FROM (SELECT DISTINCT unnest(genres) AS g FROM movies)""")
        store.execute("""
            INSERT INTO movie_concepts (movie_id, concept_id, weight)
            SELECT m.movie_id, c.concept_id, 1.0
            FROM (SELECT movie_id, unnest(genres) AS g FROM movies) m
            JOIN concepts c ON c.name = m.g""")
        counts = build_graphs(store, GraphConfig(top_k=8))
        n_train = store.count("split", "WHERE part = 'train'")
        assert counts["user_movie_edges"] == n_train
        assert store.count("user_prefs", "WHERE horizon = 'short'") > 0
        # signs follow ratings on the real data
        bad = store.scalar("""SELECT count(*) FROM user_movie_edges WHERE NOT (
            (rating >= 4 AND sign = 1) OR (rating = 3 AND sign = 0) OR (rating <= 2 AND sign = -1))""")
        assert bad == 0
        # Horror: liked by fewer users than disliked? at least both signs exist across users
        signs = store.execute("SELECT DISTINCT sign(score) FROM user_prefs").fetchall()
        assert {s for (s,) in signs} == {-1, 1}
        b = build_hetero(store)
        assert b.num_movies == store.count("movies")
        assert b.num_concepts == 18
        nint = sum(b.data["user", r, "movie"].edge_index.shape[1] for r in ("pos", "neu", "neg"))
        assert nint == n_train
        # every train edge maps back to its database ids
        st = b.data["user", "pos", "movie"]
        u, m = st.edge_index[:, :50].numpy()
        for uu, mm in zip(b.user_ids[u], b.movie_ids[m]):
            assert store.scalar("SELECT sign FROM user_movie_edges WHERE user_id=? AND movie_id=?",
                                [int(uu), int(mm)]) == 1
        assert np.all(np.diff(b.movie_ids) > 0)


def test_cli_build_stats_export(hand_db, tmp_path):
    import csv
    import json

    import networkx as nx
    from click.testing import CliRunner

    from posterkg.cli import cli

    db = str(hand_db.path)
    hand_db.close()
    r = CliRunner()
    res = r.invoke(cli, ["graph", "build", "--db", db, "--half-life-days", "20", "--short-n", "3",
                         "--top-k", "0"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "user_movie_edges" in res.output and "user_prefs" in res.output
    res = r.invoke(cli, ["graph", "stats", "--db", db, "--json"], catch_exceptions=False)
    s = json.loads(res.output)
    assert s["edges"]["user-movie"] == 8 and s["edges"]["user-neg-movie"] == 2
    assert s["nodes"]["concepts"] == 3 and s["concepts_by_type"]["Lighting"] == 1
    assert r.invoke(cli, ["graph", "stats", "--db", db]).exit_code == 0

    gml = tmp_path / "g.graphml"
    res = r.invoke(cli, ["graph", "export", "--db", db, "--format", "graphml", "--out", str(gml)],
                   catch_exceptions=False)
    assert res.exit_code == 0, res.output
    g = nx.read_graphml(gml)
    assert g.nodes["movie:12"]["kind"] == "movie" and g.nodes["concept:101"]["label"] == "low-key"
    rel = {(u, v): d["relation"] for u, v, d in g.edges(data=True) if d["relation"] in ("pos", "neg", "neu")}
    assert rel[("user:1", "movie:14")] == "neg" and rel[("user:1", "movie:12")] == "neu"
    assert not g.has_edge("user:1", "movie:16")
    with open_store(db, read_only=True) as store:
        n_prefs = store.count("user_prefs")
    assert sum(1 for *_, d in g.edges(data=True) if d["relation"] in ("likes", "dislikes")) == n_prefs

    neo = tmp_path / "neo"
    res = r.invoke(cli, ["graph", "export", "--db", db, "--format", "neo4j", "--out", str(neo),
                         "--horizon", "long"], catch_exceptions=False)
    assert res.exit_code == 0, res.output

    def read(name):
        with open(neo / name, newline="", encoding="utf-8") as f:
            return list(csv.reader(f))

    movies = read("movies.csv")
    assert movies[0] == ["movieId:ID(Movie)", "title", "year:int", "genres:string[]", ":LABEL"]
    assert ["12", "Movie 12", "1999", "Drama", "Movie"] in movies
    rated = read("rated.csv")
    assert rated[0][:3] == [":START_ID(User)", ":END_ID(Movie)", ":TYPE"]
    assert ["1", "14", "DISLIKED"] == rated[[r[:2] for r in rated].index(["1", "14"])][:3]
    concepts = read("concepts.csv")
    assert concepts[0][0] == "conceptId:ID(Concept)"
    assert ["101", "low-key", "Lighting", "Concept;Lighting"] in concepts
    prefs = read("preferences.csv")
    assert {row[3] for row in prefs[1:]} == {"long"}
    assert {row[2] for row in prefs[1:]} == {"PREFERS", "AVOIDS"}
    node_ids = {("User", r[0]) for r in read("users.csv")[1:]} | {("Movie", r[0]) for r in movies[1:]} \
        | {("Concept", r[0]) for r in concepts[1:]}
    for name, (a, b) in (("rated.csv", ("User", "Movie")), ("has_concept.csv", ("Movie", "Concept")),
                         ("preferences.csv", ("User", "Concept"))):
        for row in read(name)[1:]:      # every relationship end exists as a node
            assert (a, row[0]) in node_ids and (b, row[1]) in node_ids
    assert "neo4j-admin\" database import full" in (neo / "import.sh").read_text()


def test_stage_fingerprint_and_run(hand_db):
    from posterkg.config import Config
    from posterkg.graphs.stage import STAGE
    from posterkg.pipeline import fingerprint

    cfg = Config(data={"graph": {"short_n": 3}})
    fp = fingerprint(STAGE, hand_db, cfg)
    assert fp == fingerprint(STAGE, hand_db, cfg)
    assert fp != fingerprint(STAGE, hand_db, Config(data={"graph": {"short_n": 4}}))
    counts = STAGE.run(hand_db, cfg)
    assert counts["user_movie_edges"] == 8 and hand_db.count("user_prefs") == counts["user_prefs"]


def test_hetero_without_cfg_follows_the_last_build(hand_db):
    from posterkg.graphs.hetero import build_hetero

    build_graphs(hand_db, GraphConfig(interaction_weight="unit", pref_horizon="short", short_n=3,
                                      top_k=0))
    b = build_hetero(hand_db)
    assert b.config.interaction_weight == "unit" and b.config.short_n == 3
    assert b.data["user", "pos", "movie"].edge_weight.tolist() == [1.0] * 5
    short = {(u, c) for (u, c, h) in _prefs(hand_db) if h == "short"}
    likes = b.data["user", "likes", "concept"].edge_index.t().tolist()
    dislikes = b.data["user", "dislikes", "concept"].edge_index.t().tolist()
    assert {(int(b.user_ids[u]), int(b.concept_ids[c])) for u, c in likes + dislikes} == short
