"""Semantic IDs on MovieLens 1M: build the "poster" and "text" versions and read their codebooks.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/semantic_ids.py --db /work/cache/sem.duckdb
    .venv/bin/python benchmarks/semantic_ids.py --db X --codebook-sizes 64 128 256 --epochs 50   # sweep
    .venv/bin/python benchmarks/semantic_ids.py --db X --versions poster --set rotation=true

The database must hold the ML-1M movies with ``poster_embeddings`` (``posterkg embed posters``)
and ``text_embeddings`` (``posterkg embed texts --model minilm``); the script writes the
``semantic_ids`` tables into it (versions ``poster`` and ``text`` with the defaults of
:class:`posterkg.semantic.ids.SemanticConfig`; sweep versions are named ``<version>-k<K>``).

For every version: codebook usage per level (share of the K codes used by at least one movie),
collision rate before disambiguation (share of movies whose L-tuple another movie shares), the
largest such group, reconstruction error (squared error summed over the feature dimensions,
mean over movies), seconds; the mean genre Jaccard of two movies that share their first code (and
their first two) against two random movies, and the same with the cosine of their poster
embeddings; and the restart check: the version is read back from the table
into a fresh RQ-VAE, the features re-read and re-encoded, and the codes compared with the table.
Prints a table and writes ``benchmarks/results/semantic_ids.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))


def _value(text: str):
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text


def restart_check(store, version: str) -> bool:
    """Codes re-computed from the stored state in a fresh model equal the stored codes."""
    import numpy as np

    from posterkg.semantic.features import item_features
    from posterkg.semantic.ids import load_codes, load_version

    ver = load_version(store, version)
    ids, codes = load_codes(store, version)
    x, _, _ = item_features(store, ids, normaliser=ver.normaliser)
    return bool(np.array_equal(ver.model.codes(x), codes[:, :ver.levels]))


def genre_coherence(store, version: str, pairs: int = 20000, seed: int = 0) -> dict:
    """Mean genre Jaccard of two movies sharing their first code (and first two codes) vs two
    random movies: do the codes carry meaning, or only spread the movies out?"""
    import itertools

    import numpy as np

    from posterkg.semantic.ids import load_codes

    ids, codes = load_codes(store, version)
    genres = {int(m): set(g or []) for m, g in store.execute("SELECT movie_id, genres FROM movies").fetchall()}
    gs = [genres.get(int(m), set()) for m in ids]

    def jac(a, b):
        return len(a & b) / len(a | b) if a | b else 0.0

    out = {}
    rng = np.random.default_rng(seed)
    i, j = rng.integers(0, len(ids), pairs), rng.integers(0, len(ids), pairs)
    keep = i != j
    out["random"] = float(np.mean([jac(gs[a], gs[b]) for a, b in zip(i[keep], j[keep])]))
    for depth in (1, 2):
        groups: dict = {}
        for k, row in enumerate(codes[:, :depth]):
            groups.setdefault(tuple(row), []).append(k)
        vals = [jac(gs[a], gs[b]) for members in groups.values() for a, b in itertools.combinations(members, 2)]
        out[f"same_prefix_{depth}"] = float(np.mean(vals)) if vals else None
    return out


def poster_coherence(store, version: str, pairs: int = 20000, seed: int = 0) -> dict | None:
    """The same with the cosine of the two movies' poster embeddings (efficientnet-lite0)."""
    import itertools

    import numpy as np

    from posterkg.embed.posters import load_features
    from posterkg.errors import InputError
    from posterkg.semantic.ids import load_codes

    try:
        pid, pm = load_features(store, "poster", "efficientnet-lite0", normalize=True)
    except InputError:
        return None
    ids, codes = load_codes(store, version)
    pos = {int(m): i for i, m in enumerate(pid)}
    have = np.array([int(m) in pos for m in ids])
    ids, codes = ids[have], codes[have]
    vec = pm[[pos[int(m)] for m in ids]]
    rng = np.random.default_rng(seed)
    i, j = rng.integers(0, len(ids), pairs), rng.integers(0, len(ids), pairs)
    keep = i != j
    out = {"random": float((vec[i[keep]] * vec[j[keep]]).sum(1).mean())}
    for depth in (1, 2):
        groups: dict = {}
        for k, row in enumerate(codes[:, :depth]):
            groups.setdefault(tuple(row), []).append(k)
        a = np.array([p for m in groups.values() for p in itertools.combinations(m, 2)])
        out[f"same_prefix_{depth}"] = float((vec[a[:, 0]] * vec[a[:, 1]]).sum(1).mean()) if len(a) else None
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", type=Path, default=Path("/work/cache/sem.duckdb"))
    ap.add_argument("--versions", nargs="+", default=["poster", "text"])
    ap.add_argument("--codebook-sizes", nargs="+", type=int, default=None,
                    help="Sweep: build <version>-k<K> for each K instead of the default versions.")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--set", nargs="*", default=[], help="key=value overrides of SemanticConfig")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "semantic_ids.json")
    args = ap.parse_args(argv)

    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    from posterkg.semantic.ids import build_version, version_config
    from posterkg.store import open_store

    overrides = dict(kv.split("=", 1) for kv in args.set)
    overrides = {k: _value(v) for k, v in overrides.items()}
    if args.epochs:
        overrides["epochs"] = args.epochs
    runs = []
    with open_store(args.db) as store:
        for base in args.versions:
            for k in args.codebook_sizes or [None]:
                cfg = dataclasses.replace(version_config(None, base), **overrides)
                name = base
                if k is not None:
                    cfg = dataclasses.replace(cfg, codebook_size=k)
                    name = f"{base}-k{k}"
                t0 = time.perf_counter()
                s = build_version(store, name, cfg, rebuild=True)
                s["wall_seconds"] = time.perf_counter() - t0
                s["restart_identical"] = restart_check(store, name)
                s["genre_jaccard"] = genre_coherence(store, name)
                s["poster_cosine"] = poster_coherence(store, name)
                s["config"] = dataclasses.asdict(cfg)
                runs.append(s)
                print(f"{name}: usage {[round(u, 3) for u in s['usage']]} collisions {s['collision_rate']:.4f} "
                      f"max group {s['max_group']} recon {s['recon_loss']:.4f} {s['seconds']:.1f}s "
                      f"restart identical {s['restart_identical']} genre jaccard {s['genre_jaccard']} poster cosine {s['poster_cosine']}", flush=True)

    head = f"{'version':<14} {'features':<16} {'LxK':>6} {'usage per level':<22} {'collide':>8} {'maxg':>5} " \
           f"{'recon':>7} {'missing':<22} {'sec':>6} {'jac1/2/rand':<16} restart"
    print(head)
    print("-" * len(head))
    for s in runs:
        miss = ",".join(f"{k}:{v}" for k, v in s["missing"].items())
        gj = s["genre_jaccard"]
        print(f"{s['version']:<14} {'+'.join(s['features']):<16} {s['levels']}x{s['codebook_size']:<4} "
              f"{' / '.join(f'{100 * u:.1f}' for u in s['usage']):<22} {100 * s['collision_rate']:7.2f}% "
              f"{s['max_group']:>5} {s['recon_loss']:7.4f} {miss:<22} {s['seconds']:6.1f} "
              f"{'/'.join(f'{v:.2f}' for v in (gj['same_prefix_1'], gj['same_prefix_2'], gj['random'])):<16} "
              f"{s['restart_identical']}")
    out = {"db": str(args.db), "threads": args.threads, "machine": platform.processor() or platform.machine(),
           "torch": torch.__version__, "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1, default=str))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
