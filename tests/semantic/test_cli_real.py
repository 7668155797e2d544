"""``posterkg semantic-ids`` on a small cut of the real ML-1M (../shared): genres + MiniLM text
features, the stored tables, refusal without --rebuild, ``assign`` for movies ingested later,
and identical codes after reading the state back in a fresh process."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from posterkg.cli import cli
from posterkg.errors import PosterkgError
from posterkg.store import open_store

REPO = Path(__file__).resolve().parents[2]
KEEP, LATER = 300, 30          # movies at build time, movies ingested afterwards

CONFIG = """
[semantic_ids.small]
features = ["genres", "text"]
text_encoder = "minilm"
levels = 2
codebook_size = 16
code_dim = 8
hidden = [64]
epochs = 15
batch_size = 64
lr = 0.003

[semantic_ids.nopix]
features = ["poster"]
epochs = 1
"""


def _invoke(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=True)
    if result.exception and not isinstance(result.exception, (SystemExit, PosterkgError)):
        raise result.exception
    return result


def _error(r) -> str:
    """The one-line message of a refused command (the CLI's main prints it without a traceback)."""
    assert r.exit_code != 0 and isinstance(r.exception, PosterkgError), r.output
    return str(r.exception)


def _table(db):
    with open_store(db, read_only=True) as store:
        return {int(m): list(c) for m, c in store.execute(
            "SELECT movie_id, codes FROM semantic_ids WHERE version = 'small'").fetchall()}


def _embed_texts(store):
    from posterkg.embed.encoder import EmbedConfig, load_encoder
    from posterkg.embed.posters import embed_texts

    embed_texts(store, load_encoder(EmbedConfig(model="minilm", pooling="mean")))


def test_semantic_ids_cli_on_real_movielens(ml1m_db_copy, tmp_path):
    db = ml1m_db_copy
    cfg = tmp_path / "c.toml"
    cfg.write_text(CONFIG)
    with open_store(db) as store:
        ids = store.execute("SELECT movie_id FROM movies ORDER BY movie_id").fetchnumpy()["movie_id"]
        cut = int(ids[KEEP - 1])
        store.execute("DELETE FROM movies WHERE movie_id > ?", [int(ids[KEEP + LATER - 1])])
        later = store.df("SELECT * FROM movies WHERE movie_id > ? ORDER BY movie_id", [cut])
        store.execute("DELETE FROM movies WHERE movie_id > ?", [cut])
        _embed_texts(store)

    # a version whose features are not in the database: a one-line error naming the command
    r = _invoke("semantic-ids", "build", "--db", db, "--config", cfg, "--version", "nopix")
    assert "posterkg embed posters" in _error(r)

    r = _invoke("semantic-ids", "build", "--db", db, "--config", cfg, "--version", "small")
    assert r.exit_code == 0, r.output
    assert "usage per level" in r.output and "collision rate" in r.output
    first = _table(db)
    assert len(first) == KEEP
    codes = np.array(list(first.values()))
    assert codes.shape == (KEEP, 3)
    assert codes[:, :2].min() >= 0 and codes[:, :2].max() < 16
    assert len({tuple(c) for c in codes}) == KEEP                       # full IDs unique
    with open_store(db, read_only=True) as store:
        feats, levels, k, metrics, conf = store.execute(
            "SELECT features, levels, codebook_size, metrics, config FROM semantic_id_versions "
            "WHERE version = 'small'").fetchone()
    m = json.loads(metrics)
    assert json.loads(feats) == ["genres", "text"] and (levels, k) == (2, 16)
    assert json.loads(conf)["epochs"] == 15
    assert m["movies"] == KEEP and m["missing"] == {"genres": 0, "text": 0}
    assert m["max_group"] == codes[:, 2].max() + 1
    assert len(m["usage"]) == 2 and all(u >= 0.5 for u in m["usage"]), m["usage"]
    assert m["train_recon_last"] < m["train_recon_first"]

    # IDs are ground truth: a second build is refused and changes nothing
    r = _invoke("semantic-ids", "build", "--db", db, "--config", cfg, "--version", "small")
    assert "--rebuild" in _error(r)
    assert _table(db) == first

    r = _invoke("semantic-ids", "show", "--db", db)
    assert r.exit_code == 0 and "small" in r.output and "genres+text" in r.output

    # a fresh process: the state read from the table re-encodes the features to the same codes
    script = (
        "import json, sys\n"
        "from posterkg.store import open_store\n"
        "from posterkg.semantic import load_codes, load_version\n"
        "from posterkg.semantic.features import item_features\n"
        "with open_store(sys.argv[1], read_only=True) as st:\n"
        "    v = load_version(st, 'small'); ids, codes = load_codes(st, 'small')\n"
        "    x, _, _ = item_features(st, ids, normaliser=v.normaliser)\n"
        "    print(json.dumps({'ids': ids.tolist(), 'stored': codes.tolist(), 'again': v.model.codes(x).tolist()}))\n")
    out = subprocess.run([sys.executable, "-c", script, str(db)], capture_output=True, text=True, cwd=REPO,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["ids"] == sorted(first) and res["stored"] == [first[m] for m in res["ids"]]
    assert res["again"] == [c[:2] for c in res["stored"]]

    # movies ingested later get IDs from the frozen state; existing IDs never change
    with open_store(db) as store:
        store.insert_df("movies", later)
        _embed_texts(store)
    r = _invoke("semantic-ids", "assign", "--db", db, "--version", "small")
    assert r.exit_code == 0, r.output
    after = _table(db)
    assert len(after) == KEEP + LATER
    assert {m: after[m] for m in first} == first
    full = [tuple(c) for c in after.values()]
    assert len(set(full)) == len(full)
    # the new movies' RQ-VAE codes are the frozen model's codes for their features
    with open_store(db, read_only=True) as store:
        from posterkg.semantic import load_version
        from posterkg.semantic.features import item_features

        v = load_version(store, "small")
        new_ids = np.array(sorted(set(after) - set(first)))
        x, _, missing = item_features(store, new_ids, normaliser=v.normaliser)
        assert missing == {"genres": 0, "text": 0}
        assert v.model.codes(x).tolist() == [after[m][:2] for m in new_ids]
    # a new movie sharing its L codes with older ones follows them in the disambiguation order
    groups = {}
    for mid in sorted(after):
        groups.setdefault(tuple(after[mid][:2]), []).append(after[mid][2])
    for extras in groups.values():
        assert sorted(extras) == list(range(len(extras)))
    # nothing new: a second assign is a no-op
    r = _invoke("semantic-ids", "assign", "--db", db, "--version", "small")
    assert r.exit_code == 0 and _table(db) == after
