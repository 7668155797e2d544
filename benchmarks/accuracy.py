"""Accuracy benchmark on real MovieLens 1M: every registered model under the fixed protocol.

    .venv/bin/python benchmarks/accuracy.py                         # every model x 3 seeds
    .venv/bin/python benchmarks/accuracy.py --models ease sasrec posterkg-seq --seeds 1
    .venv/bin/python benchmarks/accuracy.py --prepare-only          # only build the database
    # several processes, then one table:
    .venv/bin/python benchmarks/accuracy.py --models sasrec --out benchmarks/results/a.json &
    .venv/bin/python benchmarks/accuracy.py --models ease --out benchmarks/results/b.json
    .venv/bin/python benchmarks/accuracy.py --merge benchmarks/results/a.json benchmarks/results/b.json

Settings come from one config file (default ``configs/ml1m.toml``, the file ``make run`` uses):
its ``[tag]``/``[embed]``/``[schema]``/``[graph]`` build the database (cached as
``benchmarks/results/accuracy-<config>.duckdb``), its ``[gnn]``, ``[train.<model>]`` and
``[models.<model>]`` train each model with the registry's defaults below them
(:mod:`posterkg.gnn.registry`, chosen on valid; ``docs/gnn.md``). Every model is trained with
early stopping on valid NDCG@20 and read once on test, in three columns:

* ``test``: the shipped rule: the user's train + valid ratings are the known history (they are
  excluded from the ranking, as the protocol says);
* ``train only``: the same trained model scored with the train history only;
* ``robust``: ``test`` without the test ratings that share a second with the user's last valid
  rating (MovieLens rates in bursts and the protocol breaks ties by movie id).
* with ``--refit``, ``refit`` and ``refit robust``: the issue's other rule for the valid ratings,
  the model trained again from scratch on train + valid with the settings and epoch count chosen
  on valid (:func:`posterkg.gnn.train.refit`), then scored like ``test``. With ``--resume``, a
  finished run without these columns gets them without training its first model again (the
  first model's chosen epoch count is in the run; EASE/ItemKNN choose again, in seconds).
  ``benchmarks/refit_rule.py`` decides between the two rules on valid.
* ``continue`` and ``continue robust`` (when the config's ``[gnn] continue_epochs`` is > 0, as in
  ``configs/ml1m.toml``, or with ``--continue-epochs N``): the third rule, the one ``make run``
  ships: the state chosen on valid trained N more epochs on train + valid, so the valid ratings
  are training targets too (:func:`posterkg.gnn.train.continue_training`), then scored like
  ``test``. ``benchmarks/continue_rule.py`` decided it on valid. ``--resume`` does not add these
  columns to finished runs (they need the first model's state, which runs do not keep).

Prints Recall/NDCG@10/20 mean +- std over the seeds (deterministic models: one run), coverage@20,
seconds per epoch; writes ``benchmarks/results/accuracy.json`` after every run (``--resume``
keeps finished (model, seed) runs). Tuning happens on valid only.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
METRICS = ["recall@10", "recall@20", "ndcg@10", "ndcg@20", "coverage@20"]
COLUMNS = ("test", "test_trainonly", "test_robust", "test_refit", "test_refitrobust", "test_continue",
           "test_continuerobust")


def load_config(path: Path, db: Path, data_dir: Path):
    from posterkg.config import Config

    cfg = Config.load(path)
    cfg.data["db"] = str(db)
    cfg.data.setdefault("ingest", {})
    cfg.data["ingest"].update({"source": str(data_dir), "posters": str(data_dir / "posters")})
    return cfg


def prepare(cfg) -> dict:
    """Build (or reuse) the benchmark database through the pipeline stages up to ``graph``."""
    from posterkg.pipeline import run_pipeline
    from posterkg.store import open_store

    db = Path(cfg.data["db"])
    t0 = time.perf_counter()
    built = False
    if db.is_file():   # read-only when cached, so several benchmark processes can share it
        with open_store(db, read_only=True) as store:
            built = store.table_exists("graph_info") and store.count("graph_info") > 0
    with open_store(db, read_only=built) as store:
        if not built:
            run_pipeline(store, cfg, until="graph")
        info = {t: store.count(t) for t in ("movies", "ratings", "split", "raw_points", "concepts",
                                             "movie_concepts", "movie_concept_edges", "user_prefs")
                if store.table_exists(t)}
    info["prepare_seconds"] = round(time.perf_counter() - t0, 1)
    return info


def _inputs(store, mcfg, cache: dict):
    """The assembled inputs a model config asks for (dense features, semantic IDs), shared."""
    from posterkg.gnn.inputs import assemble
    from posterkg.gnn.stage import feature_spec

    feats = feature_spec(mcfg)
    key = json.dumps(feats, sort_keys=True)
    if key not in cache:
        cache[key] = assemble(store, features=feats).inputs
    return cache[key]


def run_one(store, cfg, kind: str, seed: int, args, cache: dict) -> dict:
    import torch

    from posterkg.gnn.evaluate import evaluate_model
    from posterkg.gnn.stage import model_configs
    from posterkg.gnn.train import train

    tcfg, mcfg = model_configs(cfg, kind)
    over = {k: v for k, v in (("epochs", args.epochs), ("threads", args.threads),
                              ("continue_epochs", args.continue_epochs)) if v is not None}
    tcfg = dataclasses.replace(tcfg, seed=seed, **over)
    inputs = _inputs(store, mcfg, cache)
    res = train(inputs, tcfg, model_cfg=mcfg, verbose=args.verbose)
    data = inputs.data
    with torch.no_grad():
        test = {"test": evaluate_model(res.model, data, "test"),
                "test_trainonly": evaluate_model(res.model, data, "test", history_of="valid"),
                "test_robust": evaluate_model(res.model, data, "test", robust=True)}
    run = {"model": kind, "seed": seed, **test, "valid": res.valid,
           "best_epoch": res.best_epoch, "epochs_run": len(res.history),
           "seconds_per_epoch": res.seconds_per_epoch, "seconds": res.seconds,
           "config": dataclasses.asdict(tcfg), "model_config": dataclasses.asdict(res.model.cfg)}
    if args.refit:
        run.update(refit_columns(inputs, res, args))
    if tcfg.continue_epochs:
        run.update(continue_columns(inputs, res, tcfg.continue_epochs, args))
    return run


def continue_columns(inputs, first, epochs: int, args) -> dict:
    """The ``continue`` columns of one run: ``first``'s chosen state trained ``epochs`` more on
    train + valid."""
    from posterkg.gnn.train import continue_training

    more = continue_training(inputs, first, epochs, verbose=args.verbose)
    return {**_test_columns(more.model, inputs.data, "continue"),
            "continue_epochs": epochs, "continue_seconds": round(more.seconds - first.seconds, 1)}


def _test_columns(model, data, rule: str) -> dict:
    """``test_<rule>`` and ``test_<rule>robust``: the model's test metrics, all and robust."""
    import torch

    from posterkg.gnn.evaluate import evaluate_model

    with torch.no_grad():
        return {f"test_{rule}": evaluate_model(model, data, "test"),
                f"test_{rule}robust": evaluate_model(model, data, "test", robust=True)}


def refit_columns(inputs, first, args) -> dict:
    """The ``refit`` columns of one run: ``first``'s model trained again on train + valid."""
    from posterkg.gnn.train import refit

    again = refit(inputs, first, verbose=args.verbose)
    return {**_test_columns(again.model, inputs.data, "refit"),
            "refit_epochs": len(again.history), "refit_seconds": again.seconds}


def add_refit(store, run: dict, args, cache: dict) -> dict:
    """A finished run's ``refit`` columns, with the run's recorded settings. Models with epochs
    are refit for the run's recorded best epoch (training is deterministic for a seed on one
    device and thread count, so the first model need not be trained again); EASE/ItemKNN/MostPop
    choose again (seconds)."""
    from posterkg.gnn import registry
    from posterkg.gnn.train import TrainConfig, TrainResult, train

    kind = run["model"]
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    tcfg = TrainConfig(**{k: v for k, v in run["config"].items() if k in known})
    if args.threads is not None:
        tcfg = dataclasses.replace(tcfg, threads=args.threads)
    mcfg = registry.stored_model_config(kind, run["model_config"])
    inputs = _inputs(store, mcfg, cache)
    model = registry.build(kind, inputs, mcfg, seed=tcfg.seed)
    if model.trainer == "none" or hasattr(model, "_grid"):
        first = train(inputs, tcfg, model_cfg=mcfg)
    else:
        first = TrainResult(model, tcfg, [], int(run["best_epoch"]), run["valid"], 0.0, 0.0, mcfg)
    return {**run, **refit_columns(inputs, first, args)}


def summarise(runs: list[dict]) -> list[dict]:
    rows = []
    for kind in dict.fromkeys(r["model"] for r in runs):
        rs = [r for r in runs if r["model"] == kind]
        row = {"model": kind, "seeds": len(rs)}
        for col in COLUMNS:
            for m in METRICS:
                vals = [r[col][m] for r in rs if col in r]
                if not vals:
                    continue
                name = m if col == "test" else f"{col.split('_')[1]}:{m}"
                row[name] = statistics.fmean(vals)
                row[name + "_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
        row["valid_ndcg@20"] = statistics.fmean(r["valid"]["ndcg@20"] for r in rs)
        row["s_per_epoch"] = statistics.fmean(r["seconds_per_epoch"] for r in rs)
        row["epochs"] = statistics.fmean(r["epochs_run"] for r in rs)
        rows.append(row)
    return rows


def print_table(rows: list[dict]) -> None:
    head = (f"{'model':<22} {'Recall@10':>15} {'Recall@20':>15} {'NDCG@10':>15} {'NDCG@20':>15} "
            f"{'Cov@20':>6} {'NDCG@20 train-only':>18} {'NDCG@20 robust':>15} {'NDCG@20 refit':>14} {'NDCG@20 cont.':>14} {'valid':>7} "
            f"{'s/ep':>6} {'ep':>5}")
    print(head)
    print("-" * len(head))
    for r in rows:
        cells = [f"{r[m]:.4f}±{r[m + '_std']:.4f}" for m in METRICS[:4]]
        print(f"{r['model']:<22} " + " ".join(f"{c:>15}" for c in cells)
              + f" {r['coverage@20']:>6.3f} {r.get('trainonly:ndcg@20', float('nan')):>18.4f}"
              f" {r.get('robust:ndcg@20', float('nan')):>15.4f} {r.get('refit:ndcg@20', float('nan')):>14.4f}"
              f" {r.get('continue:ndcg@20', float('nan')):>14.4f}"
              f" {r['valid_ndcg@20']:>7.4f}"
              f" {r['s_per_epoch']:>6.1f} {r['epochs']:>5.1f}")


def main(argv=None) -> int:
    from posterkg.gnn.registry import MODELS, REGISTRY

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "ml-1m")
    p.add_argument("--config", type=Path, default=REPO / "configs" / "ml1m.toml")
    p.add_argument("--db", type=Path, default=None, help="default: benchmarks/results/accuracy-<config>.duckdb")
    p.add_argument("--out", type=Path, default=RESULTS / "accuracy.json")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--seeds", type=int, default=3, help="seeds of stochastic models (deterministic: 1)")
    p.add_argument("--only-seeds", type=int, nargs="+", default=None,
                   help="run only these seeds (e.g. one seed per process, then --merge)")
    p.add_argument("--epochs", type=int, default=None, help="override every model's epoch cap")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--merge", nargs="+", type=Path, default=None,
                   help="only merge the runs of these result files into --out and print the table")
    p.add_argument("--prepare-only", action="store_true")
    p.add_argument("--resume", action="store_true", help="keep finished (model, seed) runs of --out")
    p.add_argument("--refit", action="store_true",
                   help="also refit each model on train + valid (the refit columns); with --resume, "
                        "finished runs of --models get them too")
    p.add_argument("--continue-epochs", type=int, default=None,
                   help="the continue columns with this many epochs on train + valid (0: none) "
                        "[default: the config's [gnn] continue_epochs]")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    os.environ.setdefault("POSTERKG_PROGRESS", "0")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.merge:
        return merge(args)
    if not (args.data / "ratings.dat").is_file():
        print(f"no MovieLens at {args.data}", file=sys.stderr)
        return 2
    db = args.db or RESULTS / f"accuracy-{args.config.stem}.duckdb"
    cfg = load_config(args.config, db, args.data)
    info = prepare(cfg)
    print("database:", json.dumps(info))
    if args.prepare_only:
        return 0

    from posterkg.store import open_store

    runs: list[dict] = []
    if args.resume and args.out.is_file():
        runs = json.loads(args.out.read_text()).get("runs", [])
    done = {(r["model"], r["seed"]) for r in runs}
    cache: dict = {}
    with open_store(db, read_only=True) as store:
        if args.refit:       # finished runs of the asked models without the refit columns
            for i, r in enumerate(runs):
                if r["model"] in args.models and "test_refit" not in r and (
                        args.only_seeds is None or r["seed"] in args.only_seeds):
                    runs[i] = add_refit(store, r, args, cache)
                    print(f"{r['model']:<22} seed {r['seed']}: refit test ndcg@20 "
                          f"{runs[i]['test_refit']['ndcg@20']:.4f} (fold-in {r['test']['ndcg@20']:.4f}) "
                          f"after {runs[i]['refit_epochs']} epochs", flush=True)
                    _write(args, info, runs)
        for seed in (args.only_seeds if args.only_seeds is not None else range(args.seeds)):
            for kind in args.models:
                if (kind, seed) in done or (seed > 0 and not REGISTRY[kind].stochastic):
                    continue
                r = run_one(store, cfg, kind, seed, args, cache)
                runs.append(r)
                t = r["test"]
                print(f"{kind:<22} seed {seed}: test ndcg@20 {t['ndcg@20']:.4f} (train-only "
                      f"{r['test_trainonly']['ndcg@20']:.4f}, robust {r['test_robust']['ndcg@20']:.4f}) "
                      f"valid {r['valid']['ndcg@20']:.4f} best epoch {r['best_epoch']}/{r['epochs_run']} "
                      f"{r['seconds_per_epoch']:.1f}s/epoch"
                      + (f", refit {r['test_refit']['ndcg@20']:.4f}" if "test_refit" in r else "")
                      + (f", continue {r['test_continue']['ndcg@20']:.4f} (robust "
                         f"{r['test_continuerobust']['ndcg@20']:.4f})" if "test_continue" in r else ""), flush=True)
                _write(args, info, runs)
    rows = _write(args, info, runs)
    print()
    print_table(rows)
    print(f"\nwrote {args.out}")
    return 0


def merge(args) -> int:
    from posterkg.gnn.registry import MODELS

    runs, docs = {}, []
    for path in args.merge:
        doc = json.loads(path.read_text())
        docs.append(doc)
        for r in doc.get("runs", []):
            runs[(r["model"], r["seed"])] = r
    order = {m: i for i, m in enumerate(MODELS)}
    ordered = sorted(runs.values(), key=lambda r: (order.get(r["model"], 99), r["seed"]))
    rows = _write(args, docs[0].get("database"), ordered)
    print_table(rows)
    print(f"\nwrote {args.out} ({len(ordered)} runs from {len(args.merge)} files)")
    return 0


def _write(args, info, runs) -> list[dict]:
    rows = summarise(runs)
    args.out.write_text(json.dumps({
        "benchmark": "accuracy", "data": str(getattr(args, "data", "")), "config": str(getattr(args, "config", "")),
        "database": info, "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "note": "timings are wall-clock on shared CPU cores: noisy; test read once per run",
        "summary": rows, "runs": runs}, indent=1, default=float))
    return rows


if __name__ == "__main__":
    sys.exit(main())
