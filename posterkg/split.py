"""Split each user's ratings into train / valid / test: the project's fixed evaluation protocol.

For a user with ``n`` ratings (users with fewer than ``min_ratings`` = 10 are dropped):

* ``n_test  = max(1, floor(n * test))``  and ``n_valid = max(1, floor(n * valid))``
  (a fraction of exactly 0 gives 0);
* ``temporal``: ratings sorted by ``(ts, movie_id)``; the last ``n_test`` go to test, the
  ``n_valid`` before them to valid, the rest to train. No rating of the future leaks into train;
* ``random``: the same counts, but the order is a seeded shuffle: an integer hash of
  (seed, user_id, movie_id) (:func:`shuffle_key`), stable across machines and DuckDB versions.

The floors are computed in exact decimal arithmetic (``0.1`` is not a float there), so
``n = 30, test = 0.1`` gives exactly 3. The result is the ``split`` table (replaced on every
run) and one row in ``split_info``; the same inputs always give the same split.

``coldstart`` splits *movies*, not each user's ratings: the movies rated by the kept users (users
with at least ``min_ratings`` ratings) are ordered by a seeded integer hash of (seed, movie_id)
(:func:`movie_key`, ties by movie id); the first ``max(1, floor(M * test))`` are the test movies,
the next ``max(1, floor(M * valid))`` the valid movies, the rest train. Every rating of a test
movie is in ``test`` (likewise valid), so cold movies have no rating at all in ``train``: a model
can only reach them through their posters, concepts, genres and text. ``split_info.scheme`` is
``coldstart`` and ``valid``/``test`` are then fractions of movies. Evaluate with
:func:`posterkg.evaluation.coldstart.coldstart_eval` (rank the cold movies of the part only).
"""

from __future__ import annotations

import dataclasses
import time

import click

from posterkg.config import Config
from posterkg.errors import ConfigError, InputError
from posterkg.pipeline import Stage
from posterkg.store import Store

COMPONENT = "split"
MIGRATIONS = [
    """CREATE TABLE IF NOT EXISTS split (
        user_id INTEGER, movie_id INTEGER, part VARCHAR, PRIMARY KEY (user_id, movie_id));
    CREATE TABLE IF NOT EXISTS split_info (
        scheme VARCHAR, valid DOUBLE, test DOUBLE, seed INTEGER, min_ratings INTEGER,
        users BIGINT, dropped_users BIGINT, created_at TIMESTAMP DEFAULT current_timestamp);""",
]

SCHEMES = ("temporal", "random", "coldstart")


@dataclasses.dataclass
class SplitConfig:
    """``[split]`` section."""

    scheme: str = "temporal"   # temporal | random | coldstart
    valid: float = 0.1         # fraction of each user's ratings for validation (at least 1); coldstart: of movies
    test: float = 0.1          # fraction for test (at least 1), taken from the end; coldstart: of movies
    seed: int = 0              # used by the random and coldstart schemes
    min_ratings: int = 10      # users with fewer ratings are left out of the split


def ensure_schema(store: Store) -> None:
    store.migrate(COMPONENT, MIGRATIONS)


def _check(scheme: str, valid: float, test: float, min_ratings: int) -> None:
    if scheme not in SCHEMES:
        raise ConfigError(f"split scheme must be one of {', '.join(SCHEMES)}, not {scheme!r}")
    for name, v in (("valid", valid), ("test", test)):
        if not 0 <= v < 1:
            raise ConfigError(f"split {name} must be a fraction in [0, 1), not {v}")
    if valid + test >= 1:
        raise ConfigError(f"split valid + test must be below 1 (got {valid} + {test})")
    if min_ratings < 1:
        raise ConfigError("split min_ratings must be at least 1")


def make_split(store: Store, scheme: str = "temporal", valid: float = 0.1, test: float = 0.1,
               seed: int = 0, *, min_ratings: int = 10) -> dict:
    """Write the ``split`` table; return a summary dict (parts with counts, users, dropped users)."""
    _check(scheme, valid, test, min_ratings)
    if not store.table_exists("ratings") or store.count("ratings") == 0:
        raise InputError("no ratings in the database; run `posterkg ingest movielens` first")
    ensure_schema(store)
    if scheme == "coldstart":
        return _coldstart_split(store, valid, test, seed, min_ratings)
    t0 = time.perf_counter()
    if scheme == "temporal":
        source, order = "ratings", "ts, movie_id"
    else:
        source, order = f"({shuffle_key_sql(seed)})", "shuffle_key, movie_id"

    def n_part(frac: float) -> str:
        # exact decimal arithmetic: the literal is a DECIMAL, not a float
        return "0" if frac == 0 else f"greatest(1, floor(n * {float(frac)!r}::DECIMAL(12,9)))::BIGINT"

    with store.transaction() as con:
        store.clear("split")
        con.execute(f"""
            INSERT INTO split
            WITH r AS (
                SELECT user_id, movie_id,
                       row_number() OVER (PARTITION BY user_id ORDER BY {order}) AS pos,
                       count(*) OVER (PARTITION BY user_id) AS n
                FROM {source}),
            c AS (SELECT *, {n_part(test)} AS n_test, {n_part(valid)} AS n_valid
                  FROM r WHERE n >= {int(min_ratings)})
            SELECT user_id, movie_id,
                   CASE WHEN pos > n - n_test THEN 'test'
                        WHEN pos > n - n_test - n_valid THEN 'valid'
                        ELSE 'train' END AS part
            FROM c ORDER BY user_id, movie_id""")
        users = con.execute("SELECT count(DISTINCT user_id) FROM split").fetchone()[0]
        all_users = con.execute("SELECT count(DISTINCT user_id) FROM ratings").fetchone()[0]
        con.execute("DELETE FROM split_info")
        con.execute("INSERT INTO split_info (scheme, valid, test, seed, min_ratings, users, dropped_users) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [scheme, valid, test, seed, min_ratings, users, all_users - users])
    parts = split_sizes(store)
    return {"scheme": scheme, "valid": valid, "test": test, "seed": seed, "min_ratings": min_ratings,
            "users": int(users), "dropped_users": int(all_users - users), "parts": parts,
            "seconds": time.perf_counter() - t0}


def _n_of(total: int, frac: float) -> int:
    """max(1, floor(total * frac)) in exact decimal arithmetic; 0 for a fraction of 0."""
    from decimal import Decimal

    if frac == 0:
        return 0
    return max(1, int((Decimal(total) * Decimal(repr(float(frac)))).to_integral_value(rounding="ROUND_FLOOR")))


def movie_key(seed: int, movie_id: int) -> int:
    """The coldstart scheme's seeded order of movies (a 32-bit integer hash, like shuffle_key)."""
    return mix32(mix32(mix32(seed & _M32) ^ 0x9E3779B9) ^ (int(movie_id) & _M32))


def _coldstart_split(store: Store, valid: float, test: float, seed: int, min_ratings: int) -> dict:
    import pandas as pd

    t0 = time.perf_counter()
    kept = f"SELECT user_id FROM ratings GROUP BY user_id HAVING count(*) >= {int(min_ratings)}"
    movies = [int(m) for (m,) in store.execute(
        f"SELECT DISTINCT movie_id FROM ratings WHERE user_id IN ({kept}) ORDER BY 1").fetchall()]
    n_test, n_valid = _n_of(len(movies), test), _n_of(len(movies), valid)
    if n_test + n_valid >= len(movies):
        raise InputError(f"coldstart split: {len(movies)} rated movies cannot give {n_test} test + "
                         f"{n_valid} valid movies and leave some for training")
    order = sorted(movies, key=lambda m: (movie_key(seed, m), m))
    parts = ["test"] * n_test + ["valid"] * n_valid + ["train"] * (len(order) - n_test - n_valid)
    frame = pd.DataFrame({"movie_id": pd.array(order, dtype="int32"), "part": parts})
    with store.transaction() as con:
        store.clear("split")
        store.register("_posterkg_movie_parts", frame)
        try:
            con.execute(f"""
                INSERT INTO split
                SELECT r.user_id, r.movie_id, p.part
                FROM ratings r JOIN _posterkg_movie_parts p USING (movie_id)
                WHERE r.user_id IN ({kept})
                ORDER BY r.user_id, r.movie_id""")
        finally:
            con.unregister("_posterkg_movie_parts")
        users = con.execute("SELECT count(DISTINCT user_id) FROM split").fetchone()[0]
        all_users = con.execute("SELECT count(DISTINCT user_id) FROM ratings").fetchone()[0]
        con.execute("DELETE FROM split_info")
        con.execute("INSERT INTO split_info (scheme, valid, test, seed, min_ratings, users, dropped_users) "
                    "VALUES ('coldstart', ?, ?, ?, ?, ?, ?)",
                    [valid, test, seed, min_ratings, users, all_users - users])
    return {"scheme": "coldstart", "valid": valid, "test": test, "seed": seed, "min_ratings": min_ratings,
            "users": int(users), "dropped_users": int(all_users - users), "parts": split_sizes(store),
            "movies": {"train": len(order) - n_test - n_valid, "valid": n_valid, "test": n_test},
            "seconds": time.perf_counter() - t0}


def coldstart_movies(store: Store, part: str = "test") -> list[int]:
    """The movie ids of ``part`` of a coldstart split (sorted)."""
    scheme = store.scalar("SELECT scheme FROM split_info") if store.table_exists("split_info") else None
    if scheme != "coldstart":
        raise InputError(f"the split is {scheme or 'missing'}, not coldstart: run `posterkg split --scheme coldstart`")
    return [int(m) for (m,) in store.execute(
        "SELECT DISTINCT movie_id FROM split WHERE part = ? ORDER BY 1", [part]).fetchall()]


_M32 = 0xFFFFFFFF


def mix32(x: int) -> int:
    """A 32-bit integer hash (the 'lowbias32' mixer); Python twin of the SQL in shuffle_key_sql."""
    x ^= x >> 16
    x = (x * 0x7FEB352D) & _M32
    x ^= x >> 15
    x = (x * 0x846CA68B) & _M32
    x ^= x >> 16
    return x


def shuffle_key(seed: int, user_id: int, movie_id: int) -> int:
    return mix32(mix32(mix32(seed & _M32) ^ user_id) ^ movie_id)


def shuffle_key_sql(seed: int) -> str:
    """ratings plus ``shuffle_key`` = shuffle_key(seed, user_id, movie_id), computed in SQL.

    Integer arithmetic only (UBIGINT, products below 2**64), so the order is the same on every
    machine and DuckDB version, and about as fast as the temporal sort (md5 was 7x slower).
    """
    def mixed(q: str) -> str:
        for step in ("xor(h, h >> 16)", f"(h * {0x7FEB352D}) % 4294967296", "xor(h, h >> 15)",
                     f"(h * {0x846CA68B}) % 4294967296", "xor(h, h >> 16)"):
            q = f"SELECT * REPLACE (({step})::UBIGINT AS h) FROM ({q})"
        return q

    q = f"SELECT user_id, movie_id, ts, xor({mix32(int(seed) & _M32)}::UBIGINT, user_id::UBIGINT) AS h FROM ratings"
    q = mixed(q)
    q = f"SELECT * REPLACE (xor(h, movie_id::UBIGINT) AS h) FROM ({q})"
    q = mixed(q)
    return f"SELECT user_id, movie_id, ts, h AS shuffle_key FROM ({q})"


def split_sizes(store: Store) -> dict[str, int]:
    """{'train': n, 'valid': n, 'test': n} (empty when there is no split)."""
    if not store.table_exists("split"):
        return {}
    got = dict(store.execute("SELECT part, count(*) FROM split GROUP BY 1").fetchall())
    return {p: int(got[p]) for p in ("train", "valid", "test") if p in got}


def describe(summary: dict) -> str:
    parts = ", ".join(f"{v:,} {k}" for k, v in summary["parts"].items())
    movies = ""
    if "movies" in summary:
        movies = " (movies: " + ", ".join(f"{v:,} {k}" for k, v in summary["movies"].items()) + ")"
    if summary["scheme"] == "files":
        return (f"split (files: valid={summary['valid']}, test={summary['test']}): {parts}; "
                f"{summary['users']:,} users, {summary['dropped_users']:,} users of the ratings not in it")
    return (f"split ({summary['scheme']}, valid={summary['valid']}, test={summary['test']}, "
            f"seed={summary['seed']}): {parts}{movies}; {summary['users']:,} users, "
            f"{summary['dropped_users']:,} dropped (< {summary['min_ratings']} ratings)")


# -- pipeline stage ------------------------------------------------------------------------------

def _run(store: Store, config: Config) -> dict:
    cfg = config.section("split", SplitConfig)
    summary = make_split(store, cfg.scheme, cfg.valid, cfg.test, cfg.seed, min_ratings=cfg.min_ratings)
    click.echo(describe(summary))
    return summary


# reads its own output too: a split re-made by hand (`posterkg split --scheme random`) is redone
# from the config by `posterkg run`, and everything after it with it
STAGE = Stage("split", sections=("split",), reads=("ratings", "split"), run=_run)


# -- a split given as files ------------------------------------------------------------------------

def _read_split_file(store: Store, path) -> "object":
    """(user_id, movie_id) rows of a TSV/CSV split file: ``user, item[, rating, timestamp]`` with
    or without a header; RecBole's atomic ``.inter`` headers (``user_id:token``) are understood."""
    from pathlib import Path

    p = Path(path)
    if not p.is_file():
        raise InputError(f"split file not found: {p}")
    first = p.read_text(encoding="utf-8", errors="replace").splitlines()[:1]
    if not first:
        raise InputError(f"{p}: empty split file")
    delim = "\t" if "\t" in first[0] else ","
    cells = [c.strip().split(":")[0].lower() for c in first[0].split(delim)]
    header = not all(c.replace(".", "", 1).isdigit() for c in cells[:2])
    try:
        df = store.con.execute(
            "SELECT * FROM read_csv(?, delim = ?, header = ?, all_varchar = true)",
            [str(p), delim, header]).df()
    except Exception as exc:  # duckdb.Error: a malformed file
        raise InputError(f"{p}: cannot read as {'TSV' if delim == chr(9) else 'CSV'}: "
                         f"{str(exc).splitlines()[0]}") from None
    if df.shape[1] < 2:
        raise InputError(f"{p}: needs at least two columns (user, item)")
    names = [str(c).split(":")[0].lower() for c in df.columns]
    ucol = next((i for i, n in enumerate(names) if n in ("user_id", "userid", "user", "uid")), 0)
    icol = next((i for i, n in enumerate(names) if n in ("item_id", "movie_id", "movieid", "item", "iid")), 1)
    import pandas as pd

    try:
        out = pd.DataFrame({"user_id": pd.to_numeric(df.iloc[:, ucol]).astype("int64"),
                            "movie_id": pd.to_numeric(df.iloc[:, icol]).astype("int64")})
    except (ValueError, TypeError) as exc:
        raise InputError(f"{p}: user and item columns must be integer ids ({exc})") from None
    return out


def import_split(store: Store, train, valid, test) -> dict:
    """Write the ``split`` table from three files (reproduce exactly the split a paper or
    another toolkit used). Every (user, movie) must be a rating of the database; rows that are
    not, and (user, movie) pairs given in two parts, are errors (counted in the message)."""
    import pandas as pd

    if not store.table_exists("ratings") or store.count("ratings") == 0:
        raise InputError("no ratings in the database; run `posterkg ingest movielens` first")
    ensure_schema(store)
    t0 = time.perf_counter()
    frames = []
    for part, path in (("train", train), ("valid", valid), ("test", test)):
        frames.append(_read_split_file(store, path).assign(part=part))
    rows = pd.concat(frames, ignore_index=True)
    dup = rows.duplicated(["user_id", "movie_id"]).sum()
    if dup:
        first = rows[rows.duplicated(["user_id", "movie_id"], keep=False)].iloc[0]
        raise InputError(f"{dup} (user, movie) pairs appear twice in the split files (e.g. user "
                         f"{first.user_id}, movie {first.movie_id})")
    with store.transaction() as con:
        con.register("_posterkg_split_rows", rows)
        try:
            missing = con.execute("SELECT count(*) FROM _posterkg_split_rows s ANTI JOIN ratings r "
                                  "USING (user_id, movie_id)").fetchone()[0]
            if missing:
                raise InputError(f"{missing} rows of the split files are not ratings of this database "
                                 f"(ingest the same data first)")
            store.clear("split")
            con.execute("INSERT INTO split SELECT user_id, movie_id, part FROM _posterkg_split_rows "
                        "ORDER BY user_id, movie_id")
        finally:
            con.unregister("_posterkg_split_rows")
        users = con.execute("SELECT count(DISTINCT user_id) FROM split").fetchone()[0]
        all_users = con.execute("SELECT count(DISTINCT user_id) FROM ratings").fetchone()[0]
        con.execute("DELETE FROM split_info")
        con.execute("INSERT INTO split_info (scheme, valid, test, seed, min_ratings, users, dropped_users) "
                    "VALUES ('files', NULL, NULL, NULL, NULL, ?, ?)", [users, all_users - users])
    return {"scheme": "files", "valid": str(valid), "test": str(test), "seed": None, "min_ratings": None,
            "users": int(users), "dropped_users": int(all_users - users), "parts": split_sizes(store),
            "seconds": time.perf_counter() - t0}
