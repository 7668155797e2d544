"""Tagging throughput: posters/s per backend on N posters, through the real runner.

Each ``--backend`` is one row: ``NAME[:key=value,...]``. ``batch_size``, ``model``, ``mode`` and
``note`` are row settings; every other key is passed to the backend's constructor (the same
options as the config's ``[tag.NAME]`` table). Values are parsed as JSON when they can be
(``max_model_len=4096`` -> int, ``enforce_eager=true`` -> bool), else kept as strings.

Every row tags the same first N posters (by movie id) into a fresh temporary database, so the
figure includes image loading, validation and the DuckDB writes; ``load_s`` (creating the backend,
e.g. loading model weights) is reported apart and not counted in posters/s.

Examples::

    python benchmarks/tagging.py --n 500                       # pixels only
    python benchmarks/tagging.py --n 64 --backend pixels \\
        --backend "hf:batch_size=1,model=/models/qwen2-vl-2b,note=random weights" \\
        --backend "hf:batch_size=8,model=/models/qwen2-vl-2b,note=random weights" \\
        --backend "vllm:batch_size=64,max_model_len=4096"

Prints a table and writes ``benchmarks/results/tagging.json`` (``--out`` to change). Timings on a
shared machine are noisy: compare rows of one invocation, and read ``cpu_s`` beside ``seconds``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_POSTERS = REPO.parent / "shared" / "data" / "ml-1m" / "posters"
ROW_KEYS = {"batch_size", "model", "mode", "note"}


def parse_backend(text: str) -> tuple[str, dict, dict]:
    """``"hf:batch_size=8,model=x"`` -> ("hf", row settings, backend options)."""
    name, _, rest = text.partition(":")
    row: dict = {}
    options: dict = {}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, raw = part.partition("=")
        if not eq:
            raise SystemExit(f"bad backend option {part!r} in {text!r}: use key=value")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        (row if key in ROW_KEYS else options)[key] = value
    return name, row, options


def make_db(posters: Path, n: int, workdir: Path) -> Path:
    """A database whose posters table holds the first ``n`` posters (symlinked, never copied)."""
    from posterkg.ingest.posters import scan_posters
    from posterkg.store import open_store

    files = sorted((p for p in posters.iterdir() if re.fullmatch(r"\d+\.(jpg|jpeg|png|webp)", p.name)),
                   key=lambda p: int(p.stem))[:n]
    if not files:
        raise SystemExit(f"no posters in {posters}")
    folder = workdir / "posters"
    folder.mkdir()
    for p in files:
        (folder / p.name).symlink_to(p.resolve())
    db = workdir / "template.duckdb"
    with open_store(db) as store:
        scan_posters(store, folder, follow_symlinks=True)   # links out of the folder, on purpose
    return db


def run_row(template: Path, workdir: Path, idx: int, name: str, row: dict, options: dict) -> dict:
    import shutil

    from posterkg.store import open_store
    from posterkg.vlm.backends import get_backend
    from posterkg.vlm.knowledge import load_schema
    from posterkg.vlm.runner import tag_posters

    db = workdir / f"row{idx}.duckdb"
    shutil.copy(template, db)
    schema = load_schema()
    spec = schema.build_spec()
    if row.get("mode", "open") != "open":
        raise SystemExit("the benchmark runs open mode only")
    t0 = time.perf_counter()
    backend = get_backend(name, row.get("model") or None, **options)
    load_s = time.perf_counter() - t0
    try:
        with open_store(db) as store:
            c0 = time.process_time()
            s = tag_posters(store, backend, spec, batch_size=int(row.get("batch_size", 8)))
            cpu = time.process_time() - c0
    finally:
        backend.close()
    n = s["done"] + s["failed"]
    return {
        "backend": name, "model": s["model"], "batch_size": int(row.get("batch_size", 8)),
        "options": options, "posters": n, "done": s["done"], "failed": s["failed"],
        "failures": s["failures"], "points_per_poster": s["points"] / max(1, s["done"]),
        "load_s": load_s, "seconds": s["seconds"], "cpu_s": cpu,
        "posters_per_s": n / s["seconds"] if s["seconds"] > 0 else 0.0,
        "ms_per_poster": 1000 * s["seconds"] / max(1, n),
        "note": row.get("note", ""),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--posters", type=Path, default=DEFAULT_POSTERS, help="poster folder [%(default)s]")
    ap.add_argument("--n", type=int, default=300, help="posters per row [%(default)s]")
    ap.add_argument("--backend", action="append", default=None,
                    help="NAME[:key=value,...], repeatable [pixels]")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "tagging.json")
    args = ap.parse_args(argv)
    os.environ.setdefault("POSTERKG_PROGRESS", "0")
    rows_in = [parse_backend(b) for b in (args.backend or ["pixels"])]

    results = []
    with tempfile.TemporaryDirectory(prefix="posterkg-bench-") as tmp:
        work = Path(tmp)
        template = make_db(args.posters, args.n, work)
        for i, (name, row, options) in enumerate(rows_in):
            print(f"[{i + 1}/{len(rows_in)}] {name} {row} {options}", file=sys.stderr, flush=True)
            results.append(run_row(template, work, i, name, row, options))

    headers = ["backend", "model", "batch", "posters", "failed", "load_s", "seconds", "cpu_s",
               "posters/s", "ms/poster", "points/poster", "note"]
    table = [[r["backend"], r["model"], r["batch_size"], r["posters"], r["failed"],
              f"{r['load_s']:.1f}", f"{r['seconds']:.1f}", f"{r['cpu_s']:.1f}",
              f"{r['posters_per_s']:.2f}", f"{r['ms_per_poster']:.1f}",
              f"{r['points_per_poster']:.1f}", r["note"]] for r in results]
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *table)]
    for line in [headers, ["-" * w for w in widths], *table]:
        print("  ".join(str(x).ljust(w) for x, w in zip(line, widths)).rstrip())

    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": "tagging", "n": args.n, "posters_dir": str(args.posters),
        "machine": {"python": platform.python_version(), "platform": platform.platform(),
                    "cpus": os.cpu_count()},
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "rows": results,
    }
    args.out.write_text(json.dumps(payload, indent=2, default=str))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
