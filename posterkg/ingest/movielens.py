"""Load a MovieLens release into the core tables with DuckDB's own CSV reader.

Three layouts are recognised from the files present (the folder itself, or its only sub-folder
that matches, e.g. the folder a zip was extracted into):

=========  ===========================================  ==========================================
layout     files                                        format
=========  ===========================================  ==========================================
ml-100k    ``u.data``, ``u.item``, ``u.user``            tab / ``|`` separated, ``u.item`` Latin-1
dat        ``ratings.dat``, ``movies.dat``,              ``::`` separated (ML-1M: Latin-1;
           ``users.dat`` (optional, absent in ML-10M)   ML-10M: UTF-8; detected per file)
csv        ``ratings.csv``, ``movies.csv``,              quoted CSV with a header, UTF-8
           ``links.csv`` (ML-20M/25M/32M/latest)
=========  ===========================================  ==========================================

Tables written (component ``core``): ``movies``, ``users``, ``ratings``, ``links``,
``ingest_errors(file, line_no, line, reason)`` and the log ``ingest_runs``.

Ingest is a *replace*: the core tables end up mirroring the source exactly, so running it twice
neither duplicates nor loses rows. Everything is parsed into temporary staging tables first and
the swap happens in one transaction, so a failed ingest leaves the previous data intact.

Malformed lines are never dropped silently. Lines the CSV reader cannot parse (missing or extra
fields, a value that is not a number) are captured with DuckDB's ``store_rejects`` tables, which
give their line numbers; rows that parse but are invalid (a rating outside 0..5, a duplicate
(user, movie) pair, a rating of an unknown movie) are found with SQL on the staging tables (their
line number is unknown, ``NULL``). All go to ``ingest_errors`` and are counted in the summary.

Hostile bytes are read, not trusted (:func:`_prepare`): a file that is not valid UTF-8 is decoded
as Windows-1252 (a superset of Latin-1's printable range, which is what ML-1M's ``movies.dat``
is; bytes cp1252 leaves undefined fall back to Latin-1), a UTF-8 byte-order mark is dropped (it
would otherwise hide movie 1), and a last line without a newline, the mark of a truncated file,
is not loaded but recorded in ``ingest_errors``. Such a file is read through a cleaned UTF-8
copy in a temporary folder with the same line numbers.
"""

from __future__ import annotations

import codecs
import dataclasses
import shutil
import tempfile
from pathlib import Path
from typing import Any

from posterkg.errors import InputError
from posterkg.store import Store

COMPONENT = "core"
MIGRATIONS = [
    """
    CREATE TABLE IF NOT EXISTS movies (
        movie_id INTEGER PRIMARY KEY, title VARCHAR, year INTEGER, genres VARCHAR[]);
    CREATE TABLE IF NOT EXISTS users (
        user_id INTEGER PRIMARY KEY, gender VARCHAR, age INTEGER, occupation VARCHAR, zip VARCHAR);
    CREATE TABLE IF NOT EXISTS ratings (
        user_id INTEGER, movie_id INTEGER, rating DOUBLE, ts BIGINT, PRIMARY KEY (user_id, movie_id));
    CREATE TABLE IF NOT EXISTS links (
        movie_id INTEGER PRIMARY KEY, imdb_id VARCHAR, tmdb_id INTEGER);
    CREATE TABLE IF NOT EXISTS ingest_errors (
        file VARCHAR, line_no BIGINT, line VARCHAR, reason VARCHAR);
    CREATE TABLE IF NOT EXISTS ingest_runs (
        source VARCHAR, layout VARCHAR, movies BIGINT, users BIGINT, ratings BIGINT,
        links BIGINT, errors BIGINT, seconds DOUBLE, finished_at TIMESTAMP DEFAULT current_timestamp);
    """,
]

# ML-1M codes occupations 0..20 (see its README); ML-100K already uses names.
ML1M_OCCUPATIONS = [
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student",
    "customer service", "doctor/health care", "executive/managerial", "farmer", "homemaker",
    "K-12 student", "lawyer", "programmer", "retired", "sales/marketing", "scientist",
    "self-employed", "technician/engineer", "tradesman/craftsman", "unemployed", "writer",
]
ML100K_GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
    "Thriller", "War", "Western",
]

LAYOUT_FILES = {
    "ml-100k": ("u.data", "u.item", "u.user"),
    "dat": ("ratings.dat", "movies.dat"),
    "csv": ("ratings.csv", "movies.csv"),
}

# A title ends with its year, "(1995)", sometimes a range "(2007-2013)" or "(2007-)" (ML-25M+).
_YEAR_RE = r"\s*\((\d{4})(?:[-–]\d{0,4})?\)\s*$"


def ensure_schema(store: Store) -> None:
    store.migrate(COMPONENT, MIGRATIONS)


@dataclasses.dataclass
class Layout:
    name: str   # 'ml-100k' | 'dat' | 'csv'
    root: Path

    def path(self, name: str) -> Path:
        return self.root / name


@dataclasses.dataclass
class IngestSummary:
    source: str
    layout: str
    counts: dict[str, int]
    errors: int
    first_errors: list[dict[str, Any]]
    seconds: float = 0.0

    def lines(self) -> list[str]:
        out = [f"ingested {self.source} ({self.layout}): "
               + ", ".join(f"{v:,} {k}" for k, v in self.counts.items())
               + f" in {self.seconds:.1f}s"]
        if self.errors:
            out.append(f"{self.errors:,} malformed or invalid line(s) recorded in table "
                       "ingest_errors; first ones:")
            for e in self.first_errors:
                where = f"line {e['line_no']}" if e["line_no"] is not None else "line ?"
                out.append(f"  {Path(e['file']).name}:{where}: {e['reason']}: {e['line']!r}")
        return out


def detect_layout(src: str | Path) -> Layout:
    """Find which MovieLens layout ``src`` holds (or its only matching sub-folder)."""
    root = Path(src)
    if not root.is_dir():
        raise InputError(f"MovieLens source {root} is not a folder")

    def match(d: Path) -> str | None:
        for name, files in LAYOUT_FILES.items():
            if all((d / f).is_file() for f in files):
                return name
        return None

    found = match(root)
    if found:
        return Layout(found, root)
    subs = [(d, match(d)) for d in sorted(root.iterdir()) if d.is_dir()]
    subs = [(d, m) for d, m in subs if m]
    if len(subs) == 1:
        return Layout(subs[0][1], subs[0][0])
    expected = "; ".join(f"{k}: {', '.join(v)}" for k, v in LAYOUT_FILES.items())
    if len(subs) > 1:
        raise InputError(f"{root} holds several MovieLens folders ({', '.join(str(d) for d, _ in subs)}); "
                         "give one of them")
    raise InputError(f"{root} is not a MovieLens folder; expected one of these file sets: {expected}")


def ingest_movielens(store: Store, src_dir: str | Path, *, report: int = 10) -> IngestSummary:
    """Load the MovieLens release in ``src_dir`` into movies/users/ratings/links (replacing them).

    Returns an :class:`IngestSummary`; the first ``report`` errors are in ``first_errors``.
    """
    layout = detect_layout(src_dir)
    ensure_schema(store)
    tmp = Path(tempfile.mkdtemp(prefix="posterkg-ingest-"))
    try:
        return _ingest(store, layout, report, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        for t in _TEMPS:
            store.con.execute(f"DROP TABLE IF EXISTS {t}")


_TEMPS = ("_stg_movies", "_stg_users", "_stg_ratings", "_stg_links", "_stg_movies_ok", "_stg_users_ok",
          "_stg_ratings_ok", "_stg_links_ok", "_stg_movies_raw", "_stg_users_raw", "_stg_movies_n",
          "_stg_users_n", "_pk_errors", "_new_movies", "_new_users", "_new_ratings", "_new_links",
          "_pk_rej", "_pk_rej_scan")


def _ingest(store: Store, layout: Layout, report: int, tmp: Path) -> IngestSummary:
    import time

    t0 = time.perf_counter()
    con = store.con
    errors = _ErrorSink(con, tmp)

    if layout.name == "ml-100k":
        has_users = _stage_100k(con, layout, errors)
    elif layout.name == "dat":
        has_users = _stage_dat(con, layout, errors)
    else:
        has_users = _stage_csv(con, layout, errors)

    _validate(con, layout, has_users, errors)
    n_errors = errors.count()
    for t, f in (("_stg_movies_ok", "movies"), ("_stg_ratings_ok", "ratings")):
        if con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] == 0:
            first = con.execute("SELECT file, line_no, reason FROM _pk_errors ORDER BY line_no LIMIT 3").fetchall()
            raise InputError(f"no valid {f} in {layout.root} ({layout.name} layout); "
                             f"{n_errors:,} bad line(s), first: {first}")

    # the final rows of each table, then in one transaction replace only the tables that differ
    # (a re-run on the same files rewrites nothing: deleting and re-inserting 1M keyed rows is
    # the slow part of a replace)
    con.execute(f"""CREATE OR REPLACE TEMP TABLE _new_movies AS
        SELECT movie_id,
               trim(regexp_replace(raw_title, '{_YEAR_RE}', '')) AS title,
               coalesce(TRY_CAST(regexp_extract(raw_title, '{_YEAR_RE}', 1) AS INTEGER), year_hint) AS year,
               genres
        FROM _stg_movies_ok ORDER BY movie_id""")
    if has_users:
        con.execute("CREATE OR REPLACE TEMP TABLE _new_users AS SELECT * FROM _stg_users_ok ORDER BY user_id")
    else:
        con.execute("""CREATE OR REPLACE TEMP TABLE _new_users AS
            SELECT DISTINCT user_id, NULL::VARCHAR AS gender, NULL::INTEGER AS age,
                   NULL::VARCHAR AS occupation, NULL::VARCHAR AS zip FROM _stg_ratings_ok ORDER BY 1""")
    con.execute("CREATE OR REPLACE TEMP TABLE _new_ratings AS SELECT * FROM _stg_ratings_ok "
                "ORDER BY user_id, ts, movie_id")
    con.execute("DROP TABLE _stg_ratings_ok")
    if layout.name == "csv" and layout.path("links.csv").is_file():
        con.execute("CREATE OR REPLACE TEMP TABLE _new_links AS SELECT * FROM _stg_links_ok ORDER BY movie_id")
    else:
        con.execute("CREATE OR REPLACE TEMP TABLE _new_links AS SELECT * FROM links LIMIT 0")
    with store.transaction():
        for t in ("movies", "users", "ratings", "links"):
            same = con.execute(f"""SELECT (SELECT count(*) FROM {t}) = (SELECT count(*) FROM _new_{t})
                AND NOT EXISTS (SELECT * FROM _new_{t} EXCEPT SELECT * FROM {t})""").fetchone()[0]
            if not same:
                store.clear(t)
                con.execute(f"INSERT INTO {t} SELECT * FROM _new_{t}")
        con.execute("DELETE FROM ingest_errors")
        con.execute("INSERT INTO ingest_errors SELECT * FROM _pk_errors ORDER BY file, line_no NULLS LAST")
        counts = {t: int(con.execute(f"SELECT count(*) FROM {t}").fetchone()[0])
                  for t in ("movies", "users", "ratings", "links")}
        seconds = time.perf_counter() - t0
        con.execute("INSERT INTO ingest_runs (source, layout, movies, users, ratings, links, errors, seconds) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [str(layout.root), layout.name, counts["movies"], counts["users"], counts["ratings"],
                     counts["links"], n_errors, seconds])
    first_errors = [
        {"file": f, "line_no": n, "line": ln, "reason": r}
        for f, n, ln, r in con.execute(
            f"SELECT * FROM ingest_errors ORDER BY file, line_no NULLS LAST LIMIT {int(report)}").fetchall()
    ]
    return IngestSummary(str(layout.root), layout.name, counts, n_errors, first_errors, seconds)


# -- reading -------------------------------------------------------------------------------------

def _lit(s: str) -> str:
    return "'" + str(s).replace("'", "''") + "'"


BOM = codecs.BOM_UTF8
_CHUNK = 1 << 22


def _latin1_fallback(exc: UnicodeDecodeError):
    return exc.object[exc.start:exc.end].decode("latin-1"), exc.end


codecs.register_error("posterkg-latin1", _latin1_fallback)


def _encoding(path: Path) -> str:
    """'utf-8' when the file (after a byte-order mark) is valid UTF-8, else 'cp1252' (ML-1M's
    movies.dat, ML-100K's u.item: Latin-1, of which cp1252 is a superset). Read in chunks."""
    dec = codecs.getincrementaldecoder("utf-8")()
    with open(path, "rb") as f:
        first = True
        while block := f.read(_CHUNK):
            if first and block.startswith(BOM):
                block = block[len(BOM):]
            first = False
            try:
                dec.decode(block)
            except UnicodeDecodeError:
                return "cp1252"
    try:
        dec.decode(b"", final=True)
    except UnicodeDecodeError:
        return "cp1252"
    return "utf-8"


def _prepare(path: Path, errors: "_ErrorSink") -> Path:
    """The file DuckDB should read for ``path``: ``path`` itself when it is clean UTF-8 ending in
    a newline; else a UTF-8 copy without a byte-order mark and without an unterminated last line
    (recorded in ``errors``), same line numbers."""
    enc = _encoding(path)
    with open(path, "rb") as f:
        bom = f.read(len(BOM)) == BOM
        f.seek(0, 2)
        size = f.tell()
        if size:
            f.seek(size - 1)
        terminated = not size or f.read(1) == b"\n"
    if enc == "utf-8" and not bom and terminated:
        return path
    out = errors.tmp / f"{len(list(errors.tmp.iterdir()))}-{path.name}"

    def text(raw: bytes) -> bytes:
        return raw if enc == "utf-8" else raw.decode("cp1252", errors="posterkg-latin1").encode("utf-8")

    n_lines = 0
    pending = b""
    with open(path, "rb") as src, open(out, "wb") as dst:
        first = True
        while block := src.read(_CHUNK):
            if first and block.startswith(BOM):
                block = block[len(BOM):]
            first = False
            buf = pending + block
            cut = buf.rfind(b"\n") + 1
            body, pending = buf[:cut], buf[cut:]
            n_lines += body.count(b"\n")
            dst.write(text(body))
    if pending:
        line = text(pending).decode("utf-8", errors="replace")
        errors.add_row(path, n_lines + 1, line[:500],
                       "last line has no newline (truncated file?); not loaded")
    return out


class _ErrorSink:
    """Bad lines collected in the temp table ``_pk_errors`` by SQL (no per-line Python)."""

    def __init__(self, con, tmp: Path):
        self.con = con
        self.tmp = tmp           # cleaned copies of files (see _prepare)
        con.execute("CREATE OR REPLACE TEMP TABLE _pk_errors "
                    "(file VARCHAR, line_no BIGINT, line VARCHAR, reason VARCHAR)")

    def add(self, file: str | Path, select: str) -> None:
        """``select`` yields (line_no, line, reason)."""
        self.con.execute(f"INSERT INTO _pk_errors SELECT {_lit(file)}, * FROM ({select})")

    def add_row(self, file: str | Path, line_no: int | None, line: str, reason: str) -> None:
        self.con.execute("INSERT INTO _pk_errors VALUES (?, ?, ?, ?)", [str(file), line_no, line, reason])

    def count(self) -> int:
        return int(self.con.execute("SELECT count(*) FROM _pk_errors").fetchone()[0])


def _scan(con, path: Path, table: str, columns: dict[str, str], errors: _ErrorSink, *, sep: str,
          header: bool = False, quoted: bool = False) -> None:
    """read_csv ``path`` (through :func:`_prepare`) into temp table ``table``; unparseable lines
    go to ``errors`` under the original file name."""
    source = _prepare(path, errors)
    cols = ", ".join(f"{_lit(k)}: {_lit(v)}" for k, v in columns.items())
    quote = "quote='\"', escape='\"'" if quoted else "quote='', escape=''"
    con.execute("DROP TABLE IF EXISTS _pk_rej; DROP TABLE IF EXISTS _pk_rej_scan")
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE {table} AS
        SELECT * FROM read_csv({_lit(source)}, sep={_lit(sep)}, header={str(header).lower()},
            columns={{{cols}}}, auto_detect=false, {quote}, encoding='utf-8',
            store_rejects=true, rejects_table='_pk_rej', rejects_scan='_pk_rej_scan')""")
    errors.add(path, """
        SELECT line::BIGINT, any_value(csv_line), string_agg(DISTINCT
               CASE WHEN error_type = 'CAST' THEN 'bad value in column ' || column_name
                    ELSE lower(CAST(error_type AS VARCHAR)) END, '; ' ORDER BY 1)
        FROM _pk_rej GROUP BY line ORDER BY line""")
    con.execute("DROP TABLE IF EXISTS _pk_rej; DROP TABLE IF EXISTS _pk_rej_scan")


def _check_header(path: Path, expected: list[str]) -> None:
    with open(path, encoding="utf-8", errors="replace") as f:
        first = f.readline().strip().lstrip("\ufeff")
    got = [c.strip().strip('"') for c in first.split(",")]
    if got[: len(expected)] != expected:
        raise InputError(f"{path}: header is {first!r}, expected {','.join(expected)}")


_RATING_COLS = {"user_id": "INTEGER", "movie_id": "INTEGER", "rating": "DOUBLE", "ts": "BIGINT"}


def _stage_movies(con, path: Path, errors: _ErrorSink, **scan: Any) -> None:
    """Stage a ``movieId, title, genres`` file (ML-1M ``.dat`` or ML-20M+ ``.csv``) as
    ``_stg_movies`` with genres split on ``|`` (``(no genres listed)`` = none)."""
    _scan(con, path, "_stg_movies_raw",
          {"movie_id": "INTEGER", "raw_title": "VARCHAR", "genres": "VARCHAR"}, errors,
          **scan)
    con.execute("""CREATE OR REPLACE TEMP TABLE _stg_movies AS
        SELECT movie_id, raw_title, NULL::INTEGER AS year_hint,
               CASE WHEN genres IS NULL OR trim(genres) IN ('', '(no genres listed)') THEN []::VARCHAR[]
                    ELSE string_split(trim(genres), '|') END AS genres
        FROM _stg_movies_raw""")
    con.execute("DROP TABLE _stg_movies_raw")


def _stage_dat(con, layout: Layout, errors: _ErrorSink) -> bool:
    _stage_movies(con, layout.path("movies.dat"), errors, sep="::")
    _scan(con, layout.path("ratings.dat"), "_stg_ratings", _RATING_COLS, errors, sep="::")
    users = layout.path("users.dat")
    if not users.is_file():
        return False
    _scan(con, users, "_stg_users_raw",
          {"user_id": "INTEGER", "gender": "VARCHAR", "age": "INTEGER", "occupation": "VARCHAR",
           "zip": "VARCHAR"}, errors, sep="::")
    occ = "[" + ", ".join(_lit(o) for o in ML1M_OCCUPATIONS) + "]"
    con.execute(f"""CREATE OR REPLACE TEMP TABLE _stg_users AS
        SELECT user_id, gender, age,
               coalesce(list_extract({occ}, TRY_CAST(occupation AS INTEGER) + 1), occupation) AS occupation,
               zip
        FROM _stg_users_raw""")
    con.execute("DROP TABLE _stg_users_raw")
    return True


def _stage_100k(con, layout: Layout, errors: _ErrorSink) -> bool:
    genre_file = layout.path("u.genre")
    genres = ML100K_GENRES
    if genre_file.is_file():
        names = [ln.split("|")[0] for ln in genre_file.read_text(encoding="latin-1").splitlines() if "|" in ln]
        if names:
            genres = names
    item = layout.path("u.item")
    cols = {"movie_id": "INTEGER", "raw_title": "VARCHAR", "release_date": "VARCHAR",
            "video_date": "VARCHAR", "imdb_url": "VARCHAR"}
    cols.update({f"g{i}": "INTEGER" for i in range(len(genres))})
    _scan(con, item, "_stg_movies_raw", cols, errors, sep="|")
    flags = ", ".join(f"CASE WHEN g{i} = 1 THEN {_lit(g)} END" for i, g in enumerate(genres) if g != "unknown")
    con.execute(f"""CREATE OR REPLACE TEMP TABLE _stg_movies AS
        SELECT movie_id, raw_title,
               TRY_CAST(right(trim(release_date), 4) AS INTEGER) AS year_hint,
               [x FOR x IN [{flags}] IF x IS NOT NULL] AS genres
        FROM _stg_movies_raw""")
    con.execute("DROP TABLE _stg_movies_raw")
    _scan(con, layout.path("u.data"), "_stg_ratings", _RATING_COLS, errors, sep="\t")
    users = layout.path("u.user")
    _scan(con, users, "_stg_users_raw",
          {"user_id": "INTEGER", "age": "INTEGER", "gender": "VARCHAR", "occupation": "VARCHAR",
           "zip": "VARCHAR"}, errors, sep="|")
    con.execute("""CREATE OR REPLACE TEMP TABLE _stg_users AS
        SELECT user_id, gender, age, occupation, zip FROM _stg_users_raw""")
    con.execute("DROP TABLE _stg_users_raw")
    return True


def _stage_csv(con, layout: Layout, errors: _ErrorSink) -> bool:
    movies = layout.path("movies.csv")
    _check_header(movies, ["movieId", "title", "genres"])
    _stage_movies(con, movies, errors, sep=",", header=True, quoted=True)
    ratings = layout.path("ratings.csv")
    _check_header(ratings, ["userId", "movieId", "rating", "timestamp"])
    _scan(con, ratings, "_stg_ratings", _RATING_COLS, errors, sep=",", header=True, quoted=True)
    links = layout.path("links.csv")
    if links.is_file():
        _check_header(links, ["movieId", "imdbId", "tmdbId"])
        _scan(con, links, "_stg_links", {"movie_id": "INTEGER", "imdb_id": "VARCHAR", "tmdb_id": "INTEGER"},
              errors, sep=",", header=True, quoted=True)
    return False


# -- validation ----------------------------------------------------------------------------------

def _validate(con, layout: Layout, has_users: bool, errors: _ErrorSink) -> None:
    """Split each staging table into ``*_ok`` rows and recorded errors (line number unknown)."""
    files = {
        "ml-100k": ("u.item", "u.user", "u.data", None),
        "dat": ("movies.dat", "users.dat", "ratings.dat", None),
        "csv": ("movies.csv", None, "ratings.csv", "links.csv"),
    }[layout.name]
    movies_f, users_f, ratings_f, links_f = (str(layout.path(f)) if f else None for f in files)
    sep = {"ml-100k": "\t", "dat": "::", "csv": ","}[layout.name]

    def bad(sql: str, file: str) -> None:
        errors.add(file, f"SELECT NULL::BIGINT, * FROM ({sql})")

    # movies: id present, first occurrence of an id kept
    con.execute("""CREATE OR REPLACE TEMP TABLE _stg_movies_n AS
        SELECT *, row_number() OVER () AS _n FROM _stg_movies""")
    bad("""SELECT concat_ws(' | ', movie_id, raw_title),
                  CASE WHEN movie_id IS NULL THEN 'missing movie id' ELSE 'duplicate movie id (first kept)' END
           FROM (SELECT *, row_number() OVER (PARTITION BY movie_id ORDER BY _n) AS k FROM _stg_movies_n)
           WHERE movie_id IS NULL OR k > 1 ORDER BY _n""", movies_f)
    con.execute("""CREATE OR REPLACE TEMP TABLE _stg_movies_ok AS
        SELECT movie_id, raw_title, year_hint, genres FROM _stg_movies_n
        WHERE movie_id IS NOT NULL
        QUALIFY row_number() OVER (PARTITION BY movie_id ORDER BY _n) = 1""")
    con.execute("DROP TABLE _stg_movies_n")

    if has_users:
        con.execute("""CREATE OR REPLACE TEMP TABLE _stg_users_n AS
            SELECT *, row_number() OVER () AS _n FROM _stg_users""")
        bad("""SELECT concat_ws(' | ', user_id, gender, age, occupation, zip),
                      CASE WHEN user_id IS NULL THEN 'missing user id' ELSE 'duplicate user id (first kept)' END
               FROM (SELECT *, row_number() OVER (PARTITION BY user_id ORDER BY _n) AS k FROM _stg_users_n)
               WHERE user_id IS NULL OR k > 1 ORDER BY _n""", users_f)
        con.execute("""CREATE OR REPLACE TEMP TABLE _stg_users_ok AS
            SELECT user_id, gender, age, occupation, zip FROM _stg_users_n
            WHERE user_id IS NOT NULL
            QUALIFY row_number() OVER (PARTITION BY user_id ORDER BY _n) = 1""")
        con.execute("DROP TABLE _stg_users_n")
        user_check = "OR r.user_id NOT IN (SELECT user_id FROM _stg_users_ok)"
        user_reason = "WHEN r.user_id NOT IN (SELECT user_id FROM _stg_users_ok) THEN 'unknown user id'"
    else:
        user_check = user_reason = ""

    # ratings: complete, in range, known movie (and user); then one row per (user, movie)
    invalid = f"""(r.user_id IS NULL OR r.movie_id IS NULL OR r.rating IS NULL OR r.ts IS NULL
                  OR NOT (r.rating BETWEEN 0 AND 5)
                  OR r.movie_id NOT IN (SELECT movie_id FROM _stg_movies_ok) {user_check})"""
    bad(f"""SELECT concat_ws({_lit(sep)}, r.user_id, r.movie_id, r.rating, r.ts),
                   CASE WHEN r.user_id IS NULL OR r.movie_id IS NULL OR r.rating IS NULL OR r.ts IS NULL
                             THEN 'missing value'
                        WHEN NOT (r.rating BETWEEN 0 AND 5) THEN 'rating out of range 0..5'
                        WHEN r.movie_id NOT IN (SELECT movie_id FROM _stg_movies_ok) THEN 'unknown movie id'
                        {user_reason} END
            FROM _stg_ratings r WHERE {invalid}""", ratings_f)
    con.execute(f"CREATE OR REPLACE TEMP TABLE _stg_ratings_ok AS SELECT * FROM _stg_ratings r WHERE NOT {invalid}")
    con.execute("DROP TABLE _stg_ratings")   # keep at most two copies of the ratings in memory
    dups = con.execute("""SELECT count(*) FROM (SELECT 1 FROM _stg_ratings_ok
                          GROUP BY user_id, movie_id HAVING count(*) > 1)""").fetchone()[0]
    if dups:
        order = "ORDER BY ts DESC, rating DESC"
        bad(f"""SELECT concat_ws({_lit(sep)}, user_id, movie_id, rating, ts),
                       'duplicate (user, movie) rating; the latest is kept'
                FROM _stg_ratings_ok
                QUALIFY row_number() OVER (PARTITION BY user_id, movie_id {order}) > 1""", ratings_f)
        con.execute(f"""CREATE OR REPLACE TEMP TABLE _stg_ratings_ok AS SELECT * FROM _stg_ratings_ok
                       QUALIFY row_number() OVER (PARTITION BY user_id, movie_id {order}) = 1""")

    if links_f and layout.path("links.csv").is_file():
        bad("""SELECT concat_ws(',', movie_id, imdb_id, tmdb_id),
                      CASE WHEN movie_id IS NULL THEN 'missing movie id'
                           WHEN movie_id NOT IN (SELECT movie_id FROM _stg_movies_ok) THEN 'unknown movie id'
                           ELSE 'duplicate movie id (first kept)' END
               FROM (SELECT *, row_number() OVER (PARTITION BY movie_id) AS k FROM _stg_links)
               WHERE movie_id IS NULL OR k > 1 OR movie_id NOT IN (SELECT movie_id FROM _stg_movies_ok)""",
            links_f)
        con.execute("""CREATE OR REPLACE TEMP TABLE _stg_links_ok AS
            SELECT movie_id, imdb_id, tmdb_id FROM _stg_links
            WHERE movie_id IN (SELECT movie_id FROM _stg_movies_ok)
            QUALIFY row_number() OVER (PARTITION BY movie_id) = 1""")

