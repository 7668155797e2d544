"""Model-backend throughput: ``hf`` batch 1 vs ``hf`` batched (and ``vllm``) on a random Qwen2-VL.

No weights can be downloaded here, so the model is built from a config with RANDOM weights:

* default: the tiny test model (tests/tiny_vlm.py: 2 text layers of width 128, 1 vision block),
  for CPU; it measures the pipeline's overheads (image loading and preprocessing, grammar masks,
  validation, DuckDB writes) more than model compute;
* ``--full-size``: the real Qwen2-VL-2B-Instruct architecture (28 layers, width 1536, 32-block
  vision tower; values written in tests/tiny_vlm.py), saved in bfloat16, for a GPU run
  (``--device cuda``). Compute per token is the real model's; the tokenizer is still the tiny
  1,024-token BPE, so prompts and answers take more tokens than with Qwen's tokenizer, and random
  weights write answers of arbitrary length within the schema's budget. Read the figures as
  throughput of the code path, not of a trained model's tagging.

Rows go through benchmarks/tagging.py's ``run_row`` (the real runner: same posters, fresh
database per row). The vllm row runs in the vllm environment (``--vllm-python``, default
``.venv-vllm/bin/python`` when it exists) as a subprocess of benchmarks/tagging.py.

Examples::

    python benchmarks/tagging_models.py --n 16                        # CPU, tiny model
    python benchmarks/tagging_models.py --n 64 --full-size --device cuda --batch 16

Prints a table and writes ``benchmarks/results/tagging_models.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))


def _tagging_module():
    spec = importlib.util.spec_from_file_location("bench_tagging", REPO / "benchmarks" / "tagging.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main(argv: list[str] | None = None) -> int:
    tagging = _tagging_module()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--posters", type=Path, default=tagging.DEFAULT_POSTERS)
    ap.add_argument("--n", type=int, default=16, help="posters per row [%(default)s]")
    ap.add_argument("--batch", type=int, default=8, help="batch size of the batched rows [%(default)s]")
    ap.add_argument("--full-size", action="store_true", help="real Qwen2-VL-2B architecture (GPU)")
    ap.add_argument("--device", default="auto", help="hf device: auto | cpu | cuda [%(default)s]")
    ap.add_argument("--model-dir", type=Path, help="reuse a model folder built earlier")
    ap.add_argument("--no-vllm", action="store_true", help="skip the vllm row")
    ap.add_argument("--vllm-python", type=Path, default=REPO / ".venv-vllm" / "bin" / "python")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "tagging_models.json")
    args = ap.parse_args(argv)
    os.environ.setdefault("POSTERKG_PROGRESS", "0")

    from tiny_vlm import build_tiny_qwen2_vl

    size = "Qwen2-VL-2B architecture" if args.full_size else "tiny Qwen2-VL"
    note = f"random weights, {size}"
    results = []
    with tempfile.TemporaryDirectory(prefix="posterkg-bench-models-") as tmp:
        work = Path(tmp)
        model_dir = args.model_dir
        if model_dir is None:
            t0 = time.perf_counter()
            model_dir = build_tiny_qwen2_vl(work / "model", full_size=args.full_size)
            print(f"built {size} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        template = tagging.make_db(args.posters, args.n, work)
        hf_opts = {"device": args.device}
        rows = [("hf", {"batch_size": 1, "model": str(model_dir)}, hf_opts),
                ("hf", {"batch_size": args.batch, "model": str(model_dir)}, hf_opts)]
        for i, (name, row, options) in enumerate(rows):
            print(f"[{i + 1}] {name} batch {row['batch_size']}", file=sys.stderr, flush=True)
            r = tagging.run_row(template, work, i, name, row, options)
            r["note"] = note
            results.append(r)

        if not args.no_vllm and args.vllm_python.is_file():
            opts = {"max_model_len": 4096}
            if not args.full_size:
                opts.update(dtype="float32", enforce_eager=True)
            spec = ",".join([f"batch_size={args.batch}", f"model={model_dir}"]
                            + [f"{k}={json.dumps(v)}" for k, v in opts.items()])
            out = work / "vllm.json"
            env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE=os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
                       HF_HUB_OFFLINE="1", VLLM_LOGGING_LEVEL="WARNING")
            print(f"[3] vllm batch {args.batch} ({args.vllm_python})", file=sys.stderr, flush=True)
            proc = subprocess.run([str(args.vllm_python), str(REPO / "benchmarks" / "tagging.py"),
                                   "--posters", str(args.posters), "--n", str(args.n),
                                   "--backend", f"vllm:{spec}", "--out", str(out)],
                                  cwd=REPO, env=env, capture_output=True, text=True)
            if proc.returncode == 0:
                r = json.loads(out.read_text())["rows"][0]
                r["note"] = note
                results.append(r)
            else:
                print(f"vllm row failed:\n{proc.stderr[-3000:]}", file=sys.stderr)

    headers = ["backend", "batch", "posters", "failed", "load_s", "seconds", "posters/s",
               "ms/poster", "points/poster", "note"]
    table = [[r["backend"], r["batch_size"], r["posters"], r["failed"], f"{r['load_s']:.1f}",
              f"{r['seconds']:.1f}", f"{r['posters_per_s']:.2f}", f"{r['ms_per_poster']:.0f}",
              f"{r['points_per_poster']:.1f}", r["note"]] for r in results]
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *table)]
    for line in [headers, ["-" * w for w in widths], *table]:
        print("  ".join(str(x).ljust(w) for x, w in zip(line, widths)).rstrip())
    hf_rows = [r for r in results if r["backend"] == "hf"]
    if len(hf_rows) == 2 and hf_rows[0]["posters_per_s"] > 0:
        print(f"hf batch {args.batch} / batch 1 speed-up: "
              f"{hf_rows[1]['posters_per_s'] / hf_rows[0]['posters_per_s']:.2f}x")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "benchmark": "tagging_models", "n": args.n, "full_size": args.full_size,
        "weights": "random (no trained weights available offline)", "device": args.device,
        "machine": {"python": platform.python_version(), "platform": platform.platform(),
                    "cpus": os.cpu_count()},
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "rows": results,
    }, indent=2, default=str))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
