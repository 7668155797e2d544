import hashlib
import os

import pytest

from ml_fixtures import write_dat, write_jpeg
from posterkg.errors import InputError
from posterkg.ingest.movielens import ingest_movielens
from posterkg.ingest.posters import movies_with_bad_poster, movies_without_poster, scan_posters
from posterkg.store import open_store


def test_ml1m_posters(ml1m_db, ml1m_dir):
    with open_store(ml1m_db, read_only=True) as s:
        assert s.count("posters", "WHERE status = 'ok'") == 3872
        assert s.count("posters") == 3872
        missing = movies_without_poster(s)
        assert len(missing) == 11
        files = set(os.listdir(ml1m_dir / "posters"))
        assert all(f"{mid}.jpg" not in files for mid, _ in missing)
        assert s.scalar("SELECT count(*) FROM posters WHERE width IS NULL OR height IS NULL OR sha256 IS NULL") == 0
        path, sha = s.execute("SELECT path, sha256 FROM posters WHERE movie_id = 1").fetchone()
        assert hashlib.sha256(open(path, "rb").read()).hexdigest() == sha


def _folder(tmp_path):
    d = tmp_path / "posters"
    d.mkdir()
    write_jpeg(d / "1.jpg", size=(30, 45))
    good = (d / "1.jpg").read_bytes()
    (d / "2.jpg").write_bytes(good[: len(good) // 2])            # truncated JPEG
    (d / "3.jpg").write_bytes(b"\xff\xd8\xff\xe0" + os.urandom(300))  # JPEG magic, garbage body
    (d / "4.jpg").write_bytes(b"")                                # empty
    (d / "5.jpg").write_text("this is not an image")              # not an image at all
    from PIL import Image
    Image.new("RGB", (20, 10), (0, 0, 255)).save(d / "6.png")   # other formats are fine
    (d / "notes.txt").write_text("ignored")
    (d / "abc.jpg").write_bytes(good)                             # not a movie id
    return d


def test_corrupt_images_get_a_status_and_the_scan_goes_on(tmp_path):
    d = _folder(tmp_path)
    with open_store(tmp_path / "db.duckdb") as s:
        summary = scan_posters(s, d)
        rows = {r[0]: r[1:] for r in s.execute(
            "SELECT movie_id, status, width, height, error FROM posters").fetchall()}
        assert rows[1][:3] == ("ok", 30, 45) and rows[1][3] is None
        assert rows[2][0] == "corrupt" and "truncated" in rows[2][3].lower()
        assert rows[3][0] in ("corrupt", "unreadable") and rows[3][3]
        assert rows[4] == ("corrupt", None, None, "empty file")
        assert rows[5][0] == "unreadable" and "not an image" in rows[5][3]
        assert rows[6][:3] == ("ok", 20, 10)
        assert summary.files == 6 and summary.checked == 6
        assert sorted(summary.ignored) == ["abc.jpg", "notes.txt"]
        assert summary.status["ok"] == 2


def test_rescan_is_incremental_and_mirrors_the_folder(tmp_path):
    d = _folder(tmp_path)
    with open_store(tmp_path / "db.duckdb") as s:
        scan_posters(s, d)
        again = scan_posters(s, d)
        assert again.checked == 0 and s.count("posters") == 6
        write_jpeg(d / "2.jpg", size=(11, 17))    # repaired
        os.remove(d / "5.jpg")                     # gone
        third = scan_posters(s, d)
        assert third.checked == 1 and third.removed == 1
        assert s.execute("SELECT status, width, height FROM posters WHERE movie_id = 2").fetchone() == ("ok", 11, 17)
        assert s.count("posters", "WHERE movie_id = 5") == 0
        assert scan_posters(s, d, full=True).checked == 5


def test_movies_without_and_with_bad_posters(tmp_path):
    src = write_dat(tmp_path / "ml")   # movies 1..5
    d = _folder(tmp_path)
    with open_store(tmp_path / "db.duckdb") as s:
        ingest_movielens(s, src)
        assert movies_without_poster(s) == [(1, "Toy Story"), (2, "Jumanji"), (3, "Misérables, Les"),
                                            (4, "Heat"), (5, "Café au Lait")]
        scan_posters(s, d)
        assert movies_without_poster(s) == []
        bad = movies_with_bad_poster(s)
        assert [b[0] for b in bad] == [2, 3, 4, 5]
        os.remove(d / "3.jpg")
        scan_posters(s, d)
        assert movies_without_poster(s) == [(3, "Misérables, Les")]


def test_missing_folder_is_a_clean_error(tmp_path):
    with open_store(tmp_path / "db.duckdb") as s, pytest.raises(InputError, match="does not exist"):
        scan_posters(s, tmp_path / "nope")


def test_poster_paths_are_stored_absolute(tmp_path, monkeypatch):
    """A folder given relative to the working directory must still resolve when a later stage
    (tagging, the HTML report) runs from elsewhere."""
    d = _folder(tmp_path)
    monkeypatch.chdir(d.parent)
    with open_store(tmp_path / "db.duckdb") as s:
        scan_posters(s, d.name)
        paths = [p for (p,) in s.execute("SELECT path FROM posters WHERE status = 'ok'").fetchall()]
    monkeypatch.chdir("/")
    assert paths and all(os.path.isabs(p) and os.path.isfile(p) for p in paths)
