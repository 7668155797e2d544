"""Valid only: does a popularity term, up or *down*, help posterkg-seq's final scores?

    .venv/bin/python benchmarks/blend_popularity.py S.pt benchmarks/results/blend_popularity.json

A full-softmax sequence model learns each movie's popularity into its scores, and the EASE blend
adds more of it; a correction by popularity (a logQ-style debiasing when the weight is negative)
is a classic cheap change. This loads a trained posterkg-seq (``accuracy_tuning.py --state``),
computes its final scores (sequence + its chosen collaborative part) for the valid users once,
and adds ``w * s * z(log(1 + count))``, where ``count`` is how often each movie was rated in the
training part (``all``) or in the N days up to the user's last history rating (``past-Nd``,
earlier ratings only), ``z`` standardises over the catalogue and ``s`` is the users' mean
standard deviation of the final scores (one scale for everyone, as the blend's). Weights from
-0.3 to 0.3. Prints valid NDCG@20 per (variant, weight) and writes them as JSON; test is never
read.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from saved_seq import SavedSeq  # noqa: E402

WEIGHTS = (-0.3, -0.2, -0.1, -0.05, -0.02, 0.0, 0.02, 0.05, 0.1)


def main() -> int:
    state, out = sys.argv[1], Path(sys.argv[2])
    saved = SavedSeq(state)
    model, hist, cand = saved.model, saved.hist, saved.cand
    with torch.no_grad():
        final = torch.cat([model.score(torch.as_tensor(cand[a:a + 512]), hist) for a in range(0, len(cand), 512)])
    scale = float(final.std(1).mean())
    base = saved.ndcg20(final)
    print(f"final scores (w = 0): valid NDCG@20 {base:.4f}; mean per-user std {scale:.3f}", flush=True)
    n_movies = hist.n_movies
    variants: dict[str, torch.Tensor] = {}
    count = np.bincount(hist.movies, minlength=n_movies).astype(np.float64)
    variants["all"] = torch.from_numpy(np.log1p(count)).float().expand(len(cand), n_movies)
    day = ((hist.ts - hist.ts.min()) // 86400).astype(np.int64)
    cum = np.zeros((n_movies, int(day.max()) + 2))
    np.add.at(cum, (hist.movies, day + 1), 1.0)
    cum = np.cumsum(cum, axis=1)                       # cum[:, d + 1]: ratings on days <= d
    last = np.array([day[hist.indptr[u + 1] - 1] for u in cand])
    for days in (7, 30, 180):
        x = cum[:, last + 1] - cum[:, np.maximum(last + 1 - days, 0)]
        variants[f"past-{days}d"] = torch.from_numpy(np.log1p(x.T)).float()
    rows = []
    for name, v in variants.items():
        z = (v - v.mean(1, keepdim=True)) / v.std(1, keepdim=True).clamp(min=1e-12)
        for w in WEIGHTS:
            ndcg = base if w == 0.0 else saved.ndcg20(final + w * scale * z)
            rows.append({"variant": name, "weight": w, "valid_ndcg@20": ndcg})
            print(f"{name:10s} w={w:+.2f}: valid NDCG@20 {ndcg:.4f}", flush=True)
    out.write_text(json.dumps({"state": str(state), "base": base, "scale": scale, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
