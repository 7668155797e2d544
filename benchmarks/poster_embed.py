"""EfficientNet-Lite0 poster embedding throughput, against a compute bound measured in the same run.

* model FLOPs: :class:`torch.utils.flop_counter.FlopCounterMode` over one 224x224 forward pass
  (``extract_features`` + mean pool + ``_fc``; convolutions and matmuls, 2 FLOPs per
  multiply-add; batch norm, ReLU6 and pooling are not counted, they are memory-bound anyway);
* machine: fp32 ``torch.mm`` of two NxN matrices (N = ``--matmul-n``, 2 N^3 FLOPs each) with
  the same torch thread count as the model, repeated for about ``--matmul-s`` seconds;
* posters/s, two ways: ``forward`` = the network alone on posters already decoded and
  preprocessed (NCHW float32 in memory), ``end_to_end`` = decode JPEG + crop/resize/normalise +
  forward, as ``posterkg embed posters`` does (without the database writes);
* compute bound = matmul FLOP/s / model FLOPs per poster; ``ratio`` = posters/s / bound.

Rounds are rotated (round r runs forward, end-to-end and matmul in a rotated order) so a load
spike from another process hits every measurement alike; min and median over rounds are reported
(rates: the median and the max, since the best round is the least disturbed).

    nice -n 10 .venv/bin/python benchmarks/poster_embed.py --limit 512 --rounds 3

Prints a table and writes ``benchmarks/results/poster_embed.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
DEFAULT_POSTERS = REPO.parent / "shared" / "data" / "ml-1m" / "posters"


def model_flops(net, torch) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, 3, 224, 224)
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        pooled = net.extract_features(x).mean((2, 3))
        net._fc(pooled)
    per_op = {str(k).split(".")[-1]: int(v) for k, v in counter.get_flop_counts()["Global"].items()}
    return {"total": int(counter.get_total_flops()), "per_op": per_op}


def matmul_rate(torch, n: int, seconds: float) -> float:
    a = torch.randn(n, n)
    b = torch.randn(n, n)
    torch.mm(a, b)   # warm-up
    reps, t0 = 0, time.perf_counter()
    while True:
        torch.mm(a, b)
        reps += 1
        dt = time.perf_counter() - t0
        if dt >= seconds and reps >= 3:
            return 2.0 * n ** 3 * reps / dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--posters", type=Path, default=DEFAULT_POSTERS)
    ap.add_argument("--limit", type=int, default=0, help="first N posters by movie id (0 = all)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=0, help="torch threads; 0 = the encoder's auto rule")
    ap.add_argument("--matmul-n", type=int, default=1024)
    ap.add_argument("--matmul-s", type=float, default=2.0)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "poster_embed.json")
    args = ap.parse_args()

    import numpy as np
    import torch
    from PIL import Image

    from posterkg.embed.image.base import auto_threads
    from posterkg.embed.image.efficientnet import EfficientNetLite0
    from posterkg.vlm.images import load_image

    files = sorted(args.posters.glob("*.jpg"), key=lambda p: int(p.stem))
    if args.limit:
        files = files[: args.limit]
    if not files:
        raise SystemExit(f"no posters in {args.posters}")
    load_before = os.getloadavg()
    threads = auto_threads(args.threads)
    torch.set_num_threads(threads)
    enc = EfficientNetLite0(device="cpu", threads=threads)
    flops = model_flops(enc.net, torch)

    # preprocessed batches for the forward-only measurement (built once, not timed)
    t0 = time.perf_counter()
    batches = [enc.prepare([Image.open(f) for f in files[i:i + args.batch_size]])
               for i in range(0, len(files), args.batch_size)]
    prep_s = time.perf_counter() - t0
    enc.forward_all(batches[0])   # warm-up

    def forward() -> float:
        t = time.perf_counter()
        for b in batches:
            enc.encode_prepared(b)
        return len(files) / (time.perf_counter() - t)

    def end_to_end() -> float:
        t = time.perf_counter()
        for i in range(0, len(files), args.batch_size):
            enc.encode([load_image(f) for f in files[i:i + args.batch_size]])
        return len(files) / (time.perf_counter() - t)

    def matmul() -> float:
        return matmul_rate(torch, args.matmul_n, args.matmul_s)

    tasks = [("forward", forward), ("end_to_end", end_to_end), ("matmul", matmul)]
    results: dict[str, list[float]] = {name: [] for name, _ in tasks}
    cpu0 = time.process_time()
    wall0 = time.perf_counter()
    for r in range(args.rounds):
        k = r % len(tasks)
        for name, fn in tasks[k:] + tasks[:k]:
            results[name].append(fn())
            print(f"round {r + 1}/{args.rounds} {name}: {results[name][-1]:,.2f}", file=sys.stderr, flush=True)
    wall = time.perf_counter() - wall0
    cpu = time.process_time() - cpu0

    def summary(values: list[float]) -> dict:
        return {"min": min(values), "median": statistics.median(values), "max": max(values), "rounds": values}

    mm = summary(results["matmul"])
    per_poster = flops["total"]
    out = {
        "model": "efficientnet-lite0", "input": "1x3x224x224", "flops_per_poster": per_poster,
        "flops_per_op": flops["per_op"], "posters": len(files), "batch_size": args.batch_size,
        "threads": threads, "rounds": args.rounds,
        "matmul": {"n": args.matmul_n, "flop_per_s": mm},
        "forward_posters_per_s": summary(results["forward"]),
        "end_to_end_posters_per_s": summary(results["end_to_end"]),
        "compute_bound_posters_per_s": {"at_median_matmul": mm["median"] / per_poster,
                                        "at_max_matmul": mm["max"] / per_poster},
        "ratio_to_bound": {
            "forward_median": statistics.median(results["forward"]) / (mm["median"] / per_poster),
            "end_to_end_median": statistics.median(results["end_to_end"]) / (mm["median"] / per_poster),
            "forward_best": max(results["forward"]) / (mm["max"] / per_poster),
        },
        "preprocess_once_s": prep_s, "wall_s": wall, "cpu_s": cpu,
        "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
        "cores": len(os.sched_getaffinity(0)), "machine": platform.machine(), "torch": torch.__version__,
        "numpy": np.__version__, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")

    gf = per_poster / 1e9
    rows = [
        ("model FLOPs / poster", f"{gf:.3f} GFLOP"),
        (f"matmul fp32 {args.matmul_n}^2, {threads} thread(s)", f"median {mm['median'] / 1e9:.1f} GFLOP/s (max {mm['max'] / 1e9:.1f})"),
        ("compute bound", f"{mm['median'] / per_poster:.1f} posters/s"),
        ("forward posters/s", f"median {statistics.median(results['forward']):.2f} (max {max(results['forward']):.2f})"),
        ("end-to-end posters/s", f"median {statistics.median(results['end_to_end']):.2f} (max {max(results['end_to_end']):.2f})"),
        ("forward / bound", f"{out['ratio_to_bound']['forward_median']:.3f}"),
        ("end-to-end / bound", f"{out['ratio_to_bound']['end_to_end_median']:.3f}"),
        ("load average before / after", f"{load_before[0]:.1f} / {out['loadavg_after'][0]:.1f} on {out['cores']} cores"),
    ]
    w = max(len(a) for a, _ in rows)
    print(f"EfficientNet-Lite0 on {len(files):,} posters, batch {args.batch_size}, {args.rounds} rotated rounds")
    for a, b in rows:
        print(f"{a.ljust(w)}  {b}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
