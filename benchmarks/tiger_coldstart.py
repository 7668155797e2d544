"""TIGER on the cold-start split: can a model generate movies nobody rated in training?

    nice -n 10 .venv/bin/python benchmarks/tiger_coldstart.py --db /work/cache/sem.duckdb \\
        --config configs/ml1m.toml --models tiger tiger-text --epochs 5 --out benchmarks/results/tiger_coldstart.json

``--db``: a database with ratings and ``semantic_ids`` (``posterkg semantic-ids build``); it is
copied under ``--work`` and given the visual-features issue's cold-start split
(``make_split(store, "coldstart", 0.1, 0.1, seed=0)``: 10% + 10% of the movies held out whole
for valid and test). The semantic IDs come from the movies' features only (no ratings), so the
held-out movies have theirs. Each model trains with its registry/config settings, early stopping on
the cold-start protocol's valid NDCG@20 (the valid movies are cold too), and is read on test with
:func:`posterkg.evaluation.coldstart_eval` (each user with a relevant cold test movie; every cold
test movie ranked, nothing else): TIGER's constrained beam search runs over the candidates only
(``TIGER.score(..., candidates=...)``), so the top 50 of the cold movies are generated. The
random fallback (:func:`posterkg.evaluation.random_scores`) is the floor row.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--db", type=Path, required=True)
    p.add_argument("--config", type=Path, default=REPO / "configs" / "ml1m.toml")
    p.add_argument("--work", type=Path, default=HERE / "results" / "tiger-coldstart")
    p.add_argument("--models", nargs="+", default=["tiger", "tiger-text"])
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=HERE / "results" / "tiger_coldstart.json")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    os.environ.setdefault("POSTERKG_PROGRESS", "0")
    import numpy as np
    import torch

    from posterkg.config import Config
    from posterkg.evaluation.coldstart import coldstart_eval, random_scores
    from posterkg.gnn.inputs import assemble
    from posterkg.gnn.stage import feature_spec, model_configs
    from posterkg.gnn.train import build_model
    from posterkg.split import make_split
    from posterkg.store import open_store

    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    db = args.work / "coldstart.duckdb"
    if not db.is_file():
        shutil.copy(args.db, db)
        with open_store(db) as store:
            make_split(store, "coldstart", 0.1, 0.1, seed=0)
    cfg = Config.load(args.config)
    runs = []
    with open_store(db, read_only=True) as store:
        for kind in args.models:
            tcfg, mcfg = model_configs(cfg, kind)
            inputs = assemble(store, features=feature_spec(mcfg)).inputs
            data = inputs.data
            cold = np.unique(data.parts["test"].movies)
            cold_valid = np.unique(data.parts["valid"].movies)
            for seed in range(args.seeds):
                over = {"epochs": args.epochs} if args.epochs else {}
                tc = dataclasses.replace(tcfg, seed=seed, threads=args.threads, **over)
                model = build_model(tc, inputs, mcfg)
                vh = data.history("valid")

                def valid_fn(m):
                    # the cold-start protocol on valid (its movies are cold too): the full-catalogue
                    # valid of the harness would be ~0 for a model that never generates them
                    m.eval()
                    with torch.no_grad():
                        return coldstart_eval(lambda u: m.score(u, vh, candidates=cold_valid), data, "valid")

                t0 = time.perf_counter()
                torch.manual_seed(seed)
                info = model.fit(inputs, tc, valid_fn, verbose=args.verbose)
                model.eval()
                hist = data.history("test")
                with torch.no_grad():
                    test = coldstart_eval(lambda u: model.score(u, hist, candidates=cold), data, "test")
                runs.append({"model": kind, "seed": seed, "test": test, "valid": info.valid,
                             "best_epoch": info.best_epoch, "epochs_run": len(info.history),
                             "history": info.history, "seconds_per_epoch": info.seconds_per_epoch,
                             "seconds": time.perf_counter() - t0,
                             "train_config": dataclasses.asdict(tc), "model_config": dataclasses.asdict(model.cfg)})
                print(f"{kind:<12} seed {seed}: cold-start test ndcg@20 {test['ndcg@20']:.4f} recall@20 "
                      f"{test['recall@20']:.4f} ({test['n_users']} users, {test['n_candidates']} cold movies)",
                      flush=True)
                args.out.write_text(json.dumps({"benchmark": "tiger_coldstart", "db": str(args.db),
                                                "config": str(args.config), "runs": runs}, indent=1, default=float))
        rnd = coldstart_eval(random_scores(inputs.n_movies, 0), data, "test")
    print(f"{'random':<12}        : cold-start test ndcg@20 {rnd['ndcg@20']:.4f} recall@20 {rnd['recall@20']:.4f}")
    args.out.write_text(json.dumps({"benchmark": "tiger_coldstart", "db": str(args.db), "config": str(args.config),
                                    "random": rnd, "runs": runs}, indent=1, default=float))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
