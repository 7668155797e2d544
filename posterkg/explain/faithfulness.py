"""Faithfulness of explanations, measured by deletion.

For a recommendation (u, M) whose explanation cites concepts C (``|C| = n``), delete the edges
between M and C (both directions) from the graph and re-score: ``drop_cited = s - s_without_C``.
Then delete ``n`` concept edges of M drawn uniformly at random among all of M's concept edges
(a random explanation of the same size; ``draws`` draws averaged): ``drop_random``. A faithful
explainer cites the edges the model actually relies on, so ``drop_cited > drop_random`` on
average and in most cases.

Cases are skipped (and counted) when the explanation cites no concept or when the movie has no
concept edge besides the cited ones (the random set would be the cited one).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np
import torch

from posterkg.explain.attribution import delete_movie_concepts, score_one
from posterkg.explain.paths import Explainer
from posterkg.progress import bar


@dataclasses.dataclass
class Case:
    user_id: int
    movie_id: int
    score: float
    n_concepts: int          # concept edges of the movie in the graph
    cited: list[int]
    method: str
    drop_cited: float
    drop_random: float


def deletion_case(tm, explainer: Explainer, user_id: int, movie_id: int,
                  rng: np.random.Generator, draws: int = 1) -> Case | str:
    """One case (database ids in, database ids out), or the reason it was skipped. The deletions
    are masks of zeros on the model's own graph (:func:`delete_movie_concepts`, index space)."""
    ids = tm.ids
    concepts = [c for c in explainer.k.concepts_of(movie_id) if ids.has("concept", c)]
    if len(concepts) < 2:
        return "movie has fewer than 2 concept edges"
    ex = explainer.explain(user_id, movie_id)
    cited = [e.concept_id for e in ex.cited]
    if not cited:
        return "no concept cited"
    if len(concepts) <= len(cited):
        return "movie has no concept edge besides the cited ones"
    u, m = ids.index("user", user_id), ids.index("movie", movie_id)
    cidx = dict(zip(concepts, ids.lookup("concept", concepts)[0].tolist()))
    base = ex.score if ex.score is not None else score_one(tm, u, m)
    s_cited = score_one(tm, u, m, delete_movie_concepts(tm.graph, m, [cidx[c] for c in cited]))
    drops = []
    for _ in range(draws):
        pick = rng.choice(np.array(concepts), size=len(cited), replace=False).tolist()
        drops.append(base - score_one(tm, u, m, delete_movie_concepts(tm.graph, m, [cidx[c] for c in pick])))
    return Case(int(user_id), int(movie_id), base, len(concepts), cited, ex.method, base - s_cited,
                float(np.mean(drops)))


def run_faithfulness(tm, explainer: Explainer, *, n: int = 1000, k: int = 10, seed: int = 0,
                     draws: int = 1, users: list[int] | None = None) -> dict[str, Any]:
    """Explain up to ``n`` top-``k`` recommendations of randomly ordered users (those with a
    positive train edge in the model's graph) and run the deletion test on each. Returns the
    summary and the cases."""
    rng = np.random.default_rng(seed)
    if users is None:
        pos = tm.graph.get("pos").src if tm.graph is not None else torch.zeros(0, dtype=torch.long)
        idx = pos.unique().numpy() if len(pos) else np.arange(len(tm.ids.user_ids))
        users = rng.permutation(tm.ids.user_ids[idx].astype(int)).tolist()
    cases: list[Case] = []
    skipped: dict[str, int] = {}
    t0 = time.perf_counter()
    with bar(total=n, desc="faithfulness", unit="rec") as pb:
        for u in users:
            if len(cases) >= n:
                break
            for m, _ in tm.recommend(int(u), k=k):
                if len(cases) >= n:
                    break
                r = deletion_case(tm, explainer, int(u), int(m), rng, draws)
                if isinstance(r, str):
                    skipped[r] = skipped.get(r, 0) + 1
                else:
                    cases.append(r)
                    pb.update(1)
    secs = time.perf_counter() - t0
    dc = np.array([c.drop_cited for c in cases])
    dr = np.array([c.drop_random for c in cases])
    methods: dict[str, int] = {}
    for c in cases:
        methods[c.method] = methods.get(c.method, 0) + 1
    summary = {
        "cases": len(cases),
        "mean_drop_cited": float(dc.mean()) if len(dc) else None,
        "mean_drop_random": float(dr.mean()) if len(dr) else None,
        "median_drop_cited": float(np.median(dc)) if len(dc) else None,
        "median_drop_random": float(np.median(dr)) if len(dr) else None,
        "share_cited_gt_random": float((dc > dr).mean()) if len(dc) else None,
        "share_cited_ge_random": float((dc >= dr).mean()) if len(dc) else None,
        "mean_cited": float(np.mean([len(c.cited) for c in cases])) if cases else None,
        "mean_concepts_per_movie": float(np.mean([c.n_concepts for c in cases])) if cases else None,
        "mean_score": float(np.mean([c.score for c in cases])) if cases else None,
        "skipped": skipped,
        "methods": methods,
        "seconds": secs,
        "draws": draws,
        "k": k,
        "seed": seed,
    }
    return {"summary": summary, "cases": [dataclasses.asdict(c) for c in cases]}
