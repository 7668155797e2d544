"""Valid only: would a learned second stage (a GBDT reranker over the top K) beat posterkg-seq's blend?

    .venv/bin/python benchmarks/rerank_probe.py S.pt [--k 100] [--folds 5] [--out benchmarks/results/rerank_probe.json]

Loads a trained posterkg-seq (``accuracy_tuning.py --state S.pt``), chooses its EASE blend on
valid exactly as ``fit`` does (``_fit_item_item``), takes each valid user's top K of the blend
(train movies excluded) and describes every candidate with features known at valid time:

* the model's own: blended score, gap to the user's best, z-scored sequence and EASE scores, rank;
* the movie's, from the train part: log popularity, mean rating, share rated >= 4, how far it is
  rated above its raters' own mean, days since its first rating (up to the user's last train
  rating), its share of everyone's ratings in the 7 / 30 / 180 days before that time;
* the user's: log history length, mean rating, share rated >= 4;
* profile matches (cosine of the candidate's bag against the user's): poster concepts
  (``has``) and genres, each against the user's liked, disliked and last 10 liked movies.

A ``HistGradientBoostingClassifier`` (scikit-learn) learns "the user liked it in valid" on K-fold
splits of the users; each fold's users are reranked by the model trained on the others, and
valid NDCG@20 of the reranked lists is set against the blend's on the same users (paired standard
error over users). Several feature sets are compared (with / without the poster concepts, ...).
Test is never read. Prints one table and writes JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from saved_seq import SavedSeq  # noqa: E402

def choose_blend(saved: SavedSeq) -> tuple[float, dict]:
    alone, info = saved.rechoose_blend()
    c = saved.model.cfg
    return alone, {"item_item": c.item_item, "l2": c.item_item_l2, "ratio": c.item_item_ratio,
                   "valid_ndcg@20": info.valid["ndcg@20"]}


def features(saved: SavedSeq, k: int) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """(features name -> [U, K], candidates [U, K] (movie indices), labels [U, K]) for the valid users."""
    from posterkg.gnn.sequential import _standardise

    m, data, hist, cand = saved.model, saved.data, saved.hist, saved.cand
    users = torch.as_tensor(cand)
    with torch.no_grad():
        def rows(fn):
            return torch.cat([fn(users[a:a + 512]) for a in range(0, len(cand), 512)])
        zs = rows(lambda u: _standardise(m.sequence_scores(u, hist))).numpy()
        zi = rows(lambda u: _standardise(m.item_item_scores(u, hist))).numpy()
        bl = rows(lambda u: m.score(u, hist)).numpy()
    seen = data.seen("valid")[cand]
    bl[np.repeat(np.arange(len(cand)), np.diff(seen.indptr)), seen.indices] = -np.inf
    top = np.argsort(-bl, axis=1, kind="stable")[:, :k]
    rel = data.relevant("valid")[cand]
    y = np.asarray(rel[np.arange(len(cand))[:, None], top].todense(), np.float32)

    tr, nm, nu = data.parts["train"], data.n_movies, data.n_users
    pop = np.bincount(tr.movies, minlength=nm).astype(np.float64)
    first = np.full(nm, np.iinfo(np.int64).max)
    np.minimum.at(first, tr.movies, tr.ts)
    last = np.zeros(nu, np.int64)
    np.maximum.at(last, tr.users, tr.ts)
    tu = last[cand]
    ucount = np.maximum(np.bincount(tr.users, minlength=nu), 1)
    umean = np.bincount(tr.users, weights=tr.ratings, minlength=nu) / ucount
    per = lambda v: v[top]                                        # noqa: E731  movie value per candidate
    per_user = lambda v: np.repeat(v[cand][:, None], k, 1)        # noqa: E731
    F: dict[str, np.ndarray] = {
        "blend": np.take_along_axis(bl, top, 1),
        "zs": np.take_along_axis(zs, top, 1), "zi": np.take_along_axis(zi, top, 1),
        "rank": np.tile(np.arange(k, dtype=np.float32), (len(cand), 1)),
        "log_pop": per(np.log1p(pop)),
        "mean_rating": per(np.bincount(tr.movies, weights=tr.ratings, minlength=nm) / np.maximum(pop, 1)),
        "liked_share": per(np.bincount(tr.movies, weights=tr.ratings >= 4, minlength=nm) / np.maximum(pop, 1)),
        "above_raters": per(np.bincount(tr.movies, weights=tr.ratings - umean[tr.users], minlength=nm) / np.maximum(pop, 1)),
        "age_days": ((tu[:, None] - first[top]) / 86400.0),
        "log_hist": per_user(np.log1p(np.diff(hist.indptr))),
        "user_mean": per_user(umean),
        "user_liked_share": per_user(np.bincount(tr.users, weights=tr.ratings >= 4, minlength=nu) / ucount),
    }
    F["blend_gap"] = F["blend"] - F["blend"][:, :1]
    order = np.argsort(tr.ts, kind="stable")
    ts_sorted, mv_sorted = tr.ts[order], tr.movies[order]
    for days in (7, 30, 180):
        lo = np.searchsorted(ts_sorted, tu - days * 86400, "left")
        hi = np.searchsorted(ts_sorted, tu, "right")
        out = np.zeros((len(cand), k))
        for i in range(len(cand)):
            out[i] = np.bincount(mv_sorted[lo[i]:hi[i]], minlength=nm)[top[i]] / max(hi[i] - lo[i], 1)
        F[f"recent_share_{days}d"] = out
    for rel_name, tag in (("has", "concepts"), ("genre", "genres")):
        r = saved.inputs.graph.get(rel_name)
        if not len(r.src):
            continue
        M = sp.csr_matrix((np.ones(len(r.src), np.float32), (r.src.numpy(), r.dst.numpy())),
                          shape=(nm, int(r.dst.max()) + 1))
        M = sp.csr_matrix(M.multiply(1.0 / np.sqrt(np.maximum(np.asarray(M.sum(1)), 1e-9))))
        C = M[top.ravel()].toarray().reshape(len(cand), k, -1)
        profiles = {}
        for name, keep in (("liked", hist.ratings >= 4), ("disliked", hist.ratings < 3)):
            U = sp.csr_matrix((np.ones(int(keep.sum()), np.float32), (hist.users[keep], hist.movies[keep])),
                              shape=(nu, nm))[cand]
            profiles[name] = np.asarray((U @ M).todense())
        recent = np.zeros((len(cand), M.shape[1]), np.float32)
        for i, u in enumerate(cand):
            s = hist.sequence(int(u))[-10:]
            if len(s):
                recent[i] = np.asarray(M[s].sum(0)).ravel()
        profiles["recent"] = recent
        for name, p in profiles.items():
            p = p / np.maximum(np.linalg.norm(p, axis=1, keepdims=True), 1e-9)
            F[f"{tag}_{name}"] = np.einsum("ukc,uc->uk", C, p)
    return {n: v.astype(np.float32) for n, v in F.items()}, top, y


def ndcg20(saved: SavedSeq, top: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Per-user valid NDCG@20 (the protocol's :func:`rank_metrics`) of each user's candidates
    ``top`` ordered by ``score``, ties kept in the blend's order; every other movie ranks below them."""
    from posterkg.gnn.evaluate import rank_metrics

    data, cand = saved.data, saved.cand
    order = np.argsort(-np.asarray(score), 1, kind="stable")
    place = np.empty_like(order)
    np.put_along_axis(place, order, np.arange(top.shape[1]), 1)      # 0 = first
    full = torch.full((len(cand), data.n_movies), float("-inf"))
    full.scatter_(1, torch.from_numpy(top), torch.from_numpy(-place.astype(np.float32)))
    return rank_metrics(full, data.seen("valid")[cand], data.relevant("valid")[cand], (20,))["ndcg@20"]


def main() -> None:
    from sklearn.ensemble import HistGradientBoostingClassifier

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("state")
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "rerank_probe.json"))
    a = ap.parse_args()
    t0 = time.time()
    saved = SavedSeq(a.state)
    alone, blend = choose_blend(saved)
    F, top, y = features(saved, a.k)
    nrel = np.diff(saved.data.relevant("valid")[saved.cand].indptr)
    names = list(F)
    X = np.stack([F[n] for n in names], -1)
    base = ndcg20(saved, top, -F["rank"])
    print(f"sequence alone {alone:.4f}; blend {blend}; top-{a.k} recall {float((y.sum(1) / nrel).mean()):.4f}", flush=True)
    own = ["blend", "blend_gap", "zs", "zi", "rank"]
    no_concepts = [n for n in names if not n.startswith("concepts_")]
    sets = {
        "all": names,
        "all but poster concepts": no_concepts,
        "all but concepts and genres": [n for n in no_concepts if not n.startswith("genres_")],
        "model's own + movie rating stats": own + ["log_pop", "mean_rating", "liked_share", "above_raters", "log_hist"],
        "model's own + popularity": own + ["log_pop"],
    }
    fold = np.random.default_rng(0).integers(0, a.folds, len(y))
    rows = []
    print(f"{'features':<36} {'n':>3} {'reranked':>9} {'blend':>7} {'change':>7} {'paired se':>9}")
    for label, feats in sets.items():
        idx = [names.index(n) for n in feats]
        pred = np.zeros(y.shape)
        for f in range(a.folds):
            fit, held = fold != f, fold == f
            clf = HistGradientBoostingClassifier(max_iter=300, learning_rate=0.05, max_leaf_nodes=31,
                                                 min_samples_leaf=100, random_state=0)
            clf.fit(X[fit][:, :, idx].reshape(-1, len(idx)), y[fit].ravel())
            pred[held] = clf.predict_proba(X[held][:, :, idx].reshape(-1, len(idx)))[:, 1].reshape(-1, a.k)
        r = ndcg20(saved, top, pred)
        d = r - base
        row = {"features": label, "names": feats, "reranked": float(r.mean()), "blend": float(base.mean()),
               "change_pct": float(100 * (r.mean() / base.mean() - 1)), "paired_se": float(d.std() / np.sqrt(len(d)))}
        rows.append(row)
        print(f"{label:<36} {len(feats):>3} {row['reranked']:>9.4f} {row['blend']:>7.4f} "
              f"{row['change_pct']:>+6.1f}% {row['paired_se']:>9.4f}", flush=True)
    out = {"state": a.state, "k": a.k, "folds": a.folds, "users": int(len(y)), "sequence_alone": alone,
           "blend": blend, "top_k_recall": float((y.sum(1) / nrel).mean()), "rows": rows,
           "seconds": time.time() - t0}
    Path(a.out).write_text(json.dumps(out, indent=1))
    print(f"wrote {a.out} ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
