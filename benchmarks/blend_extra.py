"""Valid only: would a third late-fused part help posterkg-seq's blend?

    .venv/bin/python benchmarks/blend_extra.py S.pt benchmarks/results/blend_extra.json

Loads a trained posterkg-seq (``accuracy_tuning.py --state``), computes its sequence scores and
its chosen EASE part for the valid users once, and adds a third standardised part with weights
from a grid:

* ``pop-past-Nd``: how often each movie was rated by anyone in the N days up to the user's last
  history rating (only ratings of the history part, and only earlier ones: nothing after the
  user's own time is read), log(1 + count);
* ``trans-kK-hH``: a transition matrix: how often movie j follows movie i within the next K
  ratings of a user's history (row-normalised by i's count), read from the user's last ratings
  with recency half-life H (in ratings).

Prints valid NDCG@20 per (variant, weight); test is never read.
"""
import sys, json
from pathlib import Path
import numpy as np, scipy.sparse as sp, torch
sys.path.insert(0, str(Path(__file__).resolve().parent))
from saved_seq import SavedSeq
from posterkg.gnn.sequential import _standardise
saved = SavedSeq(sys.argv[1])
model, data, hist, cand = saved.model, saved.data, saved.hist, saved.cand
w0 = model.cfg.item_item
zs, zii = saved.parts()
ev = saved.ndcg20
base = zs + w0 * zii
print("chosen w", w0, "l2", model.cfg.item_item_l2, "seq alone", ev(zs), "blend", ev(base), flush=True)
n, m = hist.n_users, hist.n_movies
day = ((hist.ts - hist.ts.min()) // 86400).astype(np.int64)
nd = int(day.max()) + 1
C = np.zeros((m, nd + 1), dtype=np.float64)
np.add.at(C, (hist.movies, day + 1), 1.0)
C = np.cumsum(C, axis=1)          # C[:, d+1] = ratings of each movie on days <= d
last_day = np.array([day[hist.indptr[u + 1] - 1] for u in cand])
variants = {}
for D in (1, 3, 7, 14, 30, 90, 365):
    lo = np.maximum(last_day + 1 - D, 0)
    X = C[:, last_day + 1] - C[:, lo]            # [m, users]
    variants[f"pop-past-{D}d"] = torch.from_numpy(np.log1p(X.T).astype(np.float32))
# transitions
for K in (1, 3, 10):
    rows, cols, vals = [], [], []
    for u in range(n):
        a, b = hist.indptr[u], hist.indptr[u + 1]
        seq = hist.movies[a:b]
        for k in range(1, K + 1):
            if b - a > k:
                rows.append(seq[:-k]); cols.append(seq[k:]); vals.append(np.full(b - a - k, 1.0))
    T = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(m, m))
    cnt = np.asarray(T.sum(axis=1)).ravel()
    T = sp.diags(1.0 / np.maximum(cnt, 1)) @ T
    for H in (1, 3, 10):
        r_, c_, v_ = [], [], []
        for i, u in enumerate(cand):
            a, b = hist.indptr[u], hist.indptr[u + 1]
            L = min(b - a, 50)
            r_.append(np.full(L, i)); c_.append(hist.movies[b - L:b]); v_.append(0.5 ** (np.arange(L)[::-1] / H))
        R = sp.csr_matrix((np.concatenate(v_), (np.concatenate(r_), np.concatenate(c_))), shape=(len(cand), m))
        variants[f"trans-k{K}-h{H}"] = torch.from_numpy((R @ T).toarray().astype(np.float32))
grid_w = (0.02, 0.05, 0.1, 0.2, 0.3)
out = {"base": ev(base), "seq": ev(zs), "w_ii": w0, "runs": []}
for vn, S in variants.items():
    zx = _standardise(S)
    alone = ev(zx)
    res = {w: ev(base + w * zx) for w in grid_w}
    bw = max(res, key=res.get)
    out["runs"].append({"variant": vn, "alone": alone, "blend": res, "best_w": bw, "best": res[bw]})
    print(f"{vn:16s} alone {alone:.4f} best {res[bw]:.4f} at w={bw}  " + " ".join(f"{res[w]:.4f}" for w in grid_w), flush=True)
json.dump(out, open(sys.argv[2], "w"), indent=1)
