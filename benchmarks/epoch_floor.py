"""How fast can one posterkg-seq epoch be on this machine? A lower bound from its arithmetic.

    .venv/bin/python benchmarks/epoch_floor.py                 # ML-1M cut, 1 thread

Counts the matrix-product work of one training epoch of posterkg-seq exactly as it runs (the
real training windows, the bucketed batches trimmed to their longest window, the liked targets):

* catalogue softmax: ``8 P N d`` (logits, logits again in the backward, the two gradient
  products; ``6 P N d`` without the recomputation) for ``P`` targets, ``N`` movies, ``d`` dims;
* encoder linears: ``48 d^2`` per padded token and block (qkv, output, feed-forward 2d; forward +
  backward), the long-term map and the gate ``18 d^2`` per token;
* attention: timed directly (forward + backward of ``scaled_dot_product_attention`` with the
  model's mask) on every batch shape of the epoch.

Then times this machine's matrix products on the same shapes (float32 and bfloat16) and the
LightGCN baseline's epoch in the same process, and prints the floor in seconds (every product at
the measured speed, elementwise work, the optimizer and Python free) and as a multiple of
LightGCN's epoch. Writes ``benchmarks/results/epoch_floor.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _best(f, n: int = 7) -> float:
    f()
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t)
    return min(ts)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--db", type=Path, default=HERE / "results" / "accuracy-ml1m.duckdb")
    p.add_argument("--config", type=Path, default=HERE.parent / "configs" / "ml1m.toml")
    p.add_argument("--out", type=Path, default=HERE / "results" / "epoch_floor.json")
    args = p.parse_args(argv)
    os.environ.setdefault("POSTERKG_PROGRESS", "0")
    import torch
    import torch.nn.functional as F

    from posterkg.config import Config
    from posterkg.gnn import registry
    from posterkg.gnn.inputs import assemble
    from posterkg.gnn.sequential import _batches
    from posterkg.gnn.stage import feature_spec, model_configs
    from posterkg.gnn.train import train
    from posterkg.store import open_store

    torch.set_num_threads(args.threads)
    if not args.db.is_file():
        print(f"no database at {args.db}: run benchmarks/accuracy.py --prepare-only first", file=sys.stderr)
        return 2
    cfg = Config.load(args.config)
    tcfg, mcfg = model_configs(cfg, "posterkg-seq")
    with open_store(args.db, read_only=True) as store:
        inputs = assemble(store, features=feature_spec(mcfg)).inputs
    model = registry.build("posterkg-seq", inputs, mcfg, seed=0)
    c = model.cfg
    d, n_movies = c.dim, model.n_movies
    win, wsg = model._train_windows(inputs.data.history("valid"))
    lengths = (win > 0).sum(1)
    batches = _batches(lengths, tcfg.batch_size, torch.Generator().manual_seed(0), bucket=c.bucket)
    shapes, targets = [], 0
    for idx in batches:
        keep = max(2, int(lengths[idx].max()))
        _, ok = model._targets(win[idx, -keep:], wsg[idx, -keep:])
        targets += int(ok.any(-1).sum())
        shapes.append((len(idx), keep - 1))
    tokens = sum(b * L for b, L in shapes)
    flops = {"softmax": 8 * targets * n_movies * d,
             "linears": tokens * (48 * d * d * c.layers + 18 * d * d)}

    def gemm_rate(m, k, n, dtype) -> float:
        a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
        return 2 * m * k * n / _best(lambda: a @ b)

    rates = {}
    for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        # the softmax's three product shapes (chunk of 256 positions) and the encoder's
        soft = statistics.fmean([gemm_rate(256, d, n_movies, dtype), gemm_rate(256, n_movies, d, dtype),
                                 gemm_rate(n_movies, 256, d, dtype)])
        lin = statistics.fmean([gemm_rate(16384, d, 3 * d, dtype), gemm_rate(16384, d, 2 * d, dtype)])
        rates[name] = {"softmax": soft, "linears": lin}
    # attention: forward + backward on every batch shape of the epoch (the model's mask)
    heads = c.heads
    attn = 0.0
    cache: dict = {}
    for b, L in shapes:
        if (b, L) not in cache:
            q, k, v = (torch.randn(b, heads, L, d // heads, requires_grad=True) for _ in range(3))
            mask = torch.tril(torch.ones(L, L, dtype=torch.bool)).expand(b, 1, L, L)

            def fb():
                F.scaled_dot_product_attention(q, k, v, attn_mask=mask).sum().backward()
            cache[(b, L)] = _best(fb, 3) * c.layers
        attn += cache[(b, L)]
    floor = {name: {"softmax_s": flops["softmax"] / r["softmax"], "linears_s": flops["linears"] / r["linears"],
                    "attention_s": attn} for name, r in rates.items()}
    for f in floor.values():
        f["total_s"] = f["softmax_s"] + f["linears_s"] + f["attention_s"]
    # LightGCN's epoch and posterkg-seq's real epoch, same process, same thread count
    measured = {}
    for kind in ("lightgcn", "posterkg-seq"):
        t_cfg, m_cfg = model_configs(cfg, kind)
        t_cfg = dataclasses.replace(t_cfg, epochs=1, patience=1, eval_every=10 ** 6, threads=args.threads)
        measured[kind] = train(inputs, t_cfg, model_cfg=m_cfg).seconds_per_epoch
    lg = measured["lightgcn"]
    print(f"posterkg-seq epoch: {targets:,} targets x {n_movies:,} movies x {d} dims, {tokens:,} padded tokens "
          f"in {len(shapes)} batches, {args.threads} thread(s)")
    print(f"{'':<10}{'softmax s':>11}{'linears s':>11}{'attention s':>13}{'floor s':>9}{'x lightgcn':>12}"
          f"{'GEMM GFLOP/s':>14}")
    for name, f in floor.items():
        print(f"{name:<10}{f['softmax_s']:>11.2f}{f['linears_s']:>11.2f}{f['attention_s']:>13.2f}"
              f"{f['total_s']:>9.2f}{f['total_s'] / lg:>12.1f}{rates[name]['softmax'] / 1e9:>14.0f}")
    print(f"measured: lightgcn {lg:.2f} s/epoch, posterkg-seq {measured['posterkg-seq']:.2f} s/epoch "
          f"({measured['posterkg-seq'] / lg:.1f}x); the target 3x is {3 * lg:.2f} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "benchmark": "epoch_floor", "threads": args.threads, "cpus": os.cpu_count(),
        "load_average": os.getloadavg()[0], "targets": targets, "movies": n_movies, "dim": d,
        "padded_tokens": tokens, "batches": len(shapes), "flops": flops,
        "gemm_flops_per_s": rates, "floor": floor, "measured_s_per_epoch": measured,
        "floor_x_lightgcn": {k: f["total_s"] / lg for k, f in floor.items()}}, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
