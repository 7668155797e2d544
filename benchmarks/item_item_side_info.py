"""Valid-only check: does side information help the sequence models' collaborative part?

The collaborative part (``item_item``, posterkg/gnn/sequential.py) blends the sequence scores with
EASE's. EASE can take item side information as extra pseudo-users (Jeunen et al., "Closed-form
models for collaborative filtering with side-information"): the Gram matrix becomes
``X^T X + beta * T T^T`` with ``T`` the movie x tag matrix. Here ``T`` is a movie's genres or its
poster's visual concepts (the graph's ``genre`` / ``has`` edges, with their weights). A trained
model is loaded from ``accuracy_tuning.py --state F`` and scored on VALID only (test is never
read) for each beta, at a fixed lambda and blend weight.

    .venv/bin/python benchmarks/accuracy_tuning.py --name ref --model posterkg-seq --train threads=1 \\
        --state /tmp/seq.pt
    .venv/bin/python benchmarks/item_item_side_info.py --state /tmp/seq.pt --l2 2000 --weights 0.1 0.15
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
    p.add_argument("--state", type=Path, required=True, help="accuracy_tuning.py --state output")
    p.add_argument("--db", default="benchmarks/results/accuracy-ml1m.duckdb")
    p.add_argument("--l2", type=float, default=2000.0)
    p.add_argument("--weights", type=float, nargs="+", default=[0.1, 0.15])
    p.add_argument("--betas", type=float, nargs="+", default=[0.0, 10.0, 30.0, 100.0, 300.0])
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/item_item_side_info.json"))
    args = p.parse_args(argv)
    os.environ.setdefault("POSTERKG_PROGRESS", "0")

    import numpy as np
    import scipy.sparse as sp
    import torch

    from posterkg.gnn import registry
    from posterkg.gnn.evaluate import evaluate_model
    from posterkg.gnn.inputs import assemble
    from posterkg.gnn.neighbours import ease_matrix, gram_matrix
    from posterkg.gnn.stage import feature_spec
    from posterkg.store import open_store

    torch.set_num_threads(1)
    st = torch.load(args.state, weights_only=False)
    mcfg = registry.stored_model_config(st["model"], {**st["model_config"], "item_item": args.weights[0],
                                               "item_item_l2": args.l2})
    with open_store(args.db, read_only=True) as store:
        inputs = assemble(store, features=feature_spec(mcfg)).inputs
    model = registry.build(st["model"], inputs, mcfg)
    model.load_state_dict(st["state"], strict=False)
    model.eval()
    model._seq_cache = {}       # the sequence scores do not change between rows: compute them once
    gram = gram_matrix(inputs.data.history("valid"))

    def tags(rel: str):
        r = inputs.graph.get(rel)
        n = inputs.graph.sizes["concept" if rel == "has" else "genre"]
        t = sp.csr_matrix((r.weight.numpy(), (r.src.numpy(), r.dst.numpy())), shape=(inputs.n_movies, n))
        return torch.from_numpy((t @ t.T).toarray().astype(np.float64))

    rows = []
    for rel in ("genre", "has"):
        tt = tags(rel)
        for beta in args.betas:
            if beta == 0 and rel == "has":
                continue        # the same as genre with beta 0
            model.ii_S = ease_matrix(gram + beta * tt, args.l2)
            for w in args.weights:
                model.cfg.item_item = w
                v = evaluate_model(model, inputs.data, "valid")["ndcg@20"]
                rows.append({"side": rel if beta else "none", "beta": beta, "l2": args.l2, "weight": w,
                             "valid_ndcg@20": v})
                print(f"{rows[-1]['side']:<6} beta={beta:<6g} weight={w:<5g} valid NDCG@20 {v:.4f}", flush=True)
    args.out.write_text(json.dumps({"benchmark": "item_item_side_info", "model": st["model"],
                                    "state": str(args.state), "split": "valid", "rows": rows,
                                    "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")}, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
