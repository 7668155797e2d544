"""Every stage on ML-25M-size data, each in a fresh process: wall time and peak memory.

    python benchmarks/make_ml25m.py --out /work/cache/ml25m           # the data (exact ML-25M layout)
    nice -n 10 python benchmarks/scale.py --data /work/cache/ml25m --label 25M
    python benchmarks/scale.py --data /work/cache/ml5m --label 5M --stages ingest split graph

Each stage runs as ``posterkg --db DB --config CFG <command>`` under ``/usr/bin/time -v`` (peak
RSS = "Maximum resident set size" of the process; a stage made of several commands reports
their summed wall time and their largest RSS). Results are merged into
``benchmarks/results/scale.json`` under ``--label`` (a re-run of some stages replaces only
those rows) and printed as a table. A failing stage is recorded with its exit status and the
last lines of its output, and the next stages still run where they can.

Stages (names for ``--stages``):

=========  ===========================================================================
ingest     ``ingest movielens DATA`` (ratings.csv, movies.csv, links.csv)
posters    ``posters scan DATA/posters`` (full decode of every poster)
split      ``split --scheme temporal``
tag        ``tag --backend pixels --limit N`` (a sample of ``--tag-sample`` posters)
embed      ``embed posters --encoder efficientnet-lite0 --limit N`` (``--embed-sample`` posters)
vocab      ``schema discover`` (agglomerative, MiniLM from the wheel) + ``freeze`` + ``project``
graph      ``graph build``
train-mostpop    ``train --model mostpop`` (no training: the valid + test evaluations alone)
train-bprmf, train-lightgcn, train-posterkg   ``train --model M --max-steps S`` (BPR: ``--batch-size``
           pairs per step; LightGCN and posterkg run one full-graph propagation per step
           whatever the batch size)
train-seq  ``train --model posterkg-seq --max-steps S`` (``--seq-model``; ``--seq-batch-size``
           windows per step: a step's logits are windows x positions x movies floats)
evaluate   ``evaluate --model ID`` (``--eval-model``, every test user, [gnn] eval_batch_size users at a time)
recommend  ``recommend --all -k 10 --model ID --out FILE`` (every user of the split, streamed)

Every training stage also evaluates on valid at its end and on test (twice: the robust column),
as ``posterkg train`` does; ``[gnn] eval_every`` is set past the step budget so that valid is
evaluated once. The stage's row keeps the valid / test NDCG@20 the model reached.
=========  ===========================================================================
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "scale.json"
STAGES = ["ingest", "posters", "split", "tag", "embed", "vocab", "graph", "train-mostpop", "train-bprmf",
          "train-lightgcn", "train-posterkg", "train-seq", "evaluate", "recommend"]
GOALS = {"ingest+split": 120.0, "graph": 180.0}
MEM_GOAL_GB = 16.0


def posterkg_bin() -> list[str]:
    exe = Path(sys.executable).with_name("posterkg")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "posterkg"]


def write_config(path: Path, db: Path, epochs: int, batch: int, dim: int, seq_batch: int = 16,
                 eval_batch: int = 2048) -> None:
    path.write_text(f"""# benchmarks/scale.py
db = "{db}"

[tag]
backend = "pixels"
batch_size = 64

[embed]
model = "minilm"

[schema]
sample = 1.0
method = "agglomerative"
distance_threshold = 0.05
min_concepts = 1

[gnn]
epochs = {epochs}
batch_size = {batch}
dim = {dim}
patience = 1
eval_every = 1000
eval_batch_size = {eval_batch}
threads = 1

[train.sasrec]
batch_size = {seq_batch}

[train.posterkg-seq]
batch_size = {seq_batch}
""", encoding="utf-8")


def stage_commands(stage: str, data: Path, work: Path, a) -> list[list[str]]:
    return {
        "ingest": [["ingest", "movielens", str(data)]],
        "posters": [["posters", "scan", str(data / "posters")]],
        "split": [["split", "--scheme", "temporal"]],
        "tag": [["tag", "--backend", "pixels", "--limit", str(a.tag_sample)]],
        "embed": [["embed", "posters", "--encoder", "efficientnet-lite0", "--device", "cpu",
                   "--limit", str(a.embed_sample)]],
        "vocab": [["schema", "discover", "--sample", "1.0", "--method", "agglomerative",
                   "--min-concepts", "1", "--force"],
                  ["schema", "freeze"], ["schema", "project"]],
        "graph": [["graph", "build"]],
        "train-mostpop": [["train", "--model", "mostpop"]],
        "train-bprmf": [["train", "--model", "bprmf", "--epochs", str(a.epochs), "--max-steps",
                         str(a.max_steps_mf), "-v"]],
        "train-lightgcn": [["train", "--model", "lightgcn", "--epochs", str(a.epochs), "--max-steps",
                            str(a.max_steps), "-v"]],
        "train-posterkg": [["train", "--model", a.model, "--epochs", str(a.epochs), "--max-steps",
                            str(a.max_steps), "-v"]],
        "train-seq": [["train", "--model", a.seq_model, "--epochs", str(a.epochs), "--max-steps",
                       str(a.seq_max_steps), "-v"]],
        "evaluate": [["evaluate", "--model", a.eval_model]],
        "recommend": [["recommend", "--all", "-k", "10", "--model", a.eval_model,
                       "--out", str(work / "recommendations.tsv")]],
    }[stage]


def run_timed(cmd: list[str], log: Path, timeout: float, threads: int | None = None) -> dict:
    """Run ``cmd`` under /usr/bin/time -v; its output goes to ``log``; return the measurements.
    ``threads``: OMP/MKL threads of the process (torch's intra-op pool)."""
    timev = shutil.which("time") or "/usr/bin/time"
    full = [timev, "-v", *cmd]
    env = dict(os.environ, POSTERKG_PROGRESS="0", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    t0 = time.perf_counter()
    with open(log, "wb") as out:
        out.write(("$ " + " ".join(cmd) + "\n").encode())
        out.flush()
        try:
            proc = subprocess.run(full, stdout=out, stderr=subprocess.STDOUT, env=env, timeout=timeout)
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    wall = time.perf_counter() - t0
    with open(log, "rb") as f:         # the end only: `recommend --all` prints a line per user
        f.seek(max(0, log.stat().st_size - 20000))
        tail = f.read().decode(errors="replace")
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", tail)
    rss = int(m.group(1)) * 1024 if m else None
    user = re.search(r"User time \(seconds\): ([\d.]+)", tail)
    sys_ = re.search(r"System time \(seconds\): ([\d.]+)", tail)
    cpu = (float(user.group(1)) + float(sys_.group(1))) if user and sys_ else None
    body = tail.split("\tCommand being timed")[0]
    out = {"rc": rc, "wall_s": wall, "peak_rss_bytes": rss, "cpu_s": cpu,
           "tail": [ln for ln in body.strip().splitlines() if ln.strip()][-6:]}
    v = re.search(r"valid NDCG@20 ([\d.]+)", body)
    if v:
        out["valid_ndcg@20"] = float(v.group(1))
    steps = re.findall(r"steps=(\d+)", body)
    if steps:
        out["steps"] = int(steps[-1])
    return out


def load_results() -> dict:
    if RESULTS.exists():
        return json.loads(RESULTS.read_text(encoding="utf-8"))
    return {"runs": {}}


def save(label: str, run: dict) -> None:
    """Merge this label's run into the results file as it is now (other labels may be running)."""
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    fresh = load_results()
    fresh["runs"][label] = run
    tmp = RESULTS.with_name(f".{RESULTS.name}.{os.getpid()}")
    tmp.write_text(json.dumps(fresh, indent=1), encoding="utf-8")
    os.replace(tmp, RESULTS)


def print_table(label: str, run: dict) -> None:
    print(f"\n{label}: {run.get('data_stats', {}).get('ratings', '?'):,} ratings" if isinstance(
        run.get("data_stats", {}).get("ratings"), int) else f"\n{label}")
    print(f"{'stage':16} {'status':8} {'wall':>9} {'cpu':>9} {'peak RSS':>10}")
    for name in STAGES:
        r = run["stages"].get(name)
        if not r:
            continue
        status = "ok" if r["rc"] == 0 else f"rc={r['rc']}"
        rss = f"{r['peak_rss_bytes'] / 2**30:.2f} GB" if r.get("peak_rss_bytes") else "?"
        cpu = f"{r['cpu_s']:.0f} s" if r.get("cpu_s") is not None else "?"
        print(f"{name:16} {status:8} {r['wall_s']:>7.1f} s {cpu:>9} {rss:>10}")
    st = run["stages"]
    if "ingest" in st and "split" in st:
        t = st["ingest"]["wall_s"] + st["split"]["wall_s"]
        print(f"ingest + split: {t:.0f} s (goal < {GOALS['ingest+split']:.0f} s)")
    if "graph" in st:
        print(f"graph build: {st['graph']['wall_s']:.0f} s (goal < {GOALS['graph']:.0f} s)")
    peak = max((r.get("peak_rss_bytes") or 0) for r in st.values()) / 2**30 if st else 0
    print(f"largest peak RSS: {peak:.2f} GB (goal < {MEM_GOAL_GB:.0f} GB per stage)")


def markdown(labels: list[str]) -> str:
    """The stored results as one markdown table (for docs/scale.md)."""
    runs = load_results()["runs"]
    labels = [lb for lb in labels if lb in runs]
    head = "| stage | " + " | ".join(f"{lb} wall | {lb} CPU | {lb} peak RSS" for lb in labels) + " |"
    out = [head, "|---|" + "---:|---:|---:|" * len(labels)]
    for name in STAGES:
        cells = []
        for lb in labels:
            r = runs[lb]["stages"].get(name)
            if not r:
                cells += ["", "", ""]
                continue
            bad = "" if r["rc"] == 0 else f" (rc {r['rc']})"
            cells += [f"{r['wall_s']:.0f} s{bad}", f"{r['cpu_s']:.0f} s",
                      f"{(r['peak_rss_bytes'] or 0) / 2**30:.2f} GB"]
        if any(cells):
            out.append(f"| {name} | " + " | ".join(cells) + " |")
    train = [(lb, name, runs[lb]["stages"][name]) for lb in labels for name in STAGES
             if name.startswith("train") and name in runs[lb]["stages"]]
    if train:
        out += ["", "| data | stage | command | steps | valid NDCG@20 | test NDCG@20 | test coverage@20 | CPU | peak RSS |",
                "|---|---|---|---:|---:|---:|---:|---:|---:|"]
        for lb, name, r in train:
            cmd = " ".join(c for c in (r.get("commands") or [""])[0].split() if c != "-v")
            test = next((ln.split() for ln in r.get("tail", []) if len(ln.split()) == 8 and ln.split()[1] == "test"),
                        None)      # model, part, users, recall@10, recall@20, ndcg@10, ndcg@20, coverage@20
            out.append(f"| {lb} | {name} | `{cmd}` | {r.get('steps', '')} | {r.get('valid_ndcg@20', '')} | "
                       f"{test[6] if test else ''} | {test[7] if test else ''} | "
                       f"{r['cpu_s']:.0f} s | {(r['peak_rss_bytes'] or 0) / 2**30:.2f} GB |")
    return "\n".join(out)


def main(argv=None) -> None:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--markdown":
        print(markdown(sys.argv[2:] or list(load_results()["runs"])))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, type=Path, help="folder written by make_ml25m.py")
    ap.add_argument("--work", type=Path, default=None, help="database and logs [<data>.work]")
    ap.add_argument("--label", default=None, help="results key [folder name]")
    ap.add_argument("--stages", nargs="*", default=None, help=f"subset of {' '.join(STAGES)}")
    ap.add_argument("--fresh", action="store_true", help="delete the database first")
    ap.add_argument("--tag-sample", type=int, default=2000)
    ap.add_argument("--embed-sample", type=int, default=500)
    ap.add_argument("--epochs", type=int, default=1000, help="upper bound; the step budgets end training")
    ap.add_argument("--batch-size", type=int, default=262144, help="BPR pairs per step")
    ap.add_argument("--max-steps", type=int, default=20, help="LightGCN / posterkg GNN steps")
    ap.add_argument("--max-steps-mf", type=int, default=200, help="BPR-MF steps")
    ap.add_argument("--seq-model", default="posterkg-seq")
    ap.add_argument("--seq-max-steps", type=int, default=300)
    ap.add_argument("--seq-batch-size", type=int, default=16, help="windows per step (sequence models)")
    ap.add_argument("--eval-batch-size", type=int, default=2048, help="users per scoring batch")
    ap.add_argument("--eval-model", default="lightgcn-seed0", help="the model evaluate / recommend use")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--model", default="posterkg", help="the configured model (train-posterkg)")
    ap.add_argument("--timeout", type=float, default=3600.0, help="per command, seconds")
    ap.add_argument("--torch-threads", type=int, default=1, help="OMP threads of train/evaluate/recommend")
    ap.add_argument("--no-save", action="store_true")
    a = ap.parse_args(argv)

    data = a.data.resolve()
    work = (a.work or data.with_name(data.name + ".work")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    db = work / "scale.duckdb"
    if a.fresh:
        for p in work.glob("scale.duckdb*"):
            p.unlink()
    cfg = work / "scale.toml"
    write_config(cfg, db, a.epochs, a.batch_size, a.dim, a.seq_batch_size, a.eval_batch_size)
    label = a.label or data.name
    stages = a.stages or STAGES
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        raise SystemExit(f"unknown stage(s): {', '.join(unknown)}; known: {' '.join(STAGES)}")

    results = load_results()
    run = results["runs"].setdefault(label, {"stages": {}})
    gen = data / "generated.json"
    if gen.exists():
        run["data_stats"] = json.loads(gen.read_text())
    run["machine"] = {"cpus": os.cpu_count(), "load_avg_at_start": os.getloadavg()[0],
                      "mem_total_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)}
    run["settings"] = {"tag_sample": a.tag_sample, "embed_sample": a.embed_sample, "epochs": a.epochs, "batch_size": a.batch_size,
                       "dim": a.dim, "model": a.model, "max_steps": a.max_steps, "max_steps_mf": a.max_steps_mf,
                       "seq_model": a.seq_model, "seq_max_steps": a.seq_max_steps,
                       "seq_batch_size": a.seq_batch_size, "eval_batch_size": a.eval_batch_size,
                       "eval_model": a.eval_model, "threads": 1}
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    for stage in STAGES:
        if stage not in stages:
            continue
        rows = []
        load0 = os.getloadavg()[0]
        for i, cmd in enumerate(stage_commands(stage, data, work, a)):
            threads = a.torch_threads if stage.startswith("train") or stage in ("evaluate", "recommend") else None
            r = run_timed(posterkg_bin() + ["--config", str(cfg), *cmd], logs / f"{stage}-{i}.log", a.timeout,
                          threads)
            rows.append(r)
            if r["rc"] != 0:
                break
        res = {"rc": next((r["rc"] for r in rows if r["rc"] != 0), 0),
               "wall_s": round(sum(r["wall_s"] for r in rows), 1),
               "cpu_s": round(sum(r["cpu_s"] or 0 for r in rows), 1),
               "peak_rss_bytes": max((r["peak_rss_bytes"] or 0) for r in rows) or None,
               "load_avg": round((load0 + os.getloadavg()[0]) / 2, 1),
               "settings": dict(run["settings"]), "commands": [" ".join(c) for c in stage_commands(stage, data, work, a)],
               **{k: rows[-1][k] for k in ("valid_ndcg@20", "steps") if k in rows[-1]},
               "tail": rows[-1]["tail"], "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        run["stages"][stage] = res
        print(f"{stage}: rc={res['rc']} {res['wall_s']:.1f}s "
              f"{(res['peak_rss_bytes'] or 0) / 2**30:.2f} GB", flush=True)
        if res["rc"] != 0:
            print("  " + "\n  ".join(res["tail"]), flush=True)
        if not a.no_save:
            save(label, run)
    print_table(label, run)


if __name__ == "__main__":
    main()
