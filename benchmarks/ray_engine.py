"""Local engine vs the ray engine (1 and 2 actors) on the same posters: a plumbing check.

For each job (``tag`` with the ``pixels`` backend, ``embed`` with EfficientNet-Lite0 at one torch
thread per worker) and each engine, the first ``--limit`` real ML-1M posters are scanned into a
fresh database and processed; reported per run:

* ``wall_s``: the whole call (for ray: actor start-up, backend load per actor, streaming, commits);
* ``posters_per_s``: posters / wall;
* ``steady_per_s``: posters committed after the first batch / time from the first commit to the
  last: the rate once the actors are up;
* ``equal``: the rows equal the local run's (pixels points exactly; vectors allclose 1e-5).

One local Ray cluster (``ray.init(num_cpus=2)``) serves every ray run. On a 2-core machine shared
with other jobs this checks that the plumbing streams and commits; it is NOT a scaling result.

    nice -n 10 .venv/bin/python benchmarks/ray_engine.py --limit 200

Prints a table and writes ``benchmarks/results/ray_engine.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("POSTERKG_PROGRESS", "0")
os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
DEFAULT_POSTERS = REPO.parent / "shared" / "data" / "ml-1m" / "posters"


def _rows(db: Path, job: str):
    from posterkg.store import open_store

    with open_store(db, read_only=True) as store:
        if job == "tag":
            return store.execute("SELECT movie_id, type, value, confidence FROM raw_points ORDER BY ALL").fetchall()
        from posterkg.embed.posters import load_features

        return load_features(store, "poster", "efficientnet-lite0")


def _equal(job: str, a, b) -> bool:
    if job == "tag":
        return a == b
    import numpy as np

    return a[0].tolist() == b[0].tolist() and bool(np.allclose(a[1], b[1], rtol=1e-4, atol=1e-5))


def run_one(job: str, engine_name: str, workers: int, base_db: Path, tmp: Path, batch_size: int) -> dict:
    from posterkg.embed.posters import EncoderRef, embed_posters
    from posterkg.engines import make_engine
    from posterkg.store import open_store
    from posterkg.vlm.knowledge import load_schema
    from posterkg.vlm.runner import BackendRef, tag_posters

    db = tmp / f"{job}-{engine_name}-{workers}.duckdb"
    shutil.copy(base_db, db)
    engine = make_engine("ray", workers=workers) if engine_name == "ray" else make_engine("local")
    stamps: list[tuple[float, int]] = []

    def on_batch(n: int) -> None:
        stamps.append((time.perf_counter(), n))

    t0 = time.perf_counter()
    with open_store(db) as store:
        if job == "tag":
            s = tag_posters(store, BackendRef("pixels"), load_schema().build_spec(), batch_size=batch_size,
                            engine=engine, on_batch=on_batch)
        else:
            s = embed_posters(store, EncoderRef("efficientnet-lite0", device="cpu", options={"threads": 1}),
                              batch_size=batch_size, engine=engine, on_batch=on_batch)
    wall = time.perf_counter() - t0
    n = s["done"] + s["failed"]
    steady = None
    if len(stamps) >= 2 and stamps[-1][0] > stamps[0][0]:
        steady = (stamps[-1][1] - stamps[0][1]) / (stamps[-1][0] - stamps[0][0])
    return {"job": job, "engine": engine_name, "workers": workers if engine_name == "ray" else 1,
            "posters": n, "done": s["done"], "failed": s["failed"], "wall_s": round(wall, 2),
            "posters_per_s": round(n / wall, 3), "steady_per_s": None if steady is None else round(steady, 3),
            "first_commit_s": round(stamps[0][0] - t0, 2) if stamps else None, "db": db}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--posters", type=Path, default=DEFAULT_POSTERS)
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--jobs", default="tag,embed")
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "ray_engine.json")
    args = ap.parse_args(argv)
    if not (args.posters / "1.jpg").is_file():
        print(f"error: no posters at {args.posters}", file=sys.stderr)
        return 2
    import ray

    from posterkg.ingest.posters import scan_posters
    from posterkg.store import open_store

    tmp = Path(tempfile.mkdtemp(prefix="posterkg-ray-bench-"))
    try:
        folder = tmp / "posters"
        folder.mkdir()
        ids = sorted(int(p.stem) for p in args.posters.glob("*.jpg"))[: args.limit]
        for m in ids:
            shutil.copy(args.posters / f"{m}.jpg", folder / f"{m}.jpg")
        base = tmp / "base.duckdb"
        with open_store(base) as store:
            scan_posters(store, folder, workers=1)
        t = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
                 configure_logging=True)
        init_s = time.perf_counter() - t
        runs = []
        for job in args.jobs.split(","):
            local = run_one(job, "local", 1, base, tmp, args.batch_size)
            ref = _rows(local["db"], job)
            local["equal"] = True
            runs.append(local)
            _write(args, ids, init_s, runs, ray.__version__)
            for w in (int(x) for x in args.workers.split(",")):
                r = run_one(job, "ray", w, base, tmp, args.batch_size)
                r["equal"] = _equal(job, ref, _rows(r["db"], job))
                runs.append(r)
                _write(args, ids, init_s, runs, ray.__version__)   # after every run: a timeout keeps what ran
        ray.shutdown()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    cols = ["job", "engine", "workers", "posters", "failed", "wall_s", "posters_per_s", "steady_per_s",
            "first_commit_s", "equal"]
    print(f"ray.init(num_cpus=2): {init_s:.1f} s; batch size {args.batch_size}; "
          f"{len(ids)} posters; os.getloadavg() at the end: {os.getloadavg()[0]:.1f}")
    print("  ".join(f"{c:>14}" for c in cols))
    for r in runs:
        print("  ".join(f"{str(r[c]):>14}" for c in cols))
    print(f"wrote {args.out}")
    return 0 if all(r["equal"] for r in runs) else 1


def _write(args, ids, init_s: float, runs: list[dict], ray_version: str) -> None:
    result = {
        "benchmark": "ray_engine", "date": dt.date.today().isoformat(),
        "command": f"nice -n 10 .venv/bin/python benchmarks/ray_engine.py --limit {args.limit} "
                   f"--batch-size {args.batch_size} --jobs {args.jobs} --workers {args.workers}",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "ray": ray_version, "loadavg_1min": round(os.getloadavg()[0], 2)},
        "ray_init_s": round(init_s, 2), "batch_size": args.batch_size, "posters": len(ids),
        "note": "2 CPU cores shared with other jobs: a plumbing check (streaming, per-batch commits, equal rows), "
                "not a scaling result; wall_s of a ray run includes starting the actors and loading the "
                "backend once per actor",
        "runs": [{k: v for k, v in r.items() if k != "db"} for r in runs],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
