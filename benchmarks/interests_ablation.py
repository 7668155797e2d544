"""Ablation: where the posterkg GNN's user -> concept edges come from.

    nice -n 10 .venv/bin/python benchmarks/interests_ablation.py --epochs 30 --threads 1

Arms (posterkg GNN, registry entry ``posterkg``, the [gnn]/[train.posterkg] settings of
``configs/ml1m.toml``, one seed per invocation (``--seed``; runs of other seeds in ``--out`` are
kept and averaged in ``summary``), early stopping on valid NDCG@20, test read once per arm):

* ``prefs``: ``user_prefs`` scores as the ``likes``/``dislikes`` edges (the default);
* ``stats``: the ``user_interests`` rows of the ``stats`` backend (``posterkg interests extract
  --backend stats``; edge weight = confidence, sign = polarity), i.e. ``[graph] user_interests =
  "stats"``;
* ``none``: no user -> concept edges at all and ``user_side = false`` (the item side, concept
  nodes and the interaction side stay);
* ``llm`` (only with ``--llm-users N``): a plumbing check, not an accuracy figure: the tiny
  *random-weights* Qwen2-VL of the tests extracts interests for N users through the ``hf``
  backend and the graph stage takes them (edges counted, no training): there is no real LLM on a
  CPU machine. A GPU user runs the ``llm`` arm for real with ``posterkg interests extract
  --backend vllm`` on the copy and ``--arms llm`` (trains with ``[graph] user_interests =
  "vllm"``).

The database is a COPY of the accuracy benchmark's prepared ML-1M database
(``benchmarks/results/accuracy-ml1m.duckdb``, never written): ``--db`` (default
``/work/cache/int.duckdb``, or ``$TMPDIR``). The GNN's input assembly (``posterkg.gnn.inputs``)
builds its ``likes``/``dislikes`` relations from ``user_prefs``; this script replaces them with
the selected ``user_interests`` rows in the assembled graph (same ids, same weight convention as
``posterkg.graphs.preferences.interest_scores_sql``). Writes
``benchmarks/results/interests_ablation.json`` after every arm.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE))

ARMS = ("prefs", "stats", "none", "llm")


def interest_edges(store, selector: str, horizon: str):
    """(user_id, concept_id, score) numpy arrays of the interests of ``selector``."""
    from posterkg.graphs.preferences import interest_scores_sql

    sql, params = interest_scores_sql(store, selector, horizon)
    return store.execute(f"SELECT * FROM ({sql}) WHERE score <> 0 ORDER BY user_id, concept_id",
                         params).fetchnumpy()


def with_user_concepts(graph, ids, edges):
    """A copy of ``graph`` whose likes/dislikes relations are ``edges`` (database ids)."""
    from posterkg.gnn.base import Graph
    from posterkg.gnn.inputs import add_user_concepts

    g = Graph(graph.sizes, {n: r for n, r in graph.relations.items() if n not in ("likes", "dislikes")})
    return add_user_concepts(g, ids, edges)


def prepare(src: Path, db: Path, fresh: bool) -> dict:
    """Copy the prepared database, extract the stats interests (all users) into the copy."""
    from posterkg.graphs import GraphConfig
    from posterkg.interests import InterestsConfig
    from posterkg.interests.runner import StatsGenerator, extract_interests
    from posterkg.store import open_store

    if fresh or not db.is_file():
        if not src.is_file():
            raise SystemExit(f"no prepared database at {src}: run benchmarks/accuracy.py --prepare-only")
        db.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, db)
    t0 = time.perf_counter()
    with open_store(db) as store:
        row = store.execute("SELECT config FROM graph_info ORDER BY built_at DESC LIMIT 1").fetchone()
        gc = GraphConfig(**json.loads(row[0]))
        s = extract_interests(store, StatsGenerator(), InterestsConfig(short_n=gc.short_n, batch_size=256))
        info = {"graph": dataclasses.asdict(gc), "stats_extract": {k: s[k] for k in ("selected", "done", "skipped", "failed")},
                "stats_extract_seconds": round(time.perf_counter() - t0, 1),
                "user_prefs": store.count("user_prefs"),
                "user_interests": {b: int(n) for b, n in store.execute(
                    "SELECT backend, count(*) FROM user_interests GROUP BY backend").fetchall()}}
    return info


def llm_plumbing(db: Path, n_users: int) -> dict:
    """The tiny random Qwen2-VL through hf for ``n_users`` users; the graph takes the run."""
    sys.path.insert(0, str(REPO / "tests"))
    import tempfile

    from tiny_vlm import build_tiny_qwen2_vl

    from posterkg.graphs.preferences import interest_key
    from posterkg.interests import InterestsConfig
    from posterkg.interests.generate import text_generator
    from posterkg.interests.runner import extract_interests
    from posterkg.store import open_store

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_tiny_qwen2_vl(Path(tmp) / "tiny")
        cfg = InterestsConfig(backend="hf", max_interests=4, max_evidence=2, context_tokens=3072,
                              current_k=3, batch_size=2)   # the settings of tests/test_interests.py
        gen = text_generator("hf", str(model_dir), {"device": "cpu"}, context_tokens=cfg.context_tokens)
        with open_store(db) as store:
            users = [u for (u,) in store.execute(
                "SELECT user_id FROM user_movie_edges GROUP BY user_id HAVING count(*) BETWEEN 20 AND 40 "
                "ORDER BY user_id LIMIT ?", [n_users]).fetchall()]
            s = extract_interests(store, gen, cfg, users=users)
            gen.close()
            run_id = store.scalar("SELECT run_id FROM interest_runs WHERE backend = 'hf' "
                                  "ORDER BY started_at DESC LIMIT 1")
            key = interest_key(store, run_id)
            rows = store.execute("SELECT horizon, polarity, count(*) FROM user_interests WHERE backend = ? "
                                 "AND model = ? AND vocab_version = ? AND spec_hash = ? GROUP BY ALL "
                                 "ORDER BY ALL", list(key)).fetchall()
            edges = {h: len(interest_edges(store, run_id, h)["user_id"]) for h in ("long", "short", "mix")}
    return {"arm": "llm", "what": "PLUMBING CHECK with a tiny RANDOM-WEIGHTS Qwen2-VL (not an accuracy figure)",
            "users": users, "extract": {k: s[k] for k in ("selected", "done", "failed", "failures")},
            "prompt_tokens_per_user": round(s["prompt_tokens_per_user"], 1),
            "output_tokens_per_user": round(s["output_tokens_per_user"], 1),
            "interests_stored": {f"{h} {p}": int(n) for h, p, n in rows},
            "graph_edges_by_pref_horizon": edges,
            "key": [key[0], "tests/tiny_vlm.py tiny random Qwen2-VL (temporary folder)", key[2], key[3]],
            "seconds": round(time.perf_counter() - t0, 1)}


def run_arm(store, cfg, arm: str, base, args) -> dict:
    import torch

    from posterkg.gnn.evaluate import evaluate_model
    from posterkg.gnn.stage import model_configs
    from posterkg.gnn.train import train

    tcfg, mcfg = model_configs(cfg, "posterkg")
    tcfg = dataclasses.replace(tcfg, seed=args.seed, threads=args.threads)
    graph = base.graph
    horizon = json.loads(store.execute(
        "SELECT config FROM graph_info ORDER BY built_at DESC LIMIT 1").fetchone()[0]).get("pref_horizon", "long")
    if arm == "stats" or arm == "llm":
        graph = with_user_concepts(graph, base.ids, interest_edges(store, args.llm_selector if arm == "llm" else "stats",
                                                                    horizon))
    elif arm == "none":
        graph = graph.without("likes", "dislikes")
        mcfg = dataclasses.replace(mcfg, user_side=False)
    inputs = dataclasses.replace(base, graph=graph)
    edges = {r: len(graph.get(r)) for r in ("likes", "dislikes", "has", "pos", "neg")}
    res = train(inputs, tcfg, model_cfg=mcfg, verbose=args.verbose)
    data = inputs.data
    with torch.no_grad():   # test read once per arm
        test = {"test": evaluate_model(res.model, data, "test"),
                "test_robust": evaluate_model(res.model, data, "test", robust=True)}
    return {"arm": arm, "seed": args.seed, "edges": edges, **test, "valid": res.valid,
            "best_epoch": res.best_epoch, "epochs_run": len(res.history),
            "seconds_per_epoch": res.seconds_per_epoch, "seconds": res.seconds,
            "config": dataclasses.asdict(tcfg), "model_config": dataclasses.asdict(res.model.cfg)}


def summarise(runs) -> list[dict]:
    import statistics

    out = []
    for arm in dict.fromkeys(r["arm"] for r in runs):
        rs = [r for r in runs if r["arm"] == arm]
        row = {"arm": arm, "seeds": sorted(r["seed"] for r in rs)}
        for m in ("recall@20", "ndcg@10", "ndcg@20"):
            vals = [r["test"][m] for r in rs]
            row[m] = statistics.fmean(vals)
            row[m + "_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
        row["valid_ndcg@20"] = statistics.fmean(r["valid"]["ndcg@20"] for r in rs)
        out.append(row)
    return out


def print_table(runs) -> None:
    print(f"{'arm':<8} {'seed':>4} {'likes':>8} {'dislikes':>8} {'Recall@20':>9} {'NDCG@10':>8} {'NDCG@20':>8} "
          f"{'robust':>8} {'valid':>7} {'best/run':>9} {'s/ep':>6}")
    for r in runs:
        if "test" not in r:
            continue
        t = r["test"]
        print(f"{r['arm']:<8} {r['seed']:>4} {r['edges']['likes']:>8} {r['edges']['dislikes']:>8} {t['recall@20']:>9.4f} "
              f"{t['ndcg@10']:>8.4f} {t['ndcg@20']:>8.4f} {r['test_robust']['ndcg@20']:>8.4f} "
              f"{r['valid']['ndcg@20']:>7.4f} {r['best_epoch']:>4}/{r['epochs_run']:<4} {r['seconds_per_epoch']:>6.1f}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", type=Path, default=RESULTS / "accuracy-ml1m.duckdb")
    p.add_argument("--db", type=Path, default=Path(os.environ.get("POSTERKG_ABLATION_DB", "/work/cache/int.duckdb")))
    p.add_argument("--fresh", action="store_true", help="copy the source database again")
    p.add_argument("--config", type=Path, default=REPO / "configs" / "ml1m.toml")
    p.add_argument("--out", type=Path, default=RESULTS / "interests_ablation.json")
    p.add_argument("--arms", nargs="*", default=["prefs", "stats", "none"], choices=ARMS,
                   help="arms to train (runs of other arms already in --out are kept)")
    p.add_argument("--epochs", type=int, default=None,
                   help="cap on epochs ([train.posterkg] epochs; default: the registry's 60)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--llm-users", type=int, default=0,
                   help="plumbing check: tiny random-weights Qwen2-VL through hf for N users (no training)")
    p.add_argument("--llm-selector", default="vllm",
                   help="arm llm: the [graph] user_interests selector of real LLM interests in --db")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    os.environ.setdefault("POSTERKG_PROGRESS", "0")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch

    torch.set_num_threads(args.threads)

    from posterkg.config import Config
    from posterkg.gnn.inputs import assemble
    from posterkg.store import open_store

    info = prepare(args.src, args.db, args.fresh)
    print("database:", json.dumps(info), flush=True)
    cfg = Config.load(args.config)
    cfg.data["db"] = str(args.db)
    if args.epochs:
        cfg.data.setdefault("train", {}).setdefault("posterkg", {})["epochs"] = args.epochs
    old = json.loads(args.out.read_text()) if args.out.is_file() else {}
    runs: list[dict] = [r for r in old.get("runs", []) if (r["arm"], r["seed"]) not in {(a, args.seed) for a in args.arms}]
    doc = {"benchmark": "interests_ablation", "source_db": str(args.src), "config": str(args.config),
           "database": info, "epochs_cap": args.epochs or "registry (60)",
           "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "threads": args.threads},
           "note": ("posterkg GNN, one seed per invocation (--seed; the others are kept), test read once per "
                    "(arm, seed); timings wall-clock on shared CPU cores (noisy)"), "runs": runs}
    if "llm_plumbing" in old:
        doc["llm_plumbing"] = old["llm_plumbing"]
    if args.llm_users:
        r = llm_plumbing(args.db, args.llm_users)
        print("llm plumbing:", json.dumps(r), flush=True)
        doc["llm_plumbing"] = r
        args.out.write_text(json.dumps(doc, indent=1, default=float))
    with open_store(args.db, read_only=True) as store:
        base = assemble(store).inputs
        for arm in args.arms:
            t0 = time.perf_counter()
            r = run_arm(store, cfg, arm, base, args)
            runs.append(r)
            print(f"{arm}: test ndcg@20 {r['test']['ndcg@20']:.4f} recall@20 {r['test']['recall@20']:.4f} "
                  f"valid {r['valid']['ndcg@20']:.4f} best {r['best_epoch']}/{r['epochs_run']} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
            args.out.write_text(json.dumps(doc, indent=1, default=float))
    runs.sort(key=lambda r: (ARMS.index(r["arm"]), r["seed"]))
    doc["summary"] = summarise(runs)
    print()
    print_table(runs)
    args.out.write_text(json.dumps(doc, indent=1, default=float))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
