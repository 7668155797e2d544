"""Loading the trained model for explanations, with a graph-only fallback.

The explainer needs a *scorer*: ``.bundle`` (GraphBundle) and ``.rescore(bundle, user_id,
movie_ids)``; the report and the benchmark also use ``.recommend(user_id, k)`` and similar movies
``.movie_embeddings()``. :func:`posterkg.gnn.api.load_model` returns a TrainedModel with all four.
When there is no model (GNN not installed or not trained), callers get ``None`` and a note, and
explain with graph weights only.
"""

from __future__ import annotations

from typing import Any

from posterkg.errors import InputError
from posterkg.store import Store

NEEDED = ("bundle", "rescore", "recommend", "movie_embeddings")


def load_scorer(store: Store, model_id: str | None = None, *, required: bool = False) -> tuple[Any, str | None, str]:
    """(model or None, model_id, note). ``required``: raise instead of returning None."""
    def none(why: str):
        if required or model_id is not None:
            raise InputError(why)
        return None, None, why

    try:
        from posterkg.gnn.api import load_model
    except ImportError as exc:
        return none(f"the GNN (posterkg.gnn.api) is not available ({exc}); graph-only explanations")
    if not store.table_exists("models") or store.count("models") == 0:
        return none("no trained model in the models table (run `posterkg train`); graph-only explanations")
    model = load_model(store, model_id)
    missing = [a for a in NEEDED if not hasattr(model, a)]
    if missing:
        raise InputError(f"the loaded model lacks {', '.join(missing)}; cannot explain with it")
    mid = model_id or getattr(model, "model_id", None)
    return model, mid, ""
