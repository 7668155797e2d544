import hashlib
import io
import zipfile

import pytest
from click.testing import CliRunner

from http_fixtures import send_file, serve
from ml_fixtures import write_dat, write_jpeg
from posterkg.cli import cli
from posterkg.errors import PosterkgError
from posterkg.store import open_store


def _invoke(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=True)
    if result.exception and not isinstance(result.exception, (SystemExit, PosterkgError)):
        raise result.exception
    return result


@pytest.fixture
def fixture_db(tmp_path):
    """A small database made through the CLI: 5 movies (one truncated ratings line), 3 posters
    (one of them corrupt), a temporal split."""
    src = write_dat(tmp_path / "ml", extra_ratings="".join(
        f"{u}::{m}::4::{978400000 + u * 10 + m}\n" for u in (1, 2) for m in (1, 2, 3, 4, 5)
        if (u, m) not in {(1, 1), (1, 2), (1, 3), (1, 5), (2, 1), (2, 4)}) + "3::2\n")
    posters = tmp_path / "posters"
    posters.mkdir()
    write_jpeg(posters / "1.jpg")
    write_jpeg(posters / "3.jpg")
    (posters / "4.jpg").write_bytes(b"\xff\xd8broken")
    db = tmp_path / "t.duckdb"
    r = _invoke("--db", db, "ingest", "movielens", src, "--posters", posters)
    assert r.exit_code == 0, r.output
    assert "malformed or invalid line(s)" in r.output and "ratings.dat:line 14: missing columns: '3::2'" in r.output
    assert "3 files (1 corrupt, 2 ok)" in r.output
    return db


def test_ingest_split_info(fixture_db):
    r = _invoke("split", "--db", fixture_db, "--min-ratings", "3", "--valid", "0.2", "--test", "0.2")
    assert r.exit_code == 0, r.output
    assert "split (temporal, valid=0.2, test=0.2, seed=0)" in r.output
    r = _invoke("--db", fixture_db, "info")
    assert r.exit_code == 0, r.output
    out = r.output
    for table, n in (("movies", 5), ("users", 3), ("ratings", 13), ("posters", 3), ("split", 13),
                     ("ingest_errors", 1)):
        assert any(line.split() == [table, str(n)] for line in out.splitlines()), (table, out)
    assert "poster coverage of 5 movies" in out
    assert any(line.split()[:2] == ["ok", "2"] and line.endswith("40.0%") for line in out.splitlines())
    assert "2 movie(s) without a poster:" in out
    assert "Jumanji" in out and "Café au Lait" in out          # movies 2 and 5 have no file
    assert "1 movie(s) with an unusable poster:" in out and "Heat" in out
    assert "split temporal (valid=0.2, test=0.2, seed=0)" in out
    with open_store(fixture_db, read_only=True) as s:
        parts = dict(s.execute("SELECT part, count(*) FROM split GROUP BY 1").fetchall())
    for part, n in parts.items():
        assert any(line.split()[:2] == [part, str(n)] for line in out.splitlines())


def test_info_on_real_data(ml1m_db):
    r = _invoke("--db", ml1m_db, "info", "--missing", "20")
    assert r.exit_code == 0, r.output
    assert "11 movie(s) without a poster:" in r.output
    assert any(line.split()[:2] == ["ok", "3,872"] for line in r.output.splitlines())
    assert any(line.split() == ["ratings", "487,650"] for line in r.output.splitlines())
    assert "Costa Brava" in r.output


def test_clean_errors(tmp_path):
    r = _invoke("--db", tmp_path / "none.duckdb", "info")
    assert isinstance(r.exception, PosterkgError) and "does not exist" in str(r.exception)
    r = _invoke("--db", tmp_path / "x.duckdb", "ingest", "movielens", tmp_path)
    assert isinstance(r.exception, PosterkgError) and "not a MovieLens folder" in str(r.exception)
    r = _invoke("--db", tmp_path / "x.duckdb", "posters", "fetch", "--dir", tmp_path / "p", "--url-template", "x")
    assert isinstance(r.exception, PosterkgError) and "ingest movielens" in str(r.exception)


def test_help_texts_teach():
    for cmd in (["ingest", "movielens"], ["download"], ["posters", "fetch"], ["posters", "scan"],
                ["split"], ["info"]):
        r = _invoke(*cmd, "--help")
        assert r.exit_code == 0 and "Example" in r.output, cmd


def test_download_command(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        src = write_dat(tmp_path / "src")
        for p in src.iterdir():
            zf.write(p, f"ml-1m/{p.name}")
    data = buf.getvalue()
    with serve(lambda h: send_file(h, data)) as url:
        r = _invoke("download", "ml-1m", "--dir", tmp_path / "dl", "--base-url", url,
                    "--md5", hashlib.md5(data).hexdigest())
    assert r.exit_code == 0, r.output
    assert "matches the checksum given with --md5" in r.output
    assert (tmp_path / "dl" / "ml-1m" / "ratings.dat").is_file()
    r = _invoke("--db", tmp_path / "d.duckdb", "ingest", "movielens", tmp_path / "dl")
    assert r.exit_code == 0 and "5 movies" in r.output


def test_run_until_split_skips_unchanged_stages(tmp_path, monkeypatch):
    src = write_dat(tmp_path / "ml")
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'db = "{tmp_path / "run.duckdb"}"\n[ingest]\nsource = "{src}"\n'
                   '[split]\nscheme = "random"\nmin_ratings = 2\n')
    r = _invoke("run", "--config", cfg, "--until", "split")
    assert r.exit_code == 0, r.output
    assert "== ingest" in r.output and "== split" in r.output
    r = _invoke("run", "--config", cfg, "--until", "split")
    assert r.exit_code == 0 and "== ingest" not in r.output
    assert [line.split()[:2] for line in r.output.splitlines()[-2:]] == [["ingest", "skipped"], ["split", "skipped"]]
    # a changed source file re-runs ingest and everything after it
    with open(src / "ratings.dat", "a") as f:
        f.write("2::2::3::978300001\n")
    r = _invoke("run", "--config", cfg, "--until", "split")
    assert "== ingest" in r.output and "== split" in r.output
    with open_store(tmp_path / "run.duckdb", read_only=True) as s:
        assert s.count("ratings") == 10 and s.count("split") > 0
