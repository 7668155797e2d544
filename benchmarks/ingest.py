"""Time `ingest_movielens` (and the temporal split) on a generated ML-1M-format folder.

    python benchmarks/ingest.py                      # 1,000,000 ratings, 6,040 users, 3,883 movies
    python benchmarks/ingest.py --ratings 5000000 --repeat 3

The data is synthetic (numpy, seeded) in ML-1M's exact format ('::' separated, Latin-1 movies.dat
with accented titles) and lives in a temporary folder that is deleted afterwards. Prints a table
and writes benchmarks/results/ingest.json. Target: 1M ratings in under 10 s on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np


def generate(folder: Path, n_ratings: int, n_users: int, n_movies: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    genres = ["Action", "Comedy", "Drama", "Thriller", "Children's", "Sci-Fi", "Romance"]
    with open(folder / "movies.dat", "w", encoding="latin-1") as f:
        for m in range(1, n_movies + 1):
            g = "|".join(sorted(set(rng.choice(genres, size=int(rng.integers(1, 4))))))
            title = f"Film {m}" if m % 50 else f"Café Crème {m}, Les"
            f.write(f"{m}::{title} ({1919 + m % 81})::{g}\n")
    with open(folder / "users.dat", "w") as f:
        for u in range(1, n_users + 1):
            f.write(f"{u}::{'MF'[u % 2]}::{[1, 18, 25, 35, 45, 50, 56][u % 7]}::{u % 21}::{10000 + u}\n")
    # unique (user, movie) pairs: sample distinct flat indices
    flat = rng.choice(n_users * n_movies, size=n_ratings, replace=False)
    users = flat // n_movies + 1
    movies = flat % n_movies + 1
    ratings = rng.integers(1, 6, size=n_ratings)
    ts = rng.integers(956_703_932, 1_046_454_590, size=n_ratings)
    order = np.argsort(users, kind="stable")
    lines = np.char.add(np.char.add(np.char.add(np.char.add(np.char.add(np.char.add(np.char.add(
        users[order].astype(str), "::"), movies[order].astype(str)), "::"), ratings[order].astype(str)), "::"),
        ts[order].astype(str)), "\n")
    with open(folder / "ratings.dat", "w") as f:
        f.write("".join(lines.tolist()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ratings", type=int, default=1_000_000)
    ap.add_argument("--users", type=int, default=6040)
    ap.add_argument("--movies", type=int, default=3883)
    ap.add_argument("--repeat", type=int, default=2, help="ingest runs (the first is cold, later ones replace)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "ingest.json"))
    args = ap.parse_args()

    from posterkg.ingest.movielens import ingest_movielens
    from posterkg.split import make_split
    from posterkg.store import open_store

    with tempfile.TemporaryDirectory(prefix="posterkg-bench-") as tmp:
        folder = Path(tmp) / "ml-1m"
        folder.mkdir()
        t0 = time.perf_counter()
        generate(folder, args.ratings, args.users, args.movies)
        gen_s = time.perf_counter() - t0
        size_mb = (folder / "ratings.dat").stat().st_size / 1e6
        rows = []
        with open_store(Path(tmp) / "bench.duckdb") as store:
            for i in range(args.repeat):
                t0 = time.perf_counter()
                summary = ingest_movielens(store, folder)
                rows.append(("ingest" + (" (cold)" if i == 0 else " (replace)"), time.perf_counter() - t0,
                             summary.counts["ratings"]))
            assert summary.counts["ratings"] == args.ratings and summary.errors == 0
            t0 = time.perf_counter()
            make_split(store, "temporal")
            rows.append(("split temporal", time.perf_counter() - t0, store.count("split")))
            t0 = time.perf_counter()
            make_split(store, "random", seed=0)
            rows.append(("split random", time.perf_counter() - t0, store.count("split")))

    print(f"generated {args.ratings:,} ratings ({size_mb:.1f} MB ratings.dat) in {gen_s:.1f}s; "
          f"{os.cpu_count()} CPU(s), {platform.processor() or platform.machine()}")
    print(f"{'step':<18} {'seconds':>8} {'rows':>12} {'rows/s':>12}")
    for name, sec, n in rows:
        print(f"{name:<18} {sec:>8.2f} {n:>12,} {n / sec:>12,.0f}")
    target = rows[0][1] < 10.0
    print(f"target (cold ingest of 1M ratings < 10 s): {'met' if target else 'NOT met'}"
          + ("" if args.ratings == 1_000_000 else " (different size)"))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "ratings": args.ratings, "users": args.users, "movies": args.movies, "ratings_mb": size_mb,
        "cpus": os.cpu_count(), "steps": [{"step": n, "seconds": s, "rows": r} for n, s, r in rows],
    }, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
