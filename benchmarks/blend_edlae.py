"""Valid only: would EDLAE (Steck 2020) serve posterkg-seq's collaborative part better than EASE?

    .venv/bin/python benchmarks/blend_edlae.py S.pt benchmarks/results/blend_edlae.json

EDLAE is EASE whose L2 penalty on item i gains ``p / (1 - p) * G_ii`` (the closed form of
training the item-item model with dropout p on its inputs, emphasised on the dropped ones; zero
diagonal as EASE): popular movies are regularised more. p = 0 is EASE. This loads a trained
posterkg-seq (``accuracy_tuning.py --state``), computes its sequence scores for the valid users
once, and blends each (p, lambda) matrix's scores on one global scale as the model does
(``sequence + w * r * X B``, r the ratio of the two parts' mean per-user spreads, here over the
valid users) for weights w. Prints valid NDCG@20 per (p, lambda, w) and writes them as JSON;
test is never read.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from saved_seq import SavedSeq  # noqa: E402

DROPOUTS = (0.0, 0.1, 0.25, 0.5)
LAMBDAS = (500.0, 1000.0, 2000.0, 4000.0, 8000.0, 16000.0)
WEIGHTS = (0.05, 0.075, 0.1, 0.15, 0.2)


def edlae(gram: torch.Tensor, l2: float, p: float) -> torch.Tensor:
    """EDLAE's item-item matrix (zero diagonal) from the float64 Gram matrix: EASE's solve
    (:func:`~posterkg.gnn.neighbours.ease_matrix`) with ``p / (1 - p) * G_ii`` more on each
    diagonal entry; p = 0: EASE."""
    from posterkg.gnn.neighbours import ease_matrix

    return ease_matrix(gram + torch.diag(p / (1.0 - p) * torch.diagonal(gram)), l2)


def main() -> int:
    from posterkg.gnn.neighbours import gram_matrix

    state, out = sys.argv[1], Path(sys.argv[2])
    saved = SavedSeq(state)
    model, hist, cand = saved.model, saved.hist, saved.cand
    with torch.no_grad():
        seq = torch.cat([model.sequence_scores(torch.as_tensor(cand[a:a + 512]), hist)
                         for a in range(0, len(cand), 512)])
    x = torch.from_numpy(hist.csr()[cand].toarray().astype(np.float32))
    gram = gram_matrix(hist)
    alone = saved.ndcg20(seq)
    print(f"sequence alone: valid NDCG@20 {alone:.4f}; saved blend w {model.cfg.item_item} "
          f"lambda {model.cfg.item_item_l2}", flush=True)
    rows = []
    for p in DROPOUTS:
        for l2 in LAMBDAS:
            ii = x @ edlae(gram, l2, p)
            r = float(seq.std(1).mean()) / max(float(ii.std(1).mean()), 1e-12)
            for w in WEIGHTS:
                ndcg = saved.ndcg20(seq + w * r * ii)
                rows.append({"dropout": p, "lambda": l2, "weight": w, "valid_ndcg@20": ndcg})
                print(f"p={p:.2f} lambda={l2:7.0f} w={w:.3f}: valid NDCG@20 {ndcg:.4f}", flush=True)
    best = {p: max((r for r in rows if r["dropout"] == p), key=lambda r: r["valid_ndcg@20"]) for p in DROPOUTS}
    for p, r in best.items():
        print(f"best at p={p:.2f}: {r['valid_ndcg@20']:.4f} (lambda {r['lambda']:.0f}, w {r['weight']})", flush=True)
    out.write_text(json.dumps({"state": str(state), "sequence_alone": alone, "rows": rows,
                               "best": {str(p): r for p, r in best.items()}}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
