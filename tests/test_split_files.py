"""`posterkg split --scheme files`: a split given as files reproduces exactly that split."""

from __future__ import annotations

import subprocess
import sys

from ml_fixtures import write_dat

from posterkg.ingest.movielens import ingest_movielens
from posterkg.split import import_split, make_split
from posterkg.store import open_store


def _db(tmp_path):
    src = write_dat(tmp_path / "ml")
    db = tmp_path / "x.duckdb"
    with open_store(db) as s:
        ingest_movielens(s, src)
    return db


def test_files_reproduce_a_split_and_recbole_headers_are_read(tmp_path):
    db = _db(tmp_path)
    with open_store(db) as s:
        make_split(s, "random", 0.2, 0.2, seed=3, min_ratings=1)
        want = sorted(s.execute("SELECT user_id, movie_id, part FROM split").fetchall())
        rat = {(u, m): (r, t) for u, m, r, t in s.execute("SELECT user_id, movie_id, rating, ts FROM ratings").fetchall()}
    paths = {}
    for i, part in enumerate(("train", "valid", "test")):
        p = tmp_path / f"ml.{part}.inter"
        rows = [(u, m) for u, m, q in want if q == part]
        if i == 0:   # RecBole atomic header, tab separated
            text = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n" + "".join(
                f"{u}\t{m}\t{rat[(u, m)][0]}\t{rat[(u, m)][1]}\n" for u, m in rows)
        else:        # plain CSV without a header
            text = "".join(f"{u},{m},{rat[(u, m)][0]},{rat[(u, m)][1]}\n" for u, m in rows)
        p.write_text(text)
        paths[part] = p
    with open_store(db) as s:
        make_split(s, "temporal", 0.1, 0.1, min_ratings=1)     # something else first
        summary = import_split(s, paths["train"], paths["valid"], paths["test"])
        got = sorted(s.execute("SELECT user_id, movie_id, part FROM split").fetchall())
        assert s.scalar("SELECT scheme FROM split_info") == "files"
    assert got == want
    assert summary["parts"]["train"] == sum(1 for *_, q in want if q == "train")
    # the CLI
    r = subprocess.run([sys.executable, "-m", "posterkg", "--db", str(db), "split", "--scheme", "files",
                        "--train", str(paths["train"]), "--valid", str(paths["valid"]), "--test",
                        str(paths["test"])], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "split (files" in r.stdout


def test_files_that_are_not_ratings_of_the_database_are_refused(tmp_path):
    db = _db(tmp_path)
    bad = tmp_path / "t.tsv"
    bad.write_text("1\t1\n99\t1\n")
    ok = tmp_path / "v.tsv"
    ok.write_text("1\t2\n")
    r = subprocess.run([sys.executable, "-m", "posterkg", "--db", str(db), "split", "--scheme", "files",
                        "--train", str(bad), "--valid", str(ok), "--test", str(ok)], capture_output=True, text=True)
    assert r.returncode != 0
    assert "twice" in r.stderr or "not ratings" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "posterkg", "--db", str(db), "split", "--scheme", "files",
                        "--train", str(bad), "--valid", str(ok), "--test", str(tmp_path / "missing.tsv")],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "not found" in r.stderr and "Traceback" not in r.stderr
