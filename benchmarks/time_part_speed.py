"""The time part's code against an earlier revision's, side by side in one process.

    .venv/bin/python benchmarks/time_part_speed.py --old ed99fa0 --rounds 3

Builds posterkg-seq (the registry's settings, time bias on) twice on the accuracy benchmark's
database, once from this checkout and once from ``posterkg/gnn/sequential.py`` as it was at
``--old`` (``git show``), with the same weights; checks that both give the same valid scores and
the same training loss and gradients; then times, in rotated rounds, ``--steps`` real training
batches (forward and backward) and one full valid evaluation of each. Prints min/median seconds
and writes benchmarks/results/time_part_speed.json. Speed only: the weights are the untrained
initialisation, which costs the same as trained ones.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def old_module(rev: str):
    src = subprocess.run(["git", "show", f"{rev}:posterkg/gnn/sequential.py"], cwd=HERE.parent,
                         check=True, capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "sequential_old.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("sequential_old", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["sequential_old"] = mod          # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--old", required=True, help="git revision whose sequential.py is the baseline")
    p.add_argument("--model", default="posterkg-seq")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--db", type=Path, default=HERE / "results" / "accuracy-ml1m.duckdb")
    p.add_argument("--out", type=Path, default=HERE / "results" / "time_part_speed.json")
    args = p.parse_args(argv)
    os.environ.setdefault("POSTERKG_PROGRESS", "0")
    import torch

    from posterkg.gnn import registry
    from posterkg.gnn.evaluate import evaluate_model
    from posterkg.gnn.inputs import assemble
    from posterkg.gnn.sequential import _batches
    from posterkg.gnn.stage import feature_spec
    from posterkg.store import open_store

    torch.set_num_threads(args.threads)
    mcfg = registry.model_config(args.model, {"item_item": 0.0})
    with open_store(args.db, read_only=True) as store:
        inputs = assemble(store, features=feature_spec(mcfg)).inputs
    new = registry.build(args.model, inputs, mcfg, seed=0)
    cls = getattr(old_module(args.old), type(new).__name__)
    old = cls(inputs, mcfg)
    old.load_state_dict(new.state_dict())
    with torch.no_grad():                       # a non-zero time table, so the part does work
        for m in (new, old):
            m.time_bias.weight.copy_(torch.linspace(-1, 1, m.time_bias.weight.numel()).view_as(m.time_bias.weight))
    data = inputs.data
    hist = data.history("valid")
    win, wsg, wts = new._train_windows(hist, with_ts=True)
    lengths = (win > 0).sum(1)
    batches = list(_batches(lengths, 128, torch.Generator().manual_seed(0), bucket=True))[:args.steps]

    def steps(m):
        m.train()
        m._neg_gen = torch.Generator().manual_seed(1)
        losses = []
        for idx in batches:
            keep = max(2, int(lengths[idx].max()))
            m.zero_grad()
            torch.manual_seed(5)
            loss = m.train_loss(win[idx, -keep:], wsg[idx, -keep:], None, wts[idx, -keep:])
            loss.backward()
            losses.append(float(loss.detach()))
        return losses

    same_loss = steps(new) == steps(old)
    same_grad = torch.equal(new.time_bias.weight.grad, old.time_bias.weight.grad)
    new.eval(), old.eval()
    users = torch.arange(min(500, data.n_users))
    with torch.no_grad():
        same_scores = torch.equal(new.score(users, hist), old.score(users, hist))
    print(f"same losses {same_loss}, same time-table gradient {same_grad}, same valid scores {same_scores}")
    times = {k: {"steps": [], "valid": []} for k in ("new", "old")}
    for r in range(args.rounds):
        order = [("new", new), ("old", old)][:: 1 if r % 2 == 0 else -1]
        for name, m in order:
            t = time.perf_counter()
            steps(m)
            times[name]["steps"].append(time.perf_counter() - t)
            m.eval()
            t = time.perf_counter()
            evaluate_model(m, data, "valid")
            times[name]["valid"].append(time.perf_counter() - t)
            print(f"round {r} {name}: {len(batches)} steps {times[name]['steps'][-1]:.2f} s, "
                  f"valid evaluation {times[name]['valid'][-1]:.2f} s", flush=True)
    summary = {k: {part: {"min": min(v), "median": statistics.median(v)} for part, v in d.items()}
               for k, d in times.items()}
    print(f"\n{'':24s}{'min s':>8s}{'median s':>10s}{'new / old (median)':>20s}")
    for part in ("steps", "valid"):
        for k in ("old", "new"):
            s = summary[k][part]
            ratio = summary["new"][part]["median"] / summary["old"][part]["median"] if k == "new" else 1.0
            print(f"{k + ' ' + part:24s}{s['min']:8.2f}{s['median']:10.2f}{ratio:20.2f}")
    doc = {"benchmark": "time_part_speed", "old": args.old, "model": args.model, "threads": args.threads,
           "steps": len(batches), "rounds": args.rounds, "same_losses": same_loss, "same_gradient": same_grad,
           "same_scores": same_scores, "seconds": times, "summary": summary,
           "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1))
    return 0 if same_loss and same_grad and same_scores else 1


if __name__ == "__main__":
    sys.exit(main())
