"""Item features (blocks standardised + L2-normalised, zeros for a missing feature) and the
[semantic_ids.<version>] config tables."""

import numpy as np
import pytest

from posterkg.config import Config
from posterkg.errors import ConfigError, InputError
from posterkg.semantic.features import item_features
from posterkg.semantic.ids import SemanticConfig, build_version, version_config, version_configs
from posterkg.store import open_store


@pytest.fixture
def tiny_store(tmp_path):
    store = open_store(tmp_path / "t.duckdb")
    store.execute("CREATE TABLE movies (movie_id INTEGER PRIMARY KEY, title VARCHAR, year INTEGER, genres VARCHAR[])")
    store.execute("INSERT INTO movies VALUES (1, 'a', 1990, ['Drama']), (2, 'b', 1991, ['Comedy', 'Drama']), "
                  "(3, 'c', 1992, ['Action']), (4, 'd', 1993, [])")
    store.execute("CREATE TABLE movie_concept_edges (movie_id INTEGER, concept_id INTEGER, type VARCHAR, weight DOUBLE)")
    store.execute("INSERT INTO movie_concept_edges VALUES (1, 10, 'x', 1.0), (1, 11, 'x', -0.5), (2, 11, 'x', 2.0), "
                  "(4, 12, 'x', 1.0)")
    yield store
    store.close()


def test_blocks_are_standardised_normalised_and_zero_when_missing(tiny_store):
    ids = np.array([1, 2, 3, 4])
    x, norm, missing = item_features(tiny_store, ids, ["concepts", "genres"])
    assert [b.name for b in norm.blocks] == ["concepts", "genres"]
    assert norm.blocks[0].vocab == [10, 11, 12] and norm.blocks[1].vocab == ["Action", "Comedy", "Drama"]
    assert x.shape == (4, 6) and missing == {"concepts": 1, "genres": 1}
    c, g = x[:, :3], x[:, 3:]
    np.testing.assert_allclose(np.linalg.norm(c, axis=1), [1, 1, 0, 1], atol=1e-6)   # movie 3: no concepts
    np.testing.assert_allclose(np.linalg.norm(g, axis=1), [1, 1, 1, 0], atol=1e-6)   # movie 4: no genres
    # standardised on the movies that have the block: the mean of raw |weight| is subtracted
    raw = np.array([[1.0, 0.5, 0], [0, 2.0, 0], [0, 0, 1.0]])
    z = (raw - raw.mean(0)) / raw.std(0)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    np.testing.assert_allclose(c[[0, 1, 3]], z, atol=1e-5)
    # the build's normaliser encodes a movie the same way later (the statistics are frozen)
    x2, _, _ = item_features(tiny_store, np.array([2]), normaliser=norm)
    np.testing.assert_allclose(x2[0], x[1], atol=1e-6)


def test_missing_tables_name_the_command(tiny_store):
    with pytest.raises(InputError, match="posterkg embed posters"):
        item_features(tiny_store, np.array([1]), ["poster"])
    with pytest.raises(InputError, match="posterkg embed texts"):
        item_features(tiny_store, np.array([1]), ["text"])
    with pytest.raises(ConfigError, match="unknown semantic-id feature"):
        item_features(tiny_store, np.array([1]), ["pixels"])


def test_build_version_on_a_tiny_store_and_refusal(tiny_store):
    from posterkg.semantic import load_codes

    cfg = SemanticConfig(features=["genres", "concepts"], levels=2, codebook_size=2, code_dim=2, hidden=[8], epochs=3)
    s = build_version(tiny_store, "t", cfg)
    ids, codes = load_codes(tiny_store, "t")
    assert ids.tolist() == [1, 2, 3, 4] and codes.shape == (4, 3) and codes.dtype == np.int64
    assert len({tuple(r) for r in codes}) == 4
    assert s["missing"] == {"genres": 1, "concepts": 1}
    with pytest.raises(InputError, match="--rebuild"):
        build_version(tiny_store, "t", cfg)
    with pytest.raises(InputError, match="semantic-ids build --version nope"):
        load_codes(tiny_store, "nope")


def test_config_tables(tmp_path):
    assert set(version_configs(None)) == {"poster", "text"}
    assert version_configs(None)["text"].features == ["text", "genres"]
    p = tmp_path / "c.toml"
    p.write_text('[semantic_ids.poster]\ncodebook_size = 128\n[semantic_ids.mix]\nfeatures = ["poster", "concepts"]\n')
    cfg = Config.load(p)
    vs = version_configs(cfg)
    assert set(vs) == {"poster", "mix"}
    assert vs["poster"].features == ["poster", "genres"] and vs["poster"].codebook_size == 128
    assert version_config(cfg, "text").features == ["text", "genres"]     # defaults stay reachable
    assert version_config(cfg, "poster-collab").features == ["poster", "genres", "collab"]   # named ones too
    assert "poster-collab" not in version_configs(None)                   # but are not built by default
    with pytest.raises(ConfigError, match="unknown semantic-id version"):
        version_config(cfg, "other")
    p.write_text('[semantic_ids.poster]\ncodebok_size = 128\n')
    with pytest.raises(ConfigError, match="codebook_size"):
        version_configs(Config.load(p))
    p.write_text('[semantic_ids.poster]\nfeatures = ["poster", "gneres"]\n')
    with pytest.raises(ConfigError, match="unknown semantic-id feature"):
        version_configs(Config.load(p))
    p.write_text('[semantic_ids]\nlevels = 3\n')
    with pytest.raises(ConfigError, match="each semantic-id version is a table"):
        version_configs(Config.load(p))
    p.write_text('[semantic_id.poster]\nlevels = 3\n')
    with pytest.raises(ConfigError, match="semantic_ids"):
        Config.load(p)


def test_stage_builds_only_missing_versions_and_never_rebuilds(tiny_store):
    from posterkg.semantic import load_codes
    from posterkg.semantic.stage import STAGE

    assert STAGE.run(tiny_store, Config())["skipped"]
    cfg = Config(data={"semantic_ids": {"g": {"features": ["genres"], "levels": 1, "codebook_size": 2,
                                              "code_dim": 2, "hidden": [4], "epochs": 2}}})
    first = STAGE.run(tiny_store, cfg)
    assert [s["version"] for s in first["built"]] == ["g"] and first["assigned"] == []
    before = load_codes(tiny_store, "g")
    tiny_store.execute("INSERT INTO movies VALUES (5, 'e', 1994, ['Drama'])")
    again = STAGE.run(tiny_store, cfg)
    assert again["built"] == [] and again["assigned"][0]["assigned"] == 1
    ids, codes = load_codes(tiny_store, "g")
    assert ids.tolist() == [1, 2, 3, 4, 5]
    assert np.array_equal(codes[:4], before[1])


def _with_split(store):
    """Users 1-4: 1 and 2 like movies 1 and 2, 3 and 4 like movie 3; movie 4 is liked only in
    test, movie 1 is rated 2 (disliked) by user 3 in train, movie 3 liked by user 1 in valid."""
    store.execute("CREATE TABLE ratings (user_id INTEGER, movie_id INTEGER, rating DOUBLE, ts BIGINT)")
    store.execute("CREATE TABLE split (user_id INTEGER, movie_id INTEGER, part VARCHAR)")
    rows = [(1, 1, 5, "train"), (1, 2, 4, "train"), (2, 1, 4, "train"), (2, 2, 5, "train"),
            (3, 3, 5, "train"), (4, 3, 4, "train"), (3, 1, 2, "train"), (1, 3, 5, "valid"),
            (2, 4, 5, "test")]
    for u, m, r, part in rows:
        store.execute("INSERT INTO ratings VALUES (?, ?, ?, 0)", [u, m, r])
        store.execute("INSERT INTO split VALUES (?, ?, ?)", [u, m, part])


def test_collab_block_reads_train_likes_only_and_is_frozen(tiny_store):
    from posterkg.semantic.features import Normaliser

    with pytest.raises(InputError, match="posterkg split"):
        item_features(tiny_store, np.array([1, 2, 3, 4]), ["collab"])
    _with_split(tiny_store)
    ids = np.array([1, 2, 3, 4])
    x, norm, missing = item_features(tiny_store, ids, ["collab"], collab_dim=2)
    b = norm.blocks[0]
    # the user list is the users with a train like; the dislike of user 3 and the valid / test
    # ratings are not read
    assert b.vocab == [1, 2, 3, 4] and b.proj.shape == (4, 2) and x.shape == (4, 2)
    assert missing == {"collab": 1}                       # movie 4: liked only in test
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), [1, 1, 1, 0], atol=1e-6)
    np.testing.assert_allclose(x[0], x[1], atol=1e-6)     # same likers -> same vector
    assert float(x[0] @ x[2]) < 0                         # different likers -> apart
    # a valid rating does not move any vector
    tiny_store.execute("INSERT INTO ratings VALUES (4, 1, 5, 0)")
    tiny_store.execute("INSERT INTO split VALUES (4, 1, 'valid')")
    x_again, _, _ = item_features(tiny_store, ids, ["collab"], collab_dim=2)
    np.testing.assert_allclose(x_again, x, atol=1e-6)
    # the frozen normaliser (through its saved state) re-encodes the same movies identically
    thawed = Normaliser.from_state(norm.to_state())
    np.testing.assert_array_equal(thawed.blocks[0].proj, b.proj)
    x2, _, _ = item_features(tiny_store, ids, normaliser=thawed)
    np.testing.assert_allclose(x2, x, atol=1e-6)
    # a later train like of a new user is outside the frozen user list: no change
    tiny_store.execute("INSERT INTO ratings VALUES (9, 3, 5, 0)")
    tiny_store.execute("INSERT INTO split VALUES (9, 3, 'train')")
    x3, _, _ = item_features(tiny_store, ids, normaliser=thawed)
    np.testing.assert_allclose(x3, x, atol=1e-6)


def test_collab_version_builds_and_assigns(tiny_store):
    from posterkg.semantic import load_codes
    from posterkg.semantic.ids import assign

    _with_split(tiny_store)
    cfg = SemanticConfig(features=["genres", "collab"], levels=2, codebook_size=2, code_dim=2, hidden=[8],
                         epochs=3, collab_dim=2)
    s = build_version(tiny_store, "gc", cfg)
    assert s["blocks"]["collab"]["dim"] == 2 and s["missing"] == {"genres": 1, "collab": 1}
    tiny_store.execute("INSERT INTO movies VALUES (5, 'e', 1994, ['Drama'])")
    tiny_store.execute("INSERT INTO ratings VALUES (1, 5, 5, 0)")
    tiny_store.execute("INSERT INTO split VALUES (1, 5, 'train')")
    out = assign(tiny_store, "gc")
    assert out["assigned"] == 1 and out["missing"] == {"genres": 0, "collab": 0}
    ids, codes = load_codes(tiny_store, "gc")
    assert ids.tolist() == [1, 2, 3, 4, 5] and len({tuple(r) for r in codes}) == 5
    with pytest.raises(ConfigError, match="collab_dim"):
        SemanticConfig(features=["collab"], collab_dim=0).check("[semantic_ids.x]")


def test_year_block_soft_bins_frozen_centres(tiny_store):
    from posterkg.semantic.features import YEAR_STEP, YEAR_WIDTH

    tiny_store.execute("INSERT INTO movies VALUES (5, 'e', NULL, ['Drama'])")
    ids = np.array([1, 2, 3, 4, 5])
    x, norm, missing = item_features(tiny_store, ids, ["year"])
    (block,) = norm.blocks
    # centres every YEAR_STEP years from the floor of the first year through the last
    assert block.vocab == list(range(1990, 1993 + YEAR_STEP, YEAR_STEP)) == [1990, 1995]
    assert missing == {"year": 1} and not x[4].any()          # movie 5 has no year
    raw = np.exp(-0.5 * ((np.array([1990, 1991, 1992, 1993.0])[:, None] - np.array([1990, 1995.0])) / YEAR_WIDTH) ** 2)
    z = (raw - raw.mean(0)) / raw.std(0)
    np.testing.assert_allclose(x[:4], z / np.linalg.norm(z, axis=1, keepdims=True), atol=1e-5)
    # nearby years are closer than far ones, and the frozen centres encode a later movie the same way
    assert x[0] @ x[1] > x[0] @ x[3]
    tiny_store.execute("INSERT INTO movies VALUES (6, 'f', 1991, ['Drama'])")
    x6, _, _ = item_features(tiny_store, np.array([6]), normaliser=norm)
    np.testing.assert_allclose(x6[0], x[1], atol=1e-6)
    with pytest.raises(InputError, match="no movie has a year"):
        item_features(tiny_store, np.array([5]), ["year"])


def test_named_year_versions():
    assert version_config(None, "poster-year").features == ["poster", "genres", "year"]
    assert version_config(None, "year").features == ["genres", "year"]
