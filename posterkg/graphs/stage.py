"""The ``graph`` stage of ``posterkg run``: rebuild the edge tables from the ``[graph]`` section."""

from __future__ import annotations

import click

from posterkg.config import Config
from posterkg.pipeline import Stage


def _run(store, config: Config) -> dict[str, int]:
    from posterkg.graphs import build_graphs

    counts = build_graphs(store, config)
    click.echo("graph: " + ", ".join(f"{k} {v:,}" for k, v in counts.items()))
    return counts


def _interests(store, config: Config) -> str:
    """With ``[graph] user_interests`` the graph also reads user_interests (and which run is the
    latest): a new extraction re-runs the stage; without it, interests runs change nothing."""
    if not config.data.get("graph", {}).get("user_interests"):
        return ""
    runs = store.scalar("SELECT max(run_id) FROM interest_runs") if store.table_exists("interest_runs") else None
    return f"{store.table_hash('user_interests')}|{runs}"


STAGE = Stage("graph", _interests, sections=("graph",),
              reads=("ratings", "split", "movies", "movie_concepts", "concepts"), run=_run)
