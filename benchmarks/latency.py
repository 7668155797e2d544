"""Interactive latency of `recommend`, `explain` and `report` (issue 9).

Each measurement is a fresh Python process (as a user's command is) that reports three phases:

* start-up: interpreter start, imports (torch, the package) and opening the database;
* model load: ``load_model`` (the stored model rebuilt over its saved id vocabulary, with the
  inputs assembled from the database) and, for explain/report, the tables the explainer reads;
* work: the command's own work: ``recommend`` = top-10 (saved final embeddings: one lookup and
  one product) with titles; ``explain`` = one explanation (one propagation with the edge masks,
  one backward); ``report`` = the whole user page (10 recommendations explained from one
  propagation, profile chart, poster thumbnails) written to a file.

Rounds rotate the order of the three commands (round r starts with command r mod 3), so page
cache and CPU frequency effects do not favour one command; the table gives min and median per
phase and the whole command wall time. Writes benchmarks/results/latency.json.

    python benchmarks/latency.py --db runs/ml1m.duckdb --user 42 --movie 1196 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"

DRIVER = r"""
import json, sys, time
t0 = time.perf_counter()
cmd, db, user, movie, threads, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
import torch
if threads:
    torch.set_num_threads(threads)
import warnings
warnings.filterwarnings("ignore", message="Sparse (CSR tensor support|invariant checks)")
from posterkg.store import open_store
from posterkg.gnn.api import load_model
from posterkg.explain import ExplainConfig
from posterkg.explain.paths import Explainer, Knowledge
from posterkg.explain.report import user_report, write_report
store = open_store(db, read_only=True)
t1 = time.perf_counter()
tm = load_model(store)
if cmd != "recommend":
    k = Knowledge(store)
t2 = time.perf_counter()
if cmd == "recommend":
    recs = tm.recommend(user, 10)
    titles = dict(store.execute("SELECT movie_id, title FROM movies").fetchall())
    rows = [(m, titles.get(m), s) for m, s in recs]
    assert len(rows) == 10
elif cmd == "explain":
    ex = Explainer(k, tm, ExplainConfig()).explain(user, movie)
    assert ex.sentences
    rows = ex.method
else:
    html = user_report(store, user, tm, ExplainConfig(), knowledge=k, model_id=tm.model_id)
    write_report(html, out)
    rows = len(html)
t3 = time.perf_counter()
print(json.dumps({"startup_in_process": t1 - t0, "load": t2 - t1, "work": t3 - t2, "info": str(rows)}))
"""

COMMANDS = ("recommend", "explain", "report")


def one(cmd: str, args, out: Path) -> dict:
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", DRIVER, cmd, args.db, str(args.user), str(args.movie),
                        str(args.threads), str(out)], capture_output=True, text=True)
    wall = time.perf_counter() - t
    if p.returncode != 0:
        raise SystemExit(f"{cmd} failed:\n{p.stderr[-3000:]}")
    r = json.loads(p.stdout.strip().splitlines()[-1])
    r["wall"] = wall
    r["startup"] = wall - r["load"] - r["work"]     # interpreter + imports + opening the database
    return r


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", required=True, help="database with a trained model (the newest is used)")
    ap.add_argument("--user", type=int, default=42)
    ap.add_argument("--movie", type=int, default=1196, help="movie to explain (not rated by the user)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads in the commands (0: torch default)")
    ap.add_argument("--out", default=str(RESULTS / "latency.json"))
    args = ap.parse_args(argv)

    out_html = Path(args.out).with_suffix(".report.html")
    out_html.parent.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[dict]] = {c: [] for c in COMMANDS}
    for r in range(args.rounds):
        order = COMMANDS[r % 3:] + COMMANDS[: r % 3]
        for cmd in order:
            runs[cmd].append(one(cmd, args, out_html))
            print(f"round {r + 1} {cmd}: " + ", ".join(f"{k} {runs[cmd][-1][k]:.2f}s"
                                                        for k in ("startup", "load", "work", "wall")), flush=True)
    summary = {}
    for cmd, rs in runs.items():
        summary[cmd] = {ph: {"min": min(x[ph] for x in rs), "median": statistics.median(x[ph] for x in rs)}
                        for ph in ("startup", "load", "work", "wall")}
    print(f"\nlatency over {args.rounds} rotated rounds (seconds; fresh process each; torch threads "
          f"{args.threads or 'default'})")
    print(f"{'command':<10} {'start-up':>15} {'model load':>15} {'work':>15} {'whole':>15}")
    print(f"{'':<10} {'min / median':>15} {'min / median':>15} {'min / median':>15} {'min / median':>15}")
    for cmd, s in summary.items():
        cells = [f"{s[ph]['min']:.2f} / {s[ph]['median']:.2f}" for ph in ("startup", "load", "work", "wall")]
        print(f"{cmd:<10} " + " ".join(f"{c:>15}" for c in cells))
    res = {"db": args.db, "user": args.user, "movie": args.movie, "rounds": args.rounds, "threads": args.threads,
           "summary": summary, "runs": runs}
    out = Path(args.out)
    out.write_text(json.dumps(res, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
