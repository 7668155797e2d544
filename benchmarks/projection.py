"""Projection benchmark: N raw points (default 1M) drawn with realistic duplication from a pool
of P unique phrases (default 20k), projected end to end on CPU with the shipped MiniLM.

The pool is built from tests/data/visual_phrases.tsv with modifiers ("slightly warm tones",
"warm tones, faded" ...); phrase popularity is Zipf-like, like real tagger output. The vocabulary
is the phrase set's gold groups (65 concepts). Phases timed separately:

  cold   : embed the unique values (cache empty) + project every point
  warm   : project again from scratch (``full``) with the embedding cache filled
  incr   : 1% more movies arrive, incremental projection

Prints a table and writes benchmarks/results/projection.json. Timings on a shared 2-core machine
are noisy; compare phases of one run rather than runs.

    .venv/bin/python benchmarks/projection.py                 # 1M points, 20k phrases
    .venv/bin/python benchmarks/projection.py --n 100000 --pool 5000
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
os.environ.setdefault("POSTERKG_PROGRESS", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from posterkg.embed.cache import EmbeddingCache  # noqa: E402
from posterkg.embed.encoder import Encoder  # noqa: E402
from posterkg.schema import vocab as V  # noqa: E402
from posterkg.schema.discover import SchemaConfig  # noqa: E402
from posterkg.schema.project import project  # noqa: E402
from posterkg.store import open_store  # noqa: E402
from vocab_helpers import RAW_POINTS_DDL, load_phrases  # noqa: E402

PREFIXES = ["", "slightly ", "very ", "strongly ", "subtle ", "bold ", "soft ", "deep ", "faint ", "heavy ",
            "vivid ", "dull ", "rich ", "pale ", "intense ", "gentle ", "dramatic ", "muted ", "classic ",
            "modern ", "retro ", "dark ", "bright ", "light ", "harsh ", "warm ", "cool ", "rough ",
            "clean ", "simple ", "striking ", "moody ", "mild ", "extreme ", "overall ", "almost ", "mostly ",
            "partly ", "highly ", "barely ", "quite "]
SUFFIXES = ["", ", faded", " overall", " throughout", " in the background", " at the top", " at the bottom",
            " on the left", " on the right", " around the edges", " with texture", ", strong", ", weak",
            " and more"]


def phrase_pool(size: int, seed: int) -> pd.DataFrame:
    rows = load_phrases()
    cand = [(t, f"{pre}{p}{suf}") for t, _, p in rows for pre in PREFIXES for suf in SUFFIXES]
    rng = np.random.default_rng(seed)
    base = [(t, p) for t, _, p in rows]
    rest = [cand[i] for i in rng.permutation(len(cand))]
    seen, out = set(), []
    for t, p in base + rest:
        if (t, p) not in seen:
            seen.add((t, p))
            out.append((t, p))
        if len(out) >= size:
            break
    return pd.DataFrame(out, columns=["type", "value"])


def draw_points(pool: pd.DataFrame, n: int, first_movie: int, per_movie: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    ranks = np.arange(1, len(pool) + 1)
    p = 1.0 / ranks ** 1.05
    p /= p.sum()
    idx = rng.choice(len(pool), size=n, p=p)
    return pd.DataFrame({
        "movie_id": first_movie + np.arange(n) // per_movie,
        "type": pool["type"].to_numpy()[idx],
        "value": pool["value"].to_numpy()[idx],
        "confidence": rng.choice([0.5, 0.625, 0.75, 0.875, 1.0], size=n),
        "backend": "bench", "model": "zipf", "schema_hash": "h", "run_id": f"r{seed}",
    })


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="raw points")
    ap.add_argument("--pool", type=int, default=20_000, help="unique phrases they are drawn from")
    ap.add_argument("--per-movie", type=int, default=10, help="points per movie")
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--db", help="database file [default: a temporary one]")
    args = ap.parse_args()

    tmp = tempfile.TemporaryDirectory()
    db = Path(args.db) if args.db else Path(tmp.name) / "bench.duckdb"
    pool = phrase_pool(args.pool, args.seed)
    points = draw_points(pool, args.n, 1, args.per_movie, args.seed)
    extra = draw_points(pool, max(args.per_movie, args.n // 100), int(points["movie_id"].max()) + 1,
                        args.per_movie, args.seed + 1)
    rows = load_phrases()
    groups: dict[tuple[str, str], list[str]] = {}
    for t, g, p in rows:
        groups.setdefault((t, g), []).append(p)
    concepts = [{"type": t, "name": ms[0], "members": ms} for (t, g), ms in groups.items()]
    timings: dict[str, float] = {}
    loads = {"start": os.getloadavg()[0]}
    with open_store(db) as store:
        store.execute(RAW_POINTS_DDL)
        t0 = time.perf_counter()
        store.insert_df("raw_points", points)
        timings["setup: insert raw_points"] = time.perf_counter() - t0
        encoder = Encoder(args.model)
        cache = EmbeddingCache(store, encoder)
        t0 = time.perf_counter()
        V.freeze(store, concepts, cache, source="benchmark")
        timings["setup: freeze 65 concepts"] = time.perf_counter() - t0
        cfg = SchemaConfig()
        t0 = time.perf_counter()
        texts_before, threads = encoder.n_encoded, encoder.torch_threads()
        cold = project(store, cfg, cache)
        timings["cold: embed uniques + project"] = time.perf_counter() - t0
        loads["after cold"] = os.getloadavg()[0]
        cold_texts = encoder.n_encoded - texts_before
        t0 = time.perf_counter()
        warm = project(store, cfg, cache, full=True)
        timings["warm: project all (cache full)"] = time.perf_counter() - t0
        store.insert_df("raw_points", extra)
        t0 = time.perf_counter()
        incr = project(store, cfg, cache)
        timings["incr: +1% movies"] = time.perf_counter() - t0
        n_movie_concepts = store.count("movie_concepts")
    uniq = int(points[["type", "value"]].drop_duplicates().shape[0])
    result = {
        "n_points": args.n, "pool": args.pool, "unique_values_drawn": uniq, "movies": int(points["movie_id"].nunique()),
        "model": encoder.name, "encoder_texts": encoder.n_encoded, "cpu_count": os.cpu_count(),
        "assigned": cold["assigned"], "pooled": cold["pooled"], "movie_concepts": n_movie_concepts,
        "incremental_new_movies": incr["new_movies"], "warm_points": warm["points"],
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
        "cold_texts_embedded": cold_texts, "encoder_threads_at_cold_start": threads,
        "load_avg_1min": {k: round(v, 2) for k, v in loads.items()},
        "note": "shared 2-core machine: timings are noisy",
    }
    width = max(map(len, timings))
    print(f"{args.n:,} points, {uniq:,} unique values ({args.pool:,} pool), {result['movies']:,} movies, "
          f"{encoder.name}; encoder saw {encoder.n_encoded:,} texts")
    print(f"{'phase'.ljust(width)}  seconds  points/s")
    for k, v in timings.items():
        n = {"cold": args.n, "warm": args.n, "incr": len(extra)}.get(k.split(":")[0])
        rate = f"{n / v:,.0f}" if n else ""
        print(f"{k.ljust(width)}  {v:7.2f}  {rate}")
    print(f"cold phase embedded {cold_texts:,} texts with {threads} torch thread(s) "
          f"(<= {cold_texts / timings['cold: embed uniques + project']:,.0f} texts/s incl. projection); "
          f"1-min load average: " + ", ".join(f"{k} {v:.1f}" for k, v in loads.items()) + f" on {os.cpu_count()} cores")
    print(f"assigned {cold['assigned']:,} / pooled {cold['pooled']:,}; movie_concepts rows {n_movie_concepts:,}")
    out = REPO / "benchmarks" / "results" / "projection.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
