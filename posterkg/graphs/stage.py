"""The ``graph`` stage of ``posterkg run``: rebuild the edge tables from the ``[graph]`` section."""

from __future__ import annotations

import click

from posterkg.config import Config
from posterkg.pipeline import Stage


def _inputs(store, config: Config) -> str:
    # upstream changes (split, vocabulary) are chained in by the pipeline; add our own settings
    # and the sizes of what we read, so a stage re-run by hand upstream is noticed too
    sizes = [store.count(t) for t in ("split", "movie_concepts", "concepts")]
    return f"{config.fingerprint('graph')}|{sizes}"


def _run(store, config: Config) -> dict[str, int]:
    from posterkg.graphs import build_graphs

    counts = build_graphs(store, config)
    click.echo("graph: " + ", ".join(f"{k} {v:,}" for k, v in counts.items()))
    return counts


STAGE = Stage("graph", _inputs, _run)
