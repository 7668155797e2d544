"""Which test-time rule, decided on valid: fold-in or refit (issue: "use the better rule").

Under the temporal protocol the valid ratings are the most recent known ones when test is
predicted. Two rules use them: **fold-in** (the model trained on train reads train + valid as the
user's history at test time, no retraining: the harness's default) and **refit** (the model is
trained again from scratch on train + valid with the settings and epoch count chosen on valid,
:func:`posterkg.gnn.train.refit`). To choose between them without reading test, this script plays
the protocol one period earlier (:meth:`~posterkg.gnn.data.Interactions.shifted_view`): each
user's train rows are split like the protocol into inner train / inner valid, and the real valid
part plays test. The model is trained on inner train with early stopping on inner valid, scored
on valid with fold-in, then refit on inner train + inner valid (= train) for the chosen epoch
count and scored on valid again. Test is never read.

    .venv/bin/python benchmarks/refit_rule.py --models posterkg-seq sasrec ease --threads 1

Uses the accuracy benchmark's cached database (``benchmarks/accuracy.py --prepare-only``) and
configs/ml1m.toml's settings; appends its rows to ``benchmarks/results/refit_rule.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
METRICS = ("recall@10", "recall@20", "ndcg@10", "ndcg@20")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["posterkg-seq"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--config", type=Path, default=HERE.parent / "configs" / "ml1m.toml")
    p.add_argument("--db", type=Path, default=RESULTS / "accuracy-ml1m.duckdb")
    p.add_argument("--out", type=Path, default=RESULTS / "refit_rule.json")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    os.environ.setdefault("POSTERKG_PROGRESS", "0")
    import torch

    from posterkg.config import Config
    from posterkg.gnn.evaluate import evaluate_model
    from posterkg.gnn.inputs import assemble
    from posterkg.gnn.stage import feature_spec, model_configs
    from posterkg.gnn.train import inputs_on, refit, train
    from posterkg.store import open_store

    if not args.db.is_file():
        print(f"no database at {args.db}: run benchmarks/accuracy.py --prepare-only first", file=sys.stderr)
        return 2
    cfg = Config.load(args.config)
    doc = json.loads(args.out.read_text()) if args.out.is_file() else {
        "benchmark": "refit_rule", "protocol": "shifted one period: inner train/valid from train, valid plays test; "
                                               "test never read", "runs": []}
    for kind in args.models:
        tcfg, mcfg = model_configs(cfg, kind)
        with open_store(args.db, read_only=True) as store:
            inputs = assemble(store, features=feature_spec(mcfg)).inputs
        shifted = inputs_on(inputs, inputs.data.shifted_view())    # graph edges: inner train only
        data = shifted.data
        for seed in args.seeds:
            over = {"seed": seed, **({"threads": args.threads} if args.threads else {})}
            t0 = time.perf_counter()
            first = train(shifted, dataclasses.replace(tcfg, **over), model_cfg=mcfg, verbose=args.verbose)
            with torch.no_grad():
                fold = evaluate_model(first.model, data, "test")
            t1 = time.perf_counter()
            again = refit(shifted, first, verbose=args.verbose)
            with torch.no_grad():
                ref = evaluate_model(again.model, data, "test")     # same history, seen and relevant sets
            row = {"model": kind, "seed": seed, "best_epoch": first.best_epoch,
                   "inner_valid_ndcg@20": first.valid.get("ndcg@20"),
                   "foldin": {k: fold[k] for k in METRICS}, "refit": {k: ref[k] for k in METRICS},
                   "n_users": fold.get("n_users"), "seconds_first": round(t1 - t0, 1),
                   "seconds_refit": round(time.perf_counter() - t1, 1),
                   "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
            doc["runs"] = [r for r in doc["runs"] if (r["model"], r["seed"]) != (kind, seed)] + [row]
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(doc, indent=1, default=float))
            print(f"{kind} seed {seed}: best inner epoch {first.best_epoch}; valid NDCG@20 fold-in "
                  f"{fold['ndcg@20']:.4f}, refit {ref['ndcg@20']:.4f} "
                  f"({(ref['ndcg@20'] / fold['ndcg@20'] - 1) * 100:+.1f}%)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
