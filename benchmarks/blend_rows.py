"""Valid only: would the collaborative part gain from weighing the ratings of the user's row?

    .venv/bin/python benchmarks/accuracy_tuning.py --name s --model posterkg-seq --train threads=1 --state S.pt
    .venv/bin/python benchmarks/blend_rows.py S.pt benchmarks/results/blend_rows.json

Loads a trained posterkg-seq (``accuracy_tuning.py --state``), computes its sequence scores for
the valid users once, and blends them with EASE's scores from user rows weighted by recency
(position from the end, half-lives in ratings, optionally with a floor), by age (half-lives in
days) or by sign (disliked ratings down-weighted or dropped), for several lambdas and weights.
Prints valid NDCG@20 per (lambda, variant, weight); test is never read.
"""
import sys, json
from pathlib import Path
import numpy as np, scipy.sparse as sp, torch
sys.path.insert(0, str(Path(__file__).resolve().parent))
from saved_seq import SavedSeq
from posterkg.gnn.neighbours import ease_matrix, gram_matrix
from posterkg.gnn.sequential import _standardise
saved = SavedSeq(sys.argv[1])
model, data, hist, cand = saved.model, saved.data, saved.hist, saved.cand
w0, model.cfg.item_item = model.cfg.item_item, 0.0
zs = saved.standardised(model.score)
print("chosen", w0, model.cfg.item_item_l2, flush=True)
ev = saved.ndcg20
print("seq alone", ev(zs), flush=True)
gram = gram_matrix(hist)
# per-row recency rank from end and age
n = hist.n_users
k_from_end = np.zeros(len(hist.users)); age = np.zeros(len(hist.users))
for u in range(n):
    a, b = hist.indptr[u], hist.indptr[u+1]
    k_from_end[a:b] = np.arange(b - a)[::-1]
    age[a:b] = (hist.ts[b-1] - hist.ts[a:b]) / 86400.0
def rows(wts):
    m = sp.csr_matrix((wts.astype(np.float32), (hist.users, hist.movies)), shape=(n, hist.n_movies))
    return m[cand]
r = hist.ratings
variants = {"binary": np.ones(len(r))}
for h in (10, 25, 50, 100, 200):
    variants[f"pos-h{h}"] = 0.5 ** (k_from_end / h)
for h in (25, 100):
    for fl in (0.2,):
        variants[f"pos-h{h}-floor{fl}"] = fl + (1 - fl) * 0.5 ** (k_from_end / h)
for d in (1, 7, 30, 180):
    variants[f"age-h{d}d"] = 0.5 ** (age / d)
variants["neg0.5"] = np.where(r <= 2, 0.5, 1.0)
variants["neg0"] = np.where(r <= 2, 0.0, 1.0)
variants["pos-h50-neg0.5"] = variants["pos-h50"] * variants["neg0.5"]
grid_w = (0.05, 0.1, 0.15, 0.2, 0.3, 0.5)
out = []
for l2 in (1000.0, 2000.0, 4000.0, 8000.0, 16000.0):
    S = ease_matrix(gram, l2)
    for vn, wts in variants.items():
        X = torch.from_numpy(rows(wts).toarray())
        ze = _standardise(X @ S)
        alone = ev(ze)
        res = {w: ev(zs + w * ze) for w in grid_w}
        bw = max(res, key=res.get)
        out.append({"l2": l2, "variant": vn, "ease_alone": alone, "blend": res, "best_w": bw, "best": res[bw]})
        print(f"l2={l2:g} {vn:22s} ease {alone:.4f} best blend {res[bw]:.4f} at w={bw}  " + " ".join(f"{res[w]:.4f}" for w in grid_w), flush=True)
json.dump(out, open(sys.argv[2], "w"), indent=1)
