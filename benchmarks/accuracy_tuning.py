"""Valid-only tuning runs for the accuracy benchmark (seed 0, or ``--train seed=N``): train one
configuration, record its VALID NDCG@20 (never test) and time per epoch in
benchmarks/results/accuracy_tuning.json.

    .venv/bin/python benchmarks/accuracy_tuning.py --name pk-b32k-lr05 --model posterkg \
        --train batch_size=32768 lr=0.05 --mcfg neg_weight=0.1

Uses the cached benchmark database of benchmarks/accuracy.py (run that with --prepare-only first)
and its settings (configs/ml1m.toml + the registry), then the overrides given here.
Several processes may append to the same JSON (a file lock serialises the writes).

``--also-valid beam=100`` evaluates the trained model again on valid with a scoring-time setting
changed (each key=value on its own; only settings read when scoring, such as TIGER's ``beam``);
``--state F`` saves the trained weights and config (torch.save) for later checks.
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def _kv(items: list[str]) -> dict:
    out = {}
    for it in items:
        k, v = it.split("=", 1)
        out[k] = json.loads(v) if v not in ("true", "false") else v == "true"
    return out


def record(path: Path, entry: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(str(path) + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        doc = json.loads(path.read_text()) if path.is_file() else {
            "benchmark": "accuracy_tuning", "split": "valid only (seed 0); test never read", "runs": []}
        doc["runs"] = [r for r in doc["runs"] if r["name"] != entry["name"]] + [entry]
        path.write_text(json.dumps(doc, indent=1, default=float))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", required=True)
    p.add_argument("--model", default="posterkg")
    p.add_argument("--train", nargs="*", default=[], help="TrainConfig key=value (JSON values)")
    p.add_argument("--mcfg", nargs="*", default=[], help="the model's Config key=value (JSON values)")
    p.add_argument("--config", type=Path, default=HERE.parent / "configs" / "ml1m.toml",
                   help="settings below the overrides (as benchmarks/accuracy.py)")
    p.add_argument("--db", type=Path, default=RESULTS / "accuracy-ml1m.duckdb")
    p.add_argument("--out", type=Path, default=RESULTS / "accuracy_tuning.json")
    p.add_argument("--also-valid", nargs="*", default=[], metavar="KEY=VALUE",
                   help="after training, valid NDCG@20 again with this scoring-time model setting")
    p.add_argument("--state", type=Path, help="save the trained state_dict and model config here")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    os.environ.setdefault("POSTERKG_PROGRESS", "0")

    from posterkg.config import Config
    from posterkg.gnn import registry
    from posterkg.gnn.evaluate import evaluate_model
    from posterkg.gnn.inputs import assemble
    from posterkg.gnn.stage import feature_spec, model_configs
    from posterkg.gnn.train import train
    from posterkg.store import open_store

    tcfg, mcfg = model_configs(Config.load(args.config), args.model)
    cfg = dataclasses.replace(tcfg, **{"seed": 0, **_kv(args.train)})     # seed 0 unless --train seed=N
    mcfg = registry.model_config(args.model, {**dataclasses.asdict(mcfg), **_kv(args.mcfg)})
    t0 = time.perf_counter()
    with open_store(args.db, read_only=True) as store:
        inputs = assemble(store, features=feature_spec(mcfg)).inputs
        res = train(inputs, cfg, model_cfg=mcfg, verbose=args.verbose)
        also = {}
        trained_cfg = res.model.cfg
        res.model.eval()
        for item in args.also_valid:
            res.model.cfg = dataclasses.replace(trained_cfg, **_kv([item]))
            also[item] = evaluate_model(res.model, inputs.data, "valid")
            print(f"{args.name} with {item}: valid ndcg@20 {also[item]['ndcg@20']:.4f}", flush=True)
        res.model.cfg = trained_cfg
    if args.state:
        import torch

        torch.save({"model": args.model, "model_config": dataclasses.asdict(trained_cfg),
                    "state": res.model.state_dict()}, args.state)
    entry = {"name": args.name, "model": args.model, "train": dataclasses.asdict(cfg),
             "model_config": dataclasses.asdict(res.model.cfg),
             "changed": {**_kv(args.train), **_kv(args.mcfg)},
             "valid_ndcg@20": res.valid.get("ndcg@20"), "valid": res.valid, "best_epoch": res.best_epoch,
             "also_valid": also, "epochs_run": res.epochs_run, "seconds_per_epoch": res.seconds_per_epoch,
             "seconds": time.perf_counter() - t0,
             "valid_curve": [round(h.get("valid_ndcg@20", float("nan")), 4) for h in res.history],
             "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    record(args.out, entry)
    print(f"{args.name}: valid ndcg@20 {entry['valid_ndcg@20']:.4f} best epoch {res.best_epoch}/{res.epochs_run} "
          f"{res.seconds_per_epoch:.1f}s/epoch curve {entry['valid_curve']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
