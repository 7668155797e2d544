"""Valid only: how much would an ensemble of posterkg-seq seeds add?

    .venv/bin/python benchmarks/seed_ensemble.py S0.pt S1.pt S2.pt --out benchmarks/results/seed_ensemble.json

Loads trained posterkg-seq states (``accuracy_tuning.py --state``, one per seed, same
configuration), and for every subset of them (each seed alone, each pair, all) averages their
sequence scores (the ``members = k`` model made from the saved runs by ``adopt_members``, as
training it would give) and chooses the collaborative part again on valid exactly as ``fit`` does
(weight and EASE lambda together, on the global scale measured from the averaged scores).
Prints valid NDCG@20 of the averaged sequence scores alone and blended, per subset, and writes
them as JSON. Test is never read. An ensemble costs one training per member: this says what the
extra training time would buy, not something `make run` can afford on 2 cores.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("states", nargs="+", type=Path)
    p.add_argument("--db", type=Path, default=None, help="default: the accuracy benchmark's database")
    p.add_argument("--out", type=Path, default=HERE / "results" / "seed_ensemble.json")
    args = p.parse_args(argv)
    if len(args.states) < 2:
        p.error("give at least two saved states")

    import dataclasses

    import torch

    from posterkg.gnn import registry
    from saved_seq import SavedSeq

    t0 = time.perf_counter()
    saved = SavedSeq(str(args.states[0]), args.db)
    name, mcfg = saved.model.name, saved.model.cfg
    states = []
    for path in args.states:
        state = torch.load(path, weights_only=False)
        if state["model"] != name:
            raise SystemExit(f"{path}: a {state['model']} state, not {name}")
        states.append(state["state"])

    rows = []
    for k in range(1, len(states) + 1):
        for subset in itertools.combinations(range(len(states)), k):
            # the members = k model itself, its members the saved runs (SASRec.adopt_members)
            model = registry.build(name, saved.inputs, dataclasses.replace(mcfg, members=k), seed=0)
            model.adopt_members([states[i] for i in subset])
            model.eval()
            saved.model = model
            alone, info = saved.rechoose_blend()
            c = model.cfg
            row = {"members": [str(args.states[i]) for i in subset], "size": k,
                   "valid_ndcg@20_sequence": alone, "valid_ndcg@20_blended": info.valid["ndcg@20"],
                   "item_item": c.item_item, "item_item_l2": c.item_item_l2}
            rows.append(row)
            print(f"members {subset}: sequence alone {alone:.4f}, blended {row['valid_ndcg@20_blended']:.4f} "
                  f"(w {c.item_item}, lambda {c.item_item_l2:g})", flush=True)
    summary = {}
    for k in range(1, len(states) + 1):
        vals = [r["valid_ndcg@20_blended"] for r in rows if r["size"] == k]
        seq = [r["valid_ndcg@20_sequence"] for r in rows if r["size"] == k]
        summary[str(k)] = {"blended_mean": statistics.mean(vals), "sequence_mean": statistics.mean(seq),
                           "subsets": len(vals)}
        print(f"{k} member(s): blended mean {summary[str(k)]['blended_mean']:.4f}, "
              f"sequence alone mean {summary[str(k)]['sequence_mean']:.4f} over {len(vals)} subset(s)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"benchmark": "seed_ensemble", "split": "valid only; test never read",
                                    "rows": rows, "by_size": summary,
                                    "seconds": round(time.perf_counter() - t0, 1)}, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
