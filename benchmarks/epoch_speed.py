"""Seconds per training epoch of several models side by side, in one process, rotated rounds.

    .venv/bin/python benchmarks/epoch_speed.py                       # lightgcn posterkg sasrec posterkg-seq
    .venv/bin/python benchmarks/epoch_speed.py --models lightgcn posterkg-seq --rounds 3
    # a variant: model settings after "@" (JSON values), e.g. the one-shot softmax
    .venv/bin/python benchmarks/epoch_speed.py --models lightgcn posterkg-seq posterkg-seq@softmax_chunk=0
    # keys of the training loop's TrainConfig (batch_size, lr, ...) go to training instead
    .venv/bin/python benchmarks/epoch_speed.py --models sasrec tiger tiger@encoder=full,history_input=codes,code_softmax=full,batch_size=256

Each round trains every model for exactly one epoch (no early stopping, no evaluation) in a
rotated order, so machine noise hits every model alike; prints min and median seconds per epoch
and each model's ratio to the first model's (the LightGCN baseline), and writes
benchmarks/results/epoch_speed.json. Uses the accuracy benchmark's cached database
(``benchmarks/accuracy.py --prepare-only``) and configs/ml1m.toml's settings.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def variant(label: str) -> tuple[str, dict]:
    """``"kind@key=value,key=value"`` -> ``(kind, {key: value})`` (values read as JSON, else text)."""
    kind, _, rest = label.partition("@")
    over = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise SystemExit(f"{label}: expected key=value after @, got {item!r}")
        try:
            over[key] = json.loads(value)
        except json.JSONDecodeError:
            over[key] = value
    return kind, over


def _split(configs, over: dict) -> tuple[dict, dict]:
    """``over`` as (TrainConfig keys, model Config keys); a key of neither is an error."""
    tcfg, mcfg = configs
    t_keys = {f.name for f in dataclasses.fields(tcfg)}
    m_keys = {f.name for f in dataclasses.fields(mcfg)}
    unknown = sorted(set(over) - t_keys - m_keys)
    if unknown:
        raise SystemExit(f"unknown setting(s) {', '.join(unknown)}: neither the model's Config nor TrainConfig")
    return ({k: v for k, v in over.items() if k in t_keys and k not in m_keys},
            {k: v for k, v in over.items() if k in m_keys})


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["lightgcn", "posterkg", "sasrec", "posterkg-seq"])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    p.add_argument("--db", type=Path, default=HERE / "results" / "accuracy-ml1m.duckdb")
    p.add_argument("--config", type=Path, default=HERE.parent / "configs" / "ml1m.toml")
    p.add_argument("--out", type=Path, default=HERE / "results" / "epoch_speed.json")
    args = p.parse_args(argv)
    os.environ.setdefault("POSTERKG_PROGRESS", "0")
    import torch

    from posterkg.config import Config
    from posterkg.gnn.inputs import assemble
    from posterkg.gnn.stage import feature_spec, model_configs
    from posterkg.gnn.train import train
    from posterkg.store import open_store

    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.db.is_file():
        print(f"no database at {args.db}: run benchmarks/accuracy.py --prepare-only first", file=sys.stderr)
        return 2
    cfg = Config.load(args.config)
    variants = {label: variant(label) for label in args.models}
    with open_store(args.db, read_only=True) as store:
        # each model's own inputs (dense features, semantic IDs: feature_spec), shared when equal
        by_spec: dict[str, object] = {}
        inputs_of = {}
        for label, (kind, over) in variants.items():
            configs = model_configs(cfg, kind)
            spec = feature_spec(dataclasses.replace(configs[1], **_split(configs, over)[1]))
            key = json.dumps(spec, sort_keys=True)
            if key not in by_spec:
                by_spec[key] = assemble(store, features=spec).inputs
            inputs_of[label] = by_spec[key]
    times: dict[str, list[float]] = {m: [] for m in args.models}
    targets: dict[str, int] = {}       # training targets per epoch, where the model logs them
    width = max(16, *(len(m) for m in args.models))
    load = []
    for r in range(args.rounds):
        order = args.models[r % len(args.models):] + args.models[: r % len(args.models)]
        for label in order:
            kind, over = variants[label]
            tcfg, mcfg = model_configs(cfg, kind)
            t_over, m_over = _split((tcfg, mcfg), over)
            mcfg = dataclasses.replace(mcfg, **m_over)
            tcfg = dataclasses.replace(tcfg, **t_over)
            tcfg = dataclasses.replace(tcfg, epochs=1, patience=1, eval_every=10 ** 6, seed=r)
            t0 = time.perf_counter()
            res = train(inputs_of[label], tcfg, model_cfg=mcfg)
            times[label].append(res.seconds_per_epoch)
            if res.history and "targets" in res.history[0]:
                targets[label] = int(res.history[0]["targets"])
            print(f"round {r} {label:<{width}} {res.seconds_per_epoch:6.2f} s/epoch "
                  f"({time.perf_counter() - t0:.1f} s with set-up)", flush=True)
        load.append(os.getloadavg()[0])
    base = statistics.median(times[args.models[0]])
    rows = [{"model": m, "min_s": min(v), "median_s": statistics.median(v),
             "ratio_to_" + args.models[0]: statistics.median(v) / base} for m, v in times.items()]
    for row in rows:        # models whose epoch is not one pass (TIGER's sampled targets): per 100k targets
        if row["model"] in targets:
            row["targets"] = targets[row["model"]]
            row["median_s_per_100k_targets"] = row["median_s"] * 1e5 / targets[row["model"]]
    print(f"\n{'model':<{width}}{'min s/epoch':>12}{'median':>10}{'x ' + args.models[0]:>16}{'targets':>10}"
          f"{'s/100k targets':>16}")
    for row in rows:
        extra = (f"{row['targets']:>10,}{row['median_s_per_100k_targets']:>16.2f}" if "targets" in row else "")
        print(f"{row['model']:<{width}}{row['min_s']:>12.2f}{row['median_s']:>10.2f}"
              f"{row['ratio_to_' + args.models[0]]:>16.2f}" + extra)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"benchmark": "epoch_speed", "rounds": args.rounds, "threads": torch.get_num_threads(),
                                    "cpus": os.cpu_count(), "load_average": load, "rows": rows,
                                    "seconds": times}, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
