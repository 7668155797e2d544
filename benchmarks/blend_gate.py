"""Valid only: should posterkg-seq's EASE weight depend on the user?

    .venv/bin/python benchmarks/blend_gate.py S.pt benchmarks/results/blend_gate.json

Loads a trained posterkg-seq (``accuracy_tuning.py --state``), computes its standardised
sequence scores and EASE part for the valid users once, and every user's valid NDCG@20 for
each blend weight w of a grid. Users are then binned by a feature of their history only (what is
known when predicting: history length, share of disliked ratings, days spanned by the last 10
ratings), and a weight is chosen per bin.

Honest by cross-fitting: the users are split in two random halves R times; each half chooses the
global weight and the per-bin weights, the other half scores them. Prints the held-out gain of
per-bin weights over one global weight (mean and spread over the R splits). Test is never read.
"""
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from saved_seq import SavedSeq  # noqa: E402

from posterkg.gnn.evaluate import rank_metrics  # noqa: E402

W = [0.0, 0.025, 0.05, 0.075, 0.1, 0.125, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0]
BINS = (2, 3, 4, 6)
SPLITS = 50


def main(state: str, out: str) -> None:
    saved = SavedSeq(state)
    model, data, hist, cand = saved.model, saved.data, saved.hist, saved.cand
    w0 = model.cfg.item_item
    zs, zii = saved.parts()
    seen, rel = data.seen("valid")[cand], data.relevant("valid")[cand]
    per = np.stack([rank_metrics(zs + w * zii, seen, rel, (20,))["ndcg@20"] for w in W], 1)   # [U, W]
    print("chosen w", w0, "global curve", dict(zip(W, per.mean(0).round(4).tolist())), flush=True)

    n = np.diff(hist.indptr)[cand]
    feats = {"log_n": np.log(n)}
    neg, span = np.zeros(len(cand)), np.zeros(len(cand))
    for i, u in enumerate(cand):
        a, b = hist.indptr[u], hist.indptr[u + 1]
        neg[i] = float((hist.ratings[a:b] <= 2).mean())
        ts = hist.ts[max(a, b - 10):b]
        span[i] = np.log1p((ts[-1] - ts[0]) / 86400.0)
    feats["span10_days"] = span
    feats["disliked_share"] = neg

    rng = np.random.default_rng(0)
    report = {"chosen_w": w0, "grid": W, "global": per.mean(0).tolist(), "features": {}, "fusions": {}}

    # other fusion rules (one global weight each, chosen on one half, scored on the other)
    def raw(scores_of):
        with torch.no_grad():
            return torch.cat([scores_of(torch.as_tensor(cand[a:a + 512]), hist) for a in range(0, len(cand), 512)])

    rs = raw(model.sequence_scores)
    ri = raw(model.item_item_scores)
    cs = float(rs.std(1).mean())
    ci = float(ri.std(1).mean())

    def ranks(x):
        return torch.argsort(torch.argsort(-x, 1), 1).float()

    fus = {"z(seq) + w z(ease)": (zs, zii, W),
           "seq/c + w z(ease)": ((rs - rs.mean(1, keepdim=True)) / cs, zii, W),
           "z(seq) + w ease/c": (zs, (ri - ri.mean(1, keepdim=True)) / ci, W),
           "seq/c + w ease/c": ((rs - rs.mean(1, keepdim=True)) / cs, (ri - ri.mean(1, keepdim=True)) / ci, W),
           "rrf(60): 1/(60+r_seq) + w/(60+r_ease)": (1.0 / (60.0 + ranks(rs)), 1.0 / (60.0 + ranks(ri)),
                                                    [0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0])}
    splits = [rng.random(len(cand)) < 0.5 for _ in range(SPLITS)]
    held = {}
    for name, (a, b, grid) in fus.items():
        pf = np.stack([rank_metrics(a + w * b, seen, rel, (20,))["ndcg@20"] for w in grid], 1)
        vals = []
        for half in splits:
            for fit, ho in ((half, ~half), (~half, half)):
                vals.append(pf[ho, int(pf[fit].mean(0).argmax())].mean())
        held[name] = np.array(vals)
        base = held["z(seq) + w z(ease)"]
        d = held[name] - base
        report["fusions"][name] = {"grid": grid, "curve": pf.mean(0).tolist(), "held_out": float(np.mean(vals)),
                                   "held_out_gain_vs_z": float(d.mean()), "gain_std": float(d.std())}
        print(f"{name:>40}: best in-sample {pf.mean(0).max():.4f} at w={grid[int(pf.mean(0).argmax())]}, "
              f"held-out {np.mean(vals):.4f} ({d.mean():+.5f} ± {d.std():.5f} vs the z rule)", flush=True)

    for name, f in feats.items():
        for nb in BINS:
            edges = np.quantile(f, np.linspace(0, 1, nb + 1)[1:-1])
            b = np.searchsorted(edges, f, side="right")
            gains, picks = [], []
            for _ in range(SPLITS):
                half = rng.random(len(cand)) < 0.5
                for fit, held in ((half, ~half), (~half, half)):
                    g = int(per[fit].mean(0).argmax())
                    wb = [int(per[fit & (b == k)].mean(0).argmax()) if (fit & (b == k)).any() else g
                          for k in range(nb)]
                    glob = per[held, g].mean()
                    binned = per[held, np.array(wb)[b[held]]].mean()
                    gains.append(binned - glob)
                    picks.append([W[i] for i in wb])
            row = {"bins": nb, "edges": edges.tolist(), "held_out_gain_mean": float(np.mean(gains)),
                   "held_out_gain_std": float(np.std(gains)),
                   "in_sample_best": float(sum(per[b == k].mean(0).max() * (b == k).sum() for k in range(nb)) / len(b)),
                   "per_bin_w_full": [W[int(per[b == k].mean(0).argmax())] for k in range(nb)]}
            report["features"].setdefault(name, []).append(row)
            print(f"{name:>15} bins={nb}: held-out gain {row['held_out_gain_mean']:+.5f} ± {row['held_out_gain_std']:.5f}"
                  f"  in-sample best {row['in_sample_best']:.4f} vs global {per.mean(0).max():.4f}"
                  f"  w per bin {row['per_bin_w_full']}", flush=True)
    Path(out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(sys.argv[1], sys.argv[2])
