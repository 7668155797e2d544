"""The sequence models' catalogue softmax, one-shot vs chunked, forward + backward, side by side.

    .venv/bin/python benchmarks/softmax_speed.py                      # ML-1M's shape, 1 thread
    .venv/bin/python benchmarks/softmax_speed.py --movies 62000 --positions 4096 --rounds 3

One training step's loss term of SASRec / posterkg-seq: ``log_softmax(h @ table.T)`` at each
position's target, then its backward into ``h`` and ``table``. ``one-shot`` materialises the
``[positions, movies]`` logits (``softmax_chunk = 0``); ``chunk N`` is
:func:`posterkg.gnn.losses.catalogue_log_softmax_at` with N positions at a time (``-bf16``: its two
logits products in bfloat16). Every variant runs once per round in a rotated order (the machine
is shared and noisy); prints min / median seconds and the speed-up over one-shot, checks that
each variant's loss and gradients match one-shot's, and writes
``benchmarks/results/softmax_speed.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--positions", type=int, default=16384, help="targets in one step (rows of h)")
    p.add_argument("--movies", type=int, default=3706, help="catalogue size (ML-1M cut: 3,706 rated movies)")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--chunks", type=int, nargs="+", default=[128, 256, 512, 1024])
    p.add_argument("--bf16", action="store_true", help="also the bfloat16-products variants")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=HERE / "results" / "softmax_speed.json")
    args = p.parse_args(argv)
    import torch

    from posterkg.gnn.losses import catalogue_log_softmax_at

    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    h0 = torch.randn(args.positions, args.dim, generator=g) * 0.3
    t0 = torch.randn(args.movies, args.dim, generator=g) * 0.3
    targets = torch.randint(0, args.movies, (args.positions, 1), generator=g)

    def step(chunk: int, bf16: bool):
        h, t = h0.clone().requires_grad_(), t0.clone().requires_grad_()
        if chunk == 0:
            picked = torch.log_softmax(h @ t.T, -1).gather(1, targets)
        else:
            picked = catalogue_log_softmax_at(h, t, targets, chunk, bf16=bf16)
        loss = -picked.mean()
        loss.backward()
        return float(loss.detach()), h.grad, t.grad

    variants = {"one-shot": (0, False)}
    variants.update({f"chunk {c}": (c, False) for c in args.chunks})
    if args.bf16:
        variants.update({f"chunk {c}-bf16": (c, True) for c in args.chunks})
    ref = step(0, False)
    error = {}
    for name, (c, b) in variants.items():
        loss, gh, gt = step(c, b)
        error[name] = max(abs(loss - ref[0]) / abs(ref[0]),
                          float((gh - ref[1]).abs().max() / ref[1].abs().max()),
                          float((gt - ref[2]).abs().max() / ref[2].abs().max()))
    times = {name: [] for name in variants}
    names = list(variants)
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            start = time.perf_counter()
            step(*variants[name])
            times[name].append(time.perf_counter() - start)
    base = min(times["one-shot"])
    rows = [{"variant": n, "min_s": min(v), "median_s": statistics.median(v), "speedup_min": base / min(v),
             "max_rel_error": error[n]} for n, v in times.items()]
    print(f"positions {args.positions}, movies {args.movies}, dim {args.dim}, {args.threads} thread(s), "
          f"{args.rounds} rounds")
    print(f"{'variant':<18}{'min s':>9}{'median s':>10}{'speed-up':>10}{'max rel error':>15}")
    for row in rows:
        print(f"{row['variant']:<18}{row['min_s']:>9.3f}{row['median_s']:>10.3f}{row['speedup_min']:>10.2f}"
              f"{row['max_rel_error']:>15.1e}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"benchmark": "softmax_speed", "positions": args.positions, "movies": args.movies,
                                    "dim": args.dim, "threads": args.threads, "rounds": args.rounds,
                                    "cpus": os.cpu_count(), "load_average": os.getloadavg()[0], "rows": rows,
                                    "seconds": times}, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
