"""The trained model explanations use, with a graph-only fallback.

:func:`load_scorer` returns the :class:`posterkg.gnn.api.TrainedModel` itself (no adapter): the
explainer masks the model's own graph (``tm.graph``) and calls ``tm.model.embeddings(masked)``
(:mod:`posterkg.explain.attribution`); the report and the benchmark use ``tm.recommend`` and
similar movies ``tm.movie_embeddings()``. With no trained model, callers get ``None`` and a note,
and explain with graph weights only.
"""

from __future__ import annotations

from typing import Any

from posterkg.errors import InputError
from posterkg.store import Store


def load_scorer(store: Store, model_id: str | None = None, *, required: bool = False) -> tuple[Any, str | None, str]:
    """(TrainedModel or None, model_id, note). ``required``: raise instead of returning None."""
    from posterkg.explain.attribution import has_concept_edges, uses_graph
    from posterkg.gnn.api import load_model

    if not store.table_exists("models") or store.count("models") == 0:
        why = "no trained model in the models table (run `posterkg train`); graph-only explanations"
        if required or model_id is not None:
            raise InputError(why)
        return None, None, why
    tm = load_model(store, model_id)
    ok, why = uses_graph(tm)
    if not ok:
        note = why + ": paths weighted by the graph alone"
    elif not has_concept_edges(tm):
        note = f"model {tm.model_id} was trained without concept edges: paths weighted by the graph alone"
    else:
        note = ""
    return tm, tm.model_id, note
