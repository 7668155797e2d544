"""Valid-only check: does the date of a user's latest rating say what they rate next?

Scores every movie by how many times it was liked (rating >= 4) by anyone in the ``W`` days up to
the user's last train rating (only ratings before that moment: nothing from the future), and
compares valid NDCG@20 with all-time popularity (MostPop). If a recent-popularity window beat
MostPop, a time-of-rating input to the sequence models would be worth building.

    .venv/bin/python benchmarks/time_popularity.py --days 7 30 90 365
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--db", default="benchmarks/results/accuracy-ml1m.duckdb")
    p.add_argument("--days", type=int, nargs="+", default=[7, 30, 90, 365])
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/time_popularity.json"))
    args = p.parse_args(argv)
    os.environ.setdefault("POSTERKG_PROGRESS", "0")

    import numpy as np
    import torch

    from posterkg.gnn.evaluate import evaluate
    from posterkg.gnn.inputs import assemble
    from posterkg.store import open_store

    with open_store(args.db, read_only=True) as store:
        data = assemble(store, features={}).inputs.data
    h = data.history("valid")                     # the train part, per user in time order
    liked = h.ratings >= 4
    order = np.argsort(h.ts[liked], kind="stable")
    movies, ts = h.movies[liked][order], h.ts[liked][order]
    last = np.array([h.ts[h.indptr[u + 1] - 1] if h.indptr[u + 1] > h.indptr[u] else 0
                     for u in range(h.n_users)])
    alltime = np.bincount(movies, minlength=h.n_movies).astype(np.float32)

    def window(days: int):
        def score(users):
            out = np.empty((len(users), h.n_movies), np.float32)
            for i, u in enumerate(users.numpy()):
                hi = np.searchsorted(ts, last[u], side="right")
                lo = np.searchsorted(ts, last[u] - days * 86400, side="left")
                out[i] = np.bincount(movies[lo:hi], minlength=h.n_movies) + 1e-6 * alltime   # ties: all-time
            return torch.from_numpy(out)
        return score

    rows = [{"scorer": "all-time popularity",
             "valid_ndcg@20": evaluate(lambda u: torch.from_numpy(np.tile(alltime, (len(u), 1))), data, "valid")["ndcg@20"]}]
    for d in args.days:
        rows.append({"scorer": f"liked in the {d} days before", "days": d,
                     "valid_ndcg@20": evaluate(window(d), data, "valid")["ndcg@20"]})
    for r in rows:
        print(f"{r['scorer']:<32} valid NDCG@20 {r['valid_ndcg@20']:.4f}")
    args.out.write_text(json.dumps({"benchmark": "time_popularity", "split": "valid", "rows": rows,
                                    "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")}, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
