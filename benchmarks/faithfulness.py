"""Faithfulness of posterkg explanations by deletion (issue 6).

Over N recommendations (top-k of randomly ordered users), delete the edges between the movie and
the concepts its explanation cites, re-score, and compare the score drop with deleting as many
random concept edges of that movie. Prints both mean drops and the share of cases where the cited
deletion hurts more; writes benchmarks/results/faithfulness.json.

    python benchmarks/faithfulness.py --db ml1m.duckdb --n 1000
    python benchmarks/faithfulness.py --db ml1m.duckdb --n 200 --method occlusion --draws 3
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", default="posterkg.duckdb", help="database with a trained model")
    ap.add_argument("--model-id", default=None, help="model to explain [default: newest]")
    ap.add_argument("--n", type=int, default=1000, help="recommendations to test")
    ap.add_argument("-k", type=int, default=10, help="top-k recommendations per user")
    ap.add_argument("--cite", type=int, default=2, help="concepts an explanation cites")
    ap.add_argument("--method", choices=["gradient", "occlusion", "graph"], default="gradient")
    ap.add_argument("--rank", choices=["path", "edge"], default="path",
                    help="rank cited concepts by path relevance or by the movie's own edge")
    ap.add_argument("--draws", type=int, default=1, help="random deletions averaged per case")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--interactions", action="store_true",
                    help="gradient: also mask the user's interaction edges ([explain] interactions; slow)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared machine)")
    ap.add_argument("--out", default=str(RESULTS / "faithfulness.json"))
    args = ap.parse_args(argv)

    import torch

    from posterkg.explain import ExplainConfig
    from posterkg.explain.faithfulness import run_faithfulness
    from posterkg.explain.model import load_scorer
    from posterkg.explain.paths import Explainer, Knowledge
    from posterkg.store import open_store

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    with open_store(args.db, read_only=True) as store:
        model, mid, note = load_scorer(store, args.model_id, required=True)
        cfg = ExplainConfig(method=args.method, cite=args.cite, rank=args.rank,
                            interactions=args.interactions)
        res = run_faithfulness(model, Explainer(Knowledge(store), model, cfg), n=args.n, k=args.k,
                               seed=args.seed, draws=args.draws)
    s = res["summary"]
    res["summary"].update(model_id=mid, db=str(args.db), method_asked=args.method, cite=args.cite, rank=args.rank,
                          interactions=args.interactions)
    rows = [
        ("cases", s["cases"]),
        ("mean score drop, cited concepts deleted", s["mean_drop_cited"]),
        ("mean score drop, as many random concept edges", s["mean_drop_random"]),
        ("median drop cited / random", f'{s["median_drop_cited"]} / {s["median_drop_random"]}'),
        ("share of cases cited > random", s["share_cited_gt_random"]),
        ("share of cases cited >= random", s["share_cited_ge_random"]),
        ("mean cited concepts / concepts per movie", f'{s["mean_cited"]} / {s["mean_concepts_per_movie"]}'),
        ("mean score of the recommendations", s["mean_score"]),
        ("weights used", s["methods"]),
        ("skipped", s["skipped"]),
        ("seconds (shared CPU, noisy)", round(s["seconds"], 1)),
    ]
    w = max(len(r[0]) for r in rows)
    print(f"faithfulness of explanations, model {mid}, method {args.method}, rank {args.rank}, cite {args.cite}, "
          f"interaction edges masked: {args.interactions}")
    for k, v in rows:
        print(f"  {k.ljust(w)}  {v:.4f}" if isinstance(v, float) else f"  {k.ljust(w)}  {v}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1, default=str))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
