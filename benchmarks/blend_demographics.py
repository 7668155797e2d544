"""Valid only: do the users' demographics add anything to posterkg-seq's blend?

    .venv/bin/python benchmarks/blend_demographics.py S.pt benchmarks/results/blend_demographics.json

ML-1M's ``users`` table has gender, age group and occupation; no posterkg model reads them. Before
building a user-side input into the model, this probe asks whether the signal survives the blend.
It loads a trained posterkg-seq (``accuracy_tuning.py --state``), chooses its EASE blend again
as ``fit`` does (``item_item_scale = "global"``, the registry's rule), and adds a third
standardised part: the log-lift of each movie in the user's demographic group,
``log P(liked movie | group) - log P(liked movie)`` over the history part's likes, smoothed
towards the overall rate with 5 pseudo-users. Groups: gender, age, occupation, gender + age, all
three. Prints valid NDCG@20 per (group, weight), and a held-out check as in ``blend_gate.py``:
the weight (0 allowed) is chosen on a random half of the users and its gain over the blend is
scored on the other half, 50 times over. Test is never read.
"""
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from saved_seq import SavedSeq  # noqa: E402

from posterkg.gnn.evaluate import rank_metrics  # noqa: E402
from posterkg.gnn.sequential import _standardise  # noqa: E402
from posterkg.store import open_store  # noqa: E402

GRID = (0.05, 0.1, 0.2, 0.3, 0.5, 0.8)
SMOOTH = 5.0
SPLITS = 50


def main(state: str, out: str) -> None:
    saved = SavedSeq(state)
    model, hist, cand, ev = saved.model, saved.hist, saved.cand, saved.ndcg20
    alone, info = saved.rechoose_blend({"item_item_scale": "global"})
    base = saved.standardised(lambda u, h: model.score(u, h))
    blend = info.valid["ndcg@20"]
    print(f"sequence alone {alone:.4f}; blend {blend:.4f} (w {model.cfg.item_item}, "
          f"lambda {model.cfg.item_item_l2:g})", flush=True)
    db = Path(__file__).resolve().parent / "results" / "accuracy-ml1m.duckdb"
    with open_store(db, read_only=True) as store:
        users = store.df("SELECT user_id, gender, age, occupation FROM users")
    users = users.set_index("user_id").reindex(saved.inputs.ids.user_ids)
    n, m = hist.n_users, hist.n_movies
    liked = np.zeros((n, m), np.float32)
    for u in range(n):
        a, b = hist.indptr[u], hist.indptr[u + 1]
        liked[u, hist.movies[a:b][hist.ratings[a:b] >= 4]] = 1.0
    rate = (liked.sum(0) + 1.0) / n                      # P(liked movie), one pseudo-like each
    cols = {k: users[k].astype(str).to_numpy() for k in ("gender", "age", "occupation")}
    cols["gender+age"] = np.char.add(np.char.add(cols["gender"], "|"), cols["age"])
    cols["all three"] = np.char.add(np.char.add(cols["gender+age"], "|"), cols["occupation"])
    seen, rel = saved.data.seen("valid")[cand], saved.data.relevant("valid")[cand]
    rng = np.random.default_rng(0)
    result = {"sequence": alone, "blend": blend, "w_ii": model.cfg.item_item,
              "lambda": model.cfg.item_item_l2, "grid": list(GRID), "runs": []}
    for name, g in cols.items():
        keys, gi = np.unique(g, return_inverse=True)
        counts = np.zeros((len(keys), m), np.float32)
        np.add.at(counts, gi, liked)
        size = np.bincount(gi, minlength=len(keys)).astype(np.float32)
        lift = np.log((counts + SMOOTH * rate) / (size[:, None] + SMOOTH)) - np.log(rate)
        z = _standardise(torch.from_numpy(lift[gi[cand]]))
        # per-user valid NDCG@20 at weight 0 (the blend) and each weight of the grid: the grid's
        # figures are their means, and the held-out check splits the users
        per = np.stack([rank_metrics(base + w * z, seen, rel, (20,))["ndcg@20"] for w in (0.0, *GRID)], 1)
        res = {w: float(v) for w, v in zip(GRID, per[:, 1:].mean(0))}
        best = max(res, key=res.get)
        gains = []
        for _ in range(SPLITS):
            half = rng.permutation(len(cand)) < len(cand) // 2
            pick = int(np.argmax(per[half].mean(0)))
            gains.append(float(per[~half, pick].mean() - per[~half, 0].mean()))
        result["runs"].append({"group": name, "groups": len(keys), "alone": ev(z), "blend": res,
                               "best_w": best, "best": res[best],
                               "held_out_gain": [float(np.mean(gains)), float(np.std(gains))]})
        print(f"{name:12s} {len(keys):4d} groups  alone {ev(z):.4f}  best {res[best]:.4f} at w {best}  "
              + " ".join(f"{res[w]:.4f}" for w in GRID)
              + f"  held out {np.mean(gains):+.4f} +- {np.std(gains):.4f}", flush=True)
    Path(out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
