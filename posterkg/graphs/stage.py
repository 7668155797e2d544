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


STAGE = Stage("graph", sections=("graph",),
              reads=("ratings", "split", "movies", "movie_concepts", "concepts"), run=_run)
