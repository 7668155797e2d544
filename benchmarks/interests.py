"""Interest extraction throughput: users/s per backend on N real users, through the real runner.

Builds (once, in a temporary folder) a database from ../shared ML-1M: ingest, temporal split, the
pixels tagger on the train movies of the first N users with at least ``--min-ratings`` train
ratings, the schema stage (shipped MiniLM, the agglomerative discovery of configs/ml1m.toml) and
the graph stage; or takes ``--db`` (a database after ``posterkg run``). Each ``--backend`` is one
row, ``NAME[:key=value,...]``: ``batch_size``, ``model``, ``note`` and any ``[interests]`` key
(``context_tokens``, ``max_interests`` ...) are row settings, every other key goes to the tagging
backend's constructor (the ``[tag.NAME]`` options). Every row extracts the same users into a fresh
copy of the database; ``load_s`` (loading the model) is reported apart from users/s.

``--tiny`` builds the tiny random Qwen2-VL of the tests (tests/tiny_vlm.py) as the default model;
``--full-size`` builds the real Qwen2-VL-2B-Instruct architecture with random weights (about
2.2 B parameters, 4.4 GB in bfloat16: for a GPU) -- the throughput of the real model, not its
answers.

Examples::

    python benchmarks/interests.py --n 200 --backend stats
    python benchmarks/interests.py --n 8 --tiny --backend stats --backend "hf:batch_size=4,device=cpu"
    python benchmarks/interests.py --n 500 --full-size --backend "vllm:batch_size=64,max_model_len=8192" \\
        --backend "hf:batch_size=16"                                   # on a GPU machine

Prints a table and writes ``benchmarks/results/interests.json`` (``--out``). Timings on a shared
machine are noisy: compare rows of one invocation.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
DEFAULT_DATA = REPO.parent / "shared" / "data" / "ml-1m"
ROW_KEYS = {"batch_size", "model", "note"}


def parse_backend(text: str) -> tuple[str, dict, dict, dict]:
    """``"hf:batch_size=4,device=cpu"`` -> (name, row settings, [interests] keys, backend options)."""
    from posterkg.interests import InterestsConfig

    cfg_keys = {f.name for f in dataclasses.fields(InterestsConfig)} - {"hf", "vllm", "openai", "backend", "model"}
    name, _, rest = text.partition(":")
    row, cfg, options = {}, {}, {}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, raw = part.partition("=")
        if not eq:
            raise SystemExit(f"bad option {part!r} in {text!r}: use key=value")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        (row if key in ROW_KEYS else cfg if key in cfg_keys else options)[key] = value
    return name, row, cfg, options


def build_db(data: Path, n: int, min_ratings: int, workdir: Path) -> tuple[Path, list[int]]:
    from posterkg.config import Config
    from posterkg.graphs import build_graphs
    from posterkg.ingest.movielens import ingest_movielens
    from posterkg.ingest.posters import scan_posters
    from posterkg.schema.stage import run_schema
    from posterkg.split import make_split
    from posterkg.store import open_store
    from posterkg.vlm.stage import TagConfig, run_tag

    db = workdir / "template.duckdb"
    with open_store(db) as store:
        ingest_movielens(store, data)
        scan_posters(store, data / "posters")
        make_split(store, scheme="temporal", valid=0.1, test=0.1, seed=0)
        users = [u for (u,) in store.execute(
            "SELECT user_id FROM split WHERE part = 'train' GROUP BY user_id HAVING count(*) >= ? "
            "ORDER BY user_id LIMIT ?", [min_ratings, n]).fetchall()]
        movies = [m for (m,) in store.execute(
            "SELECT DISTINCT movie_id FROM split WHERE part = 'train' AND user_id IN "
            "(SELECT unnest(?::INTEGER[])) ORDER BY 1", [users]).fetchall()]
        run_tag(store, TagConfig(backend="pixels", batch_size=64), movies=movies, echo=False)
        run_schema(store, Config(data={"db": str(db), "embed": {"model": "minilm"}, "schema": {
            "sample": 1.0, "method": "agglomerative", "distance_threshold": 0.05,
            "min_concepts": 1, "max_concepts": 60}}))
        build_graphs(store)
    return db, users


def pick_users(db: Path, n: int, min_ratings: int) -> list[int]:
    from posterkg.store import open_store

    with open_store(db, read_only=True) as store:
        return [u for (u,) in store.execute(
            "SELECT user_id FROM user_movie_edges GROUP BY user_id HAVING count(*) >= ? "
            "ORDER BY user_id LIMIT ?", [min_ratings, n]).fetchall()]


def run_row(template: Path, workdir: Path, idx: int, name: str, row: dict, cfg_keys: dict,
            options: dict, users: list[int], default_model: str | None) -> dict:
    from posterkg.interests import InterestsConfig
    from posterkg.interests.runner import StatsGenerator, extract_interests
    from posterkg.store import open_store

    db = workdir / f"row{idx}.duckdb"
    shutil.copy(template, db)
    cfg = InterestsConfig(backend=name, batch_size=int(row.get("batch_size", 8)), **cfg_keys)
    model = row.get("model") or (default_model if name != "stats" else None)
    t0, c0 = time.perf_counter(), time.process_time()
    if name == "stats":
        gen = StatsGenerator()
    else:
        from posterkg.interests.generate import text_generator

        gen = text_generator(name, model, options, context_tokens=cfg.context_tokens)
    load_s = time.perf_counter() - t0
    try:
        with open_store(db) as store:
            t1, c1 = time.perf_counter(), time.process_time()
            s = extract_interests(store, gen, cfg, users=users)
            seconds, cpu = time.perf_counter() - t1, time.process_time() - c1
    finally:
        gen.close()
    return {"backend": name, "model": gen.model, "batch_size": cfg.batch_size, "options": options,
            "interests_config": {k: v for k, v in dataclasses.asdict(cfg).items()
                                 if k not in ("hf", "vllm", "openai")}, "note": row.get("note", ""), "users": len(users),
            "load_s": round(load_s, 2), "seconds": round(seconds, 3), "cpu_s": round(cpu, 3),
            "users_per_s": round(len(users) / seconds, 3) if seconds > 0 else None,
            "done": s["done"], "failed": s["failed"], "failures": s["failures"],
            "interests": s["interests"], "interests_per_user": round(s["interests"] / max(1, s["done"]), 2),
            "prompt_tokens_per_user": round(s["prompt_tokens_per_user"], 1),
            "output_tokens_per_user": round(s["output_tokens_per_user"], 1),
            "users_truncated": s["users_truncated"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=50, help="users (the first N by id with enough ratings)")
    ap.add_argument("--min-ratings", type=int, default=20)
    ap.add_argument("--backend", action="append", default=[], help="NAME[:key=value,...] (repeat)")
    ap.add_argument("--db", type=Path, help="an existing database with the graph built")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--tiny", action="store_true", help="default model: the tests' tiny random Qwen2-VL")
    ap.add_argument("--full-size", action="store_true",
                    help="default model: the real Qwen2-VL-2B architecture, random weights (GPU)")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch intra-op threads (0 = torch's default; 1 is far faster on a loaded CPU)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "interests.json")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("POSTERKG_PROGRESS", "0")
    backends = args.backend or ["stats"]
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="pk-interests-bench-") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        if args.db:
            template, users = work / "template.duckdb", pick_users(args.db, args.n, args.min_ratings)
            shutil.copy(args.db, template)
        else:
            if not (args.data / "ratings.dat").is_file():
                raise SystemExit(f"no MovieLens at {args.data}; pass --data or --db")
            template, users = build_db(args.data, args.n, args.min_ratings, work)
        build_s = time.perf_counter() - t0
        default_model = None
        if args.tiny or args.full_size:
            sys.path.insert(0, str(REPO / "tests"))
            from tiny_vlm import build_tiny_qwen2_vl

            default_model = str(build_tiny_qwen2_vl(work / "model", full_size=args.full_size))
        rows = []
        for i, spec in enumerate(backends):
            name, row, cfg_keys, options = parse_backend(spec)
            r = run_row(template, work, i, name, row, cfg_keys, options, users, default_model)
            if args.full_size and name != "stats":
                r["note"] = (r["note"] + " " if r["note"] else "") + "Qwen2-VL-2B architecture, random weights"
            elif args.tiny and name != "stats":
                r["note"] = (r["note"] + " " if r["note"] else "") + "tiny random Qwen2-VL (tests)"
            rows.append(r)
            print(f"{spec}: {r['users_per_s']} users/s", flush=True)
    head = ["backend", "batch", "users", "load_s", "seconds", "users/s", "done", "failed",
            "interests/user", "prompt tok/user", "output tok/user", "truncated"]
    table = [[r["backend"], r["batch_size"], r["users"], r["load_s"], r["seconds"], r["users_per_s"],
              r["done"], r["failed"], r["interests_per_user"], r["prompt_tokens_per_user"],
              r["output_tokens_per_user"], r["users_truncated"]] for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *table)]
    for line in [head, ["-" * w for w in widths], *table]:
        print("  ".join(str(x).rjust(w) for x, w in zip(line, widths)))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {"n_users": len(users), "build_s": round(build_s, 1), "machine": {
        "platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
        "load_avg": os.getloadavg(), "torch_threads": args.threads or None}, "rows": rows,
        "command": " ".join(sys.argv)}
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
