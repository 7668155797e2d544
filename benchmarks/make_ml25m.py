"""Write a MovieLens-25M-size data set in the exact ML-25M CSV layout (for benchmarks/scale.py).

    python benchmarks/make_ml25m.py --out /work/cache/ml25m [--ratings 25000095] [--posters 62423]

Files (the layout and header lines of GroupLens' ml-25m.zip):

* ``ratings.csv``  ``userId,movieId,rating,timestamp``: half stars 0.5-5.0 written as ``4.0``,
  sorted by (userId, movieId) like the original; one rating per (user, movie);
* ``movies.csv``   ``movieId,title,genres``: ``Title Words (1994)``, quoted when it has a comma,
  genres ``A|B`` or ``(no genres listed)``; movie ids sparse in 1..209171 like ML-25M's;
* ``links.csv``    ``movieId,imdbId,tmdbId``: 7-digit zero-padded imdbId, some tmdbId empty;
* ``tags.csv``     ``userId,movieId,tag,timestamp`` (a tenth of ML-25M's 1.09M tag lines);
* ``posters/{movieId}.jpg`` small (46x69) drawn posters for the first ``--posters`` movies.

Shape (defaults are ML-25M's counts: 25,000,095 ratings, 162,541 users, 62,423 movies):

* movie popularity: Zipf, p(rank r) ~ (r + 10)^-1.05 over a random permutation of the movies;
  a user draws 75% of their movies by that global popularity and 25% from the same Zipf inside
  their favourite genre;
* user activity: every user has >= 20 ratings (as in ML-25M); counts are lognormal, rescaled to
  the requested total, capped at 10,000 (ML-25M's heaviest user has 32,202; a Zipf tail makes
  such users very expensive to draw without repeats, and only a handful exist);
* ratings: user bias + movie bias + noise, mapped through ML-25M's published marginal of the ten
  half-star values (4.0 26.6%, 3.0 19.6%, 5.0 14.5%, 3.5 12.6% ...), so the marginal is exact;
* timestamps: each user is active over a lognormal span that starts between 1996 and 2019;
  ratings are spread uniformly inside it.

Vectorised numpy throughout (the only Python loops run over the 20 genres and over at most a few
top-up rounds); CSVs are written by DuckDB's parallel COPY from Arrow tables. About 2-3 minutes
for 25M ratings on 2 cores, plus the posters (one small JPEG each, Pillow).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

N_RATINGS, N_USERS, N_MOVIES, MAX_MOVIE_ID = 25_000_095, 162_541, 62_423, 209_171
GENRES = ["Action", "Adventure", "Animation", "Children", "Comedy", "Crime", "Documentary", "Drama",
          "Fantasy", "Film-Noir", "Horror", "IMAX", "Musical", "Mystery", "Romance", "Sci-Fi",
          "Thriller", "War", "Western"]
# share of each genre as a movie's first genre (roughly ML-25M's: drama and comedy dominate)
GENRE_W = np.array([7, 3, 2, 2, 16, 4, 5, 20, 2, 0.3, 6, 0.2, 1, 2, 6, 2, 6, 1, 1], dtype=float)
STARS = np.arange(1, 11) / 2.0                         # 0.5 .. 5.0
# ML-25M's marginal of the ten half-star values (fractions of all ratings)
STAR_P = np.array([1.57, 3.20, 1.60, 6.58, 5.06, 19.6, 12.6, 26.6, 8.50, 14.5])
WORDS = ("Night Day River Glass Storm Summer Echo Silver Harbor Winter Garden Shadow Signal Paper "
         "Crown Desert Orbit Velvet Iron Love War Last First Man Woman Girl Boy House City Road "
         "Star Dark Blue Red Black White Time Dead Life Secret Story King Queen Return Rise Fall "
         "Café Señor Amélie Léon").split()
T_START, T_END = 820_454_400, 1_574_327_703          # 1996-01-01 .. ML-25M's last timestamp


def _zipf_p(n: int, a: float = 1.05, shift: float = 10.0) -> np.ndarray:
    p = (np.arange(1, n + 1) + shift) ** -a
    return p / p.sum()


def make_movies(rng: np.random.Generator, n_movies: int):
    ids = np.sort(rng.choice(np.arange(1, MAX_MOVIE_ID + 1), size=n_movies, replace=False)).astype(np.int32)
    # the lowest ids are dense in ML-25M (the old ML-1M catalogue): force 1..min(3952, n) in
    dense = min(3952, n_movies // 4)
    ids = np.unique(np.concatenate([np.arange(1, dense + 1, dtype=np.int32), ids]))[:n_movies]
    if len(ids) < n_movies:
        extra = np.setdiff1d(np.arange(1, MAX_MOVIE_ID + 1, dtype=np.int32), ids)[: n_movies - len(ids)]
        ids = np.sort(np.concatenate([ids, extra]))
    year = np.clip((1900 + 119 * (np.arange(n_movies) / n_movies) ** 0.6
                    + rng.normal(0, 4, n_movies)).round(), 1874, 2019).astype(np.int32)
    first = rng.choice(len(GENRES), size=n_movies, p=GENRE_W / GENRE_W.sum())
    n_extra = rng.choice([0, 1, 2, 3], size=n_movies, p=[0.35, 0.35, 0.2, 0.1])
    extra = rng.integers(0, len(GENRES), size=(n_movies, 3))
    words = rng.integers(0, len(WORDS), size=(n_movies, 3))
    n_words = rng.integers(1, 4, size=n_movies)
    comma = rng.random(n_movies) < 0.03
    no_genre = rng.random(n_movies) < 0.08
    titles, genres = [], []
    for i in range(n_movies):             # 62k short strings: Python is fine here
        w = [WORDS[k] for k in words[i, : n_words[i]]]
        t = " ".join(w)
        if comma[i]:
            t = f"{t}, The"
        titles.append(f"{t} {ids[i]} ({year[i]})")
        if no_genre[i]:
            genres.append("(no genres listed)")
        else:
            gs = [GENRES[first[i]]] + [GENRES[k] for k in extra[i, : n_extra[i]] if k != first[i]]
            genres.append("|".join(dict.fromkeys(gs)))
    return ids, year, first, titles, genres


def user_counts(rng: np.random.Generator, n_users: int, n_ratings: int, n_movies: int,
                lo: int = 20, cap: int = 10_000) -> np.ndarray:
    """Ratings per user: ``lo`` + a lognormal share of the rest, capped, summing to ``n_ratings``."""
    cap = min(cap, n_movies // 2)
    extra_total = n_ratings - lo * n_users
    if extra_total < 0 or n_ratings > cap * n_users:
        raise SystemExit(f"--ratings {n_ratings} does not fit {n_users} users with {lo}..{cap} each")
    raw = rng.lognormal(0.0, 1.25, n_users)
    lo_s, hi_s = 0.0, extra_total / raw.min() + 1
    for _ in range(100):                 # bisection on the scale: sum(min(cap - lo, raw * s)) = extra
        s = (lo_s + hi_s) / 2
        if np.minimum(cap - lo, np.floor(raw * s)).sum() > extra_total:
            hi_s = s
        else:
            lo_s = s
    counts = lo + np.minimum(cap - lo, np.floor(raw * lo_s)).astype(np.int64)
    short = n_ratings - int(counts.sum())          # >= 0, smaller than n_users
    room = np.flatnonzero(counts < cap)
    counts[rng.choice(room, size=short, replace=False)] += 1
    return counts


def draw_pairs(rng: np.random.Generator, counts: np.ndarray, movie_genre: np.ndarray,
               fav_genre: np.ndarray, n_movies: int, heavy: int = 1500) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (user, movie-index) pairs, ``counts[u]`` per user, sorted by (user, movie index).

    A user's movies are drawn without repeats from p_u = 0.75 Zipf popularity + 0.25 Zipf inside
    the user's favourite genre. Users with at most ``heavy`` ratings: oversample with repeats,
    drop duplicates, top up the few users left short (vectorised over all of them). Heavier users:
    exact sampling without replacement by Gumbel top-k over the whole catalogue, in chunks.
    """
    n_users, n_g = len(counts), len(GENRES)
    rank_to_movie = rng.permutation(n_movies).astype(np.int32)
    p_global = np.empty(n_movies)
    p_global[rank_to_movie] = _zipf_p(n_movies)
    p_mix = np.empty((n_g, n_movies))             # per favourite genre, over movie indexes
    genre_movies, genre_cdf = [], []
    for g in range(n_g):
        in_g = rank_to_movie[movie_genre[rank_to_movie] == g]   # genre g's movies, by popularity
        genre_movies.append(in_g)
        pg = np.zeros(n_movies)
        if len(in_g):
            pg[in_g] = _zipf_p(len(in_g))
            genre_cdf.append(np.cumsum(_zipf_p(len(in_g))))
        else:
            genre_cdf.append(None)
        p_mix[g] = 0.75 * p_global + (0.25 * pg if len(in_g) else 0.25 * p_global)
    cdf = np.cumsum(_zipf_p(n_movies))

    def sample(users: np.ndarray) -> np.ndarray:
        out = rank_to_movie[np.minimum(np.searchsorted(cdf, rng.random(len(users))), n_movies - 1)]
        in_genre = np.flatnonzero(rng.random(len(users)) < 0.25)
        g_of = fav_genre[users[in_genre]]
        order = np.argsort(g_of, kind="stable")
        bounds = np.searchsorted(g_of[order], np.arange(n_g + 1))
        for g in range(n_g):
            sel = in_genre[order[bounds[g]: bounds[g + 1]]]
            if len(sel) and genre_cdf[g] is not None:
                idx = np.minimum(np.searchsorted(genre_cdf[g], rng.random(len(sel))), len(genre_movies[g]) - 1)
                out[sel] = genre_movies[g][idx]
        return out

    parts = []
    light = np.flatnonzero(counts <= heavy)
    need = np.zeros(n_users, dtype=np.int64)
    need[light] = counts[light]
    pending = np.empty(0, dtype=np.int64)
    factor = 1.25
    while True:
        todo = np.flatnonzero(need > 0)
        if not len(todo):
            break
        draws = np.repeat(todo, np.ceil(need[todo] * factor).astype(np.int64) + 1)
        keys = np.unique(np.concatenate([pending, draws.astype(np.int64) * n_movies + sample(draws)]))
        users = keys // n_movies
        have = np.bincount(users, minlength=n_users)
        done = have[users] >= counts[users]
        parts.append(_first_k(rng, keys[done], counts, n_movies))
        pending = keys[~done]
        need = np.zeros(n_users, dtype=np.int64)
        short = np.unique(users[~done])
        need[short] = counts[short] - have[short]
        factor = 3.0
    heavy_users = np.flatnonzero(counts > heavy)
    logp = np.log(p_mix)
    for c in range(0, len(heavy_users), 32):
        hu = heavy_users[c: c + 32]
        g = logp[fav_genre[hu]] - np.log(-np.log(rng.random((len(hu), n_movies))))
        for i, user in enumerate(hu):
            k = int(counts[user])
            top = np.argpartition(-g[i], k - 1)[:k] if k < n_movies else np.arange(n_movies)
            parts.append(int(user) * n_movies + np.sort(top).astype(np.int64))
    keys = np.sort(np.concatenate(parts))
    return (keys // n_movies).astype(np.int32), (keys % n_movies).astype(np.int32)


def _first_k(rng, keys: np.ndarray, counts: np.ndarray, n_movies: int) -> np.ndarray:
    """A random subset of ``counts[u]`` of each user's distinct ``keys`` (user-major, sorted)."""
    users = keys // n_movies
    have = np.bincount(users, minlength=len(counts))
    order = np.lexsort((rng.random(len(keys)), users))
    start = np.concatenate([[0], np.cumsum(have)[:-1]])
    pos = np.empty(len(keys), dtype=np.int64)
    pos[order] = np.arange(len(keys)) - np.repeat(start, have)
    return keys[pos < counts[users]]


def draw_ratings(rng, u, m, n_users, n_movies) -> np.ndarray:
    score = (rng.normal(0, 0.5, n_users)[u] + rng.normal(0, 0.7, n_movies)[m]
             + rng.normal(0, 1.0, len(u)).astype(np.float32))
    cuts = np.quantile(score, np.cumsum(STAR_P / STAR_P.sum())[:-1])
    return STARS[np.searchsorted(cuts, score)].astype(np.float32)


def draw_times(rng, u, counts, n_users) -> np.ndarray:
    span = np.minimum(rng.lognormal(np.log(200 * 86400), 1.8, n_users), T_END - T_START)
    start = T_START + rng.random(n_users) * (T_END - T_START - span)
    return (start[u] + rng.random(len(u)) * span[u]).astype(np.int64)


def write_poster(path: Path, mid: int, seed: int) -> None:
    from PIL import Image

    r = np.random.default_rng([seed, mid])
    h, w = 69, 46
    base = r.random(3) * 255
    top = r.random(3) * 255
    t = np.linspace(0, 1, h)[:, None, None]
    img = base * (1 - t) + top * t + r.normal(0, r.random() * 40, (h, w, 3))
    if r.random() < 0.5:      # a block of a contrasting colour (a "figure")
        y, x = r.integers(0, h - 20), r.integers(0, w - 15)
        img[y: y + 20, x: x + 15] = 255 - base
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, quality=85)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="/work/cache/ml25m")
    ap.add_argument("--ratings", type=int, default=N_RATINGS)
    ap.add_argument("--users", type=int, default=None, help="default: scaled with --ratings")
    ap.add_argument("--movies", type=int, default=None, help="default: scaled with --ratings")
    ap.add_argument("--posters", type=int, default=None, help="posters for the first N movies [all]")
    ap.add_argument("--tags", type=int, default=None, help="tag lines [ratings / 230]")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    frac = a.ratings / N_RATINGS
    n_users = a.users or max(50, round(N_USERS * frac))
    n_movies = a.movies or max(100, round(N_MOVIES * min(1.0, frac ** 0.5)))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(a.seed)
    times: dict[str, float] = {}
    t0 = time.perf_counter()

    ids, year, first, titles, genres = make_movies(rng, n_movies)
    fav = rng.choice(len(GENRES), size=n_users, p=GENRE_W / GENRE_W.sum())
    counts = user_counts(rng, n_users, a.ratings, n_movies)
    u, m = draw_pairs(rng, counts, first, fav, n_movies)
    rating = draw_ratings(rng, u, m, n_users, n_movies)
    ts = draw_times(rng, u, counts, n_users)
    times["draw"] = time.perf_counter() - t0

    import duckdb
    import pyarrow as pa

    t1 = time.perf_counter()
    con = duckdb.connect()
    con.execute(f"SET threads = {max(1, __import__('os').cpu_count() or 1)}")
    ratings = pa.table({"userId": u + 1, "movieId": ids[m], "rating": rating.astype(np.float64),
                        "timestamp": ts})
    con.register("r", ratings)
    # (userId, movieId) order like the original: the pairs come out sorted by (user, movie index),
    # and movie ids increase with the index, so no sort is needed
    con.execute(f"COPY (SELECT userId, movieId, printf('%.1f', rating) AS rating, timestamp FROM r) "
                f"TO '{out / 'ratings.csv'}' (HEADER, DELIMITER ',', QUOTE '\"')")
    con.unregister("r")
    movies = pa.table({"movieId": ids, "title": titles, "genres": genres})
    con.register("mv", movies)
    con.execute(f"COPY mv TO '{out / 'movies.csv'}' (HEADER, DELIMITER ',')")
    tmdb = rng.integers(2, 600_000, size=n_movies)
    links = pa.table({"movieId": ids,
                      "imdbId": [f"{x:07d}" for x in rng.integers(1, 9_999_999, size=n_movies)],
                      "tmdbId": pa.array(tmdb, mask=rng.random(n_movies) < 0.002)})
    con.register("ln", links)
    con.execute(f"COPY ln TO '{out / 'links.csv'}' (HEADER, DELIMITER ',')")
    n_tags = a.tags if a.tags is not None else a.ratings // 230
    pick = rng.integers(0, len(u), size=n_tags)
    tag_words = np.array(["atmospheric", "sci-fi", "twist ending", "funny", "visually appealing",
                          "dark comedy", "based on a book", "classic", "thought-provoking", "Oscar (Best Picture)"])
    tags = pa.table({"userId": u[pick] + 1, "movieId": ids[m[pick]],
                     "tag": tag_words[rng.integers(0, len(tag_words), size=n_tags)],
                     "timestamp": ts[pick]})
    con.register("tg", tags)
    con.execute(f"COPY (SELECT * FROM tg ORDER BY userId, movieId) TO '{out / 'tags.csv'}' (HEADER, DELIMITER ',')")
    con.close()
    times["write_csv"] = time.perf_counter() - t1

    t2 = time.perf_counter()
    n_posters = n_movies if a.posters is None else min(a.posters, n_movies)
    pdir = out / "posters"
    pdir.mkdir(exist_ok=True)
    for mid in ids[:n_posters]:
        write_poster(pdir / f"{int(mid)}.jpg", int(mid), a.seed)
    times["posters"] = time.perf_counter() - t2

    per_user = np.bincount(u, minlength=n_users)
    per_movie = np.bincount(m, minlength=n_movies)
    stats = {
        "out": str(out), "ratings": int(len(u)), "users": int(n_users), "movies": int(n_movies),
        "posters": int(n_posters), "tags": int(n_tags),
        "ratings_per_user": {"min": int(per_user.min()), "median": float(np.median(per_user)),
                             "max": int(per_user.max())},
        "ratings_per_movie": {"median": float(np.median(per_movie)), "max": int(per_movie.max()),
                              "top1pct_share": float(np.sort(per_movie)[::-1][: max(1, n_movies // 100)].sum()
                                                     / len(u))},
        "rating_mean": float(rating.mean()),
        "seconds": {k: round(v, 1) for k, v in times.items()},
    }
    (out / "generated.json").write_text(json.dumps(stats, indent=1), encoding="utf-8")
    print(json.dumps(stats, indent=1))
    return stats


if __name__ == "__main__":
    main()
