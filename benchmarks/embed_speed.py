"""Embedding speed, before vs after, side by side: phrases/s of the shipped MiniLM on short phrases.

``before`` is what posterkg's encoder did until this benchmark was written: ``FlagModel.encode``
on chunks of 2048 texts (batch 128, max_length 64, torch's default threads), which sorts by length
but runs one trial batch per call to probe memory. ``after`` is ``Encoder.encode`` as shipped
(own length-sorted loop over FlagModel's tokenizer/model/pooling, no trial batch,
``torch.inference_mode``, ``[embed] threads`` auto). The other rows vary one knob of ``after``.

Each round takes a fresh slice of the projection benchmark's phrase pool and runs every variant on
it, in rotated order, so the load of a shared machine hits all variants alike: compare the ratio
column, not absolute rates across runs. Max abs diff is against ``before`` on the same texts.

    .venv/bin/python benchmarks/embed_speed.py                  # 3 rounds of 2048 phrases
    .venv/bin/python benchmarks/embed_speed.py --rounds 2 --per-round 1024
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "tests"))
os.environ.setdefault("POSTERKG_PROGRESS", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from posterkg.embed.encoder import Encoder  # noqa: E402
from projection import phrase_pool  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pool", type=int, default=20_000, help="phrase pool (as in projection.py)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--per-round", type=int, default=2048, help="phrases per round (the cache's chunk)")
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    values = phrase_pool(args.pool, args.seed)["value"].tolist()
    rng = np.random.default_rng(args.seed + 1)
    values = [values[i] for i in rng.permutation(len(values))]
    enc = Encoder(args.model)
    enc.encode(["load"], _count=False)
    flag = enc._model
    n_tokens = [len(x) for x in flag.tokenizer(values)["input_ids"]]
    default_threads = torch.get_num_threads()

    def before(texts):
        out = []
        for i in range(0, len(texts), 128 * 16):
            out.append(np.asarray(flag.encode(texts[i:i + 2048], batch_size=128, max_length=64,
                                              convert_to_numpy=True), dtype=np.float32))
        return np.concatenate(out)

    def after(threads=0, batch=128):
        def run(texts):
            enc.threads, enc.batch_size = threads, batch
            try:
                return enc.encode(texts, _count=False)
            finally:
                enc.threads, enc.batch_size = 0, 128
        return run

    variants = {
        "before: FlagModel.encode, bs 128": before,
        "after: Encoder.encode (auto threads)": after(),
        f"after, {default_threads} threads (torch default)": after(default_threads),
        "after, 1 thread": after(1),
        "after, 1 thread, bs 512": after(1, 512),
        f"after, {default_threads} threads, bs 512": after(default_threads, 512),
    }
    names = list(variants)
    secs = dict.fromkeys(names, 0.0)
    diff = dict.fromkeys(names, 0.0)
    loads, auto_threads = [], []
    for r in range(args.rounds):
        texts = values[r * args.per_round:(r + 1) * args.per_round]
        if len(texts) < args.per_round:
            break
        loads.append(os.getloadavg()[0])
        auto_threads.append(enc.torch_threads())
        order = names[r % len(names):] + names[:r % len(names)]
        got = {}
        for name in order:
            t0 = time.perf_counter()
            got[name] = variants[name](texts)
            secs[name] += time.perf_counter() - t0
        for name in names:
            diff[name] = max(diff[name], float(np.abs(got[name] - got[names[0]]).max()))
        print(f"round {r + 1}/{args.rounds}: load {loads[-1]:.1f}, auto threads {auto_threads[-1]}", flush=True)
    done = len(loads) * args.per_round
    rows = [{"variant": n, "seconds": round(secs[n], 2), "phrases_per_s": round(done / secs[n], 1),
             "speedup_vs_before": round(secs[names[0]] / secs[n], 2), "max_abs_diff": diff[n]} for n in names]
    width = max(map(len, names))
    print(f"{done:,} phrases ({args.rounds} rounds of {args.per_round:,}) from a {args.pool:,} pool; "
          f"tokens per phrase max {max(n_tokens)}, mean {np.mean(n_tokens):.1f} (max_length 64); "
          f"longest phrase {max(map(len, values))} chars; {os.cpu_count()} cores, load {min(loads):.1f}-{max(loads):.1f}")
    print(f"{'variant'.ljust(width)}  seconds  phrases/s  vs before  max abs diff")
    for row in rows:
        print(f"{row['variant'].ljust(width)}  {row['seconds']:7.1f}  {row['phrases_per_s']:9.1f}  "
              f"{row['speedup_vs_before']:8.2f}x  {row['max_abs_diff']:.1e}")
    result = {"phrases": done, "rounds": len(loads), "per_round": args.per_round, "pool": args.pool,
              "model": enc.name, "max_tokens": max(n_tokens), "mean_tokens": float(np.mean(n_tokens)),
              "max_chars": max(map(len, values)), "cpu_count": os.cpu_count(),
              "torch_default_threads": default_threads, "auto_threads": auto_threads,
              "load_avg_1min": loads, "rows": rows,
              "note": "shared 2-core machine: compare ratios within this run"}
    out = REPO / "benchmarks" / "results" / "embed_speed.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
