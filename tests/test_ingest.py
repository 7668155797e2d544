import pytest

from ml_fixtures import MOVIES, RATINGS, write_100k, write_csv, write_dat
from posterkg.errors import InputError
from posterkg.ingest.movielens import detect_layout, ingest_movielens
from posterkg.store import open_store


# -- real data (../shared/data/ml-1m) ------------------------------------------------------------

def test_ml1m_counts_titles_and_latin1(ml1m_db, ml1m_dir):
    with open_store(ml1m_db, read_only=True) as s:
        assert s.count("movies") == 3883
        assert s.count("users") == 6040
        assert s.count("ratings") == 487650
        assert s.count("ingest_errors") == 0
        assert s.execute("SELECT title, year, genres FROM movies WHERE movie_id = 1").fetchone() == (
            "Toy Story", 1995, ["Animation", "Children's", "Comedy"])
        # Latin-1 titles decoded, not mojibake
        assert s.scalar("SELECT title FROM movies WHERE movie_id = 73") == "Misérables, Les"
        assert s.scalar("SELECT title FROM movies WHERE movie_id = 570") == "Slingshot, The (Kådisbellan )"
        assert s.scalar("SELECT count(*) FROM movies WHERE title LIKE '%Ã%'") == 0
        assert s.scalar("SELECT count(*) FROM movies WHERE year IS NULL") == 0
        assert s.execute("SELECT gender, age, occupation, zip FROM users WHERE user_id = 1").fetchone() == (
            "F", 1, "K-12 student", "48067")
        # every rating of the file is there, with its values (compare with an independent read)
        first = (ml1m_dir / "ratings.dat").read_text().splitlines()[0].split("::")
        assert s.execute("SELECT rating, ts FROM ratings WHERE user_id = ? AND movie_id = ?",
                         [int(first[0]), int(first[1])]).fetchone() == (float(first[2]), int(first[3]))
        assert s.scalar("SELECT min(rating) FROM ratings") == 1.0
        assert s.scalar("SELECT max(rating) FROM ratings") == 5.0


@pytest.mark.slow
def test_ml1m_second_ingest_neither_duplicates_nor_loses(ml1m_db_copy, ml1m_dir):
    q = "SELECT count(*), sum(rating), sum(ts), sum(user_id * 7 + movie_id) FROM ratings"
    with open_store(ml1m_db_copy) as s:
        before = s.execute(q).fetchone()
        summary = ingest_movielens(s, ml1m_dir)
        assert summary.counts["ratings"] == 487650 and summary.errors == 0
        assert s.execute(q).fetchone() == before
        assert s.count("movies") == 3883 and s.count("users") == 6040
        assert s.count("ingest_runs") == 2


# -- layouts (fixtures written here) -------------------------------------------------------------

def test_detect_layouts(tmp_path):
    assert detect_layout(write_dat(tmp_path / "a")).name == "dat"
    assert detect_layout(write_100k(tmp_path / "b")).name == "ml-100k"
    assert detect_layout(write_csv(tmp_path / "c")).name == "csv"
    # a folder holding exactly one release (e.g. where a zip was extracted)
    write_dat(tmp_path / "wrap" / "ml-1m")
    lay = detect_layout(tmp_path / "wrap")
    assert lay.name == "dat" and lay.root.name == "ml-1m"
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="not a MovieLens folder"):
        detect_layout(tmp_path / "empty")
    with pytest.raises(InputError, match="not a folder"):
        detect_layout(tmp_path / "nope")


def _titles(s):
    return dict(s.execute("SELECT movie_id, title FROM movies").fetchall())


def test_dat_layout(tmp_path):
    src = write_dat(tmp_path / "ml")
    with open_store(tmp_path / "db.duckdb") as s:
        summary = ingest_movielens(s, src)
        assert summary.layout == "dat" and summary.errors == 0
        assert summary.counts == {"movies": 5, "users": 3, "ratings": len(RATINGS), "links": 0}
        assert _titles(s)[3] == "Misérables, Les" and _titles(s)[5] == "Café au Lait"
        assert s.execute("SELECT year, genres FROM movies WHERE movie_id = 4").fetchone() == (
            1995, ["Action", "Crime", "Thriller"])
        assert s.execute("SELECT occupation FROM users WHERE user_id = 2").fetchone() == ("self-employed",)
        assert sorted(s.execute("SELECT user_id, movie_id, rating::INT, ts FROM ratings").fetchall()) == sorted(RATINGS)


def test_dat_layout_without_users_file(tmp_path):
    """ML-10M has no users.dat: users come from the ratings, demographics NULL."""
    src = write_dat(tmp_path / "ml", users=False)
    with open_store(tmp_path / "db.duckdb") as s:
        ingest_movielens(s, src)
        assert s.execute("SELECT user_id, gender FROM users ORDER BY 1").fetchall() == [
            (1, None), (2, None), (3, None)]


def test_100k_layout(tmp_path):
    src = write_100k(tmp_path / "ml-100k")
    with open_store(tmp_path / "db.duckdb") as s:
        summary = ingest_movielens(s, src)
        assert summary.layout == "ml-100k" and summary.errors == 0
        assert summary.counts["movies"] == len(MOVIES) + 1
        assert summary.counts["ratings"] == len(RATINGS)
        assert _titles(s)[3] == "Misérables, Les"
        assert s.execute("SELECT title, year, genres FROM movies WHERE movie_id = 1").fetchone() == (
            "Toy Story", 1995, ["Animation", "Children's", "Comedy"])
        # no year in the title: taken from the release date; the 'unknown' genre flag is no genre
        assert s.execute("SELECT title, year, genres FROM movies WHERE movie_id = 6").fetchone() == (
            "Untitled", 1997, [])
        assert s.execute("SELECT gender, age, occupation, zip FROM users WHERE user_id = 2").fetchone() == (
            "M", 56, "writer", "70072")


def test_csv_layout_with_links(tmp_path):
    src = write_csv(tmp_path / "ml-25m")
    with open_store(tmp_path / "db.duckdb") as s:
        summary = ingest_movielens(s, src)
        assert summary.layout == "csv" and summary.errors == 0
        assert summary.counts == {"movies": 7, "users": 3, "ratings": len(RATINGS), "links": 4}
        t = _titles(s)
        assert t[3] == "Misérables, Les" and t[6] == "Babylon 5" and t[7] == "Fawlty Towers"
        assert s.execute("SELECT year, genres FROM movies WHERE movie_id = 6").fetchone() == (None, [])
        assert s.scalar("SELECT year FROM movies WHERE movie_id = 7") == 1975
        assert s.execute("SELECT * FROM links ORDER BY 1").fetchall() == [
            (1, "0114709", 862), (2, "0113497", 8844), (3, "0113828", None), (6, "0105946", 1234)]
        assert s.scalar("SELECT rating FROM ratings WHERE user_id = 2 AND movie_id = 4") == 4.5
        assert s.count("users") == len({u for u, *_ in RATINGS})


def test_csv_wrong_header_is_a_clean_error_and_keeps_previous_data(tmp_path):
    good = write_dat(tmp_path / "good")
    bad = write_csv(tmp_path / "bad")
    (bad / "ratings.csv").write_text("user,movie,stars,when\n1,1,5,1\n")
    with open_store(tmp_path / "db.duckdb") as s:
        ingest_movielens(s, good)
        with pytest.raises(InputError, match="header"):
            ingest_movielens(s, bad)
        assert s.count("ratings") == len(RATINGS) and s.count("movies") == 5


def test_idempotent_on_fixture(tmp_path):
    src = write_100k(tmp_path / "ml")
    with open_store(tmp_path / "db.duckdb") as s:
        ingest_movielens(s, src)
        snap = {t: sorted(s.execute(f"SELECT * FROM {t}").fetchall(), key=repr)
                for t in ("movies", "users", "ratings", "links")}
        ingest_movielens(s, src)
        assert {t: sorted(s.execute(f"SELECT * FROM {t}").fetchall(), key=repr)
                for t in ("movies", "users", "ratings", "links")} == snap
        # same number of rows, one value changed: the table is replaced, not kept
        data = (src / "u.data").read_text().replace("1\t1\t5\t", "1\t1\t2\t")
        (src / "u.data").write_text(data)
        ingest_movielens(s, src)
        assert s.scalar("SELECT rating FROM ratings WHERE user_id = 1 AND movie_id = 1") == 2.0
        assert s.count("ratings") == len(snap["ratings"])


def test_malformed_lines_are_counted_reported_and_recorded(tmp_path):
    n_good = len(RATINGS)
    extra = ("1::4::3::978300999\n"        # good (line n+1)
             "2::2::notanumber::97830\n"   # bad value (n+2)
             "2::3\n"                      # truncated (n+3)
             "2::3::4::1::9\n"             # too many fields (n+4)
             "3::1::7::978300000\n"        # rating out of range
             "3::99::4::978300000\n"       # unknown movie
             "1::1::2::1\n"                # duplicate of (1, 1), older: dropped
             "3::2::4::9783")              # truncated last line without newline: flagged, not loaded
    src = write_dat(tmp_path / "ml", extra_ratings=extra)
    with open_store(tmp_path / "db.duckdb") as s:
        summary = ingest_movielens(s, src, report=3)
        assert summary.errors == 7
        assert summary.counts["ratings"] == n_good + 1
        located = [(e["line_no"], e["reason"]) for e in summary.first_errors]
        assert located == [(n_good + 2, "bad value in column rating"), (n_good + 3, "missing columns"),
                           (n_good + 4, "too many columns")]
        rows = s.execute("SELECT line_no, line, reason FROM ingest_errors ORDER BY line_no NULLS LAST, reason").fetchall()
        assert len(rows) == 7
        assert rows[1] == (n_good + 3, "2::3", "missing columns")
        assert rows[3] == (n_good + 8, "3::2::4::9783", "last line has no newline (truncated file?); not loaded")
        assert s.scalar("SELECT count(*) FROM ratings WHERE user_id = 3 AND movie_id = 2") == 0
        reasons = {r for _, _, r in rows[4:]}
        assert reasons == {"rating out of range 0..5", "unknown movie id",
                           "duplicate (user, movie) rating; the latest is kept"}
        assert all(f.endswith("ratings.dat") for (f,) in s.execute("SELECT file FROM ingest_errors").fetchall())
        # the good (1, 1) rating survives the older duplicate
        assert s.scalar("SELECT rating FROM ratings WHERE user_id = 1 AND movie_id = 1") == 5.0
        assert "line" in "\n".join(summary.lines())
        # a clean re-ingest clears the error table
        write_dat(tmp_path / "ml")
        assert ingest_movielens(s, src).errors == 0
        assert s.count("ingest_errors") == 0


def test_a_file_in_the_wrong_format_is_an_error_not_an_empty_table(tmp_path):
    src = write_dat(tmp_path / "ml")
    (src / "ratings.dat").write_text("".join(f"{u},{m},{r},{t}\n" for u, m, r, t in RATINGS))
    with open_store(tmp_path / "db.duckdb") as s, pytest.raises(InputError, match="no valid ratings"):
        ingest_movielens(s, src)
