"""Pipeline stage ``features``: dense poster (and text) embeddings, when the config asks for them.

It runs only with a ``[features]`` section in the config (``posterkg embed posters`` /
``posterkg embed texts`` are the same work by hand); without one it does nothing, so a config
that does not use dense features costs nothing. Tables: ``poster_embeddings``,
``text_embeddings`` (see :mod:`posterkg.embed.posters`).
"""

from __future__ import annotations

from posterkg.config import Config
from posterkg.pipeline import Stage
from posterkg.store import Store


def _run(store: Store, config: Config):
    if "features" not in config.data:
        return {"poster": None, "text": None, "skipped": "no [features] section"}
    from posterkg.embed.posters import run_embed

    return run_embed(store, config)


STAGE = Stage("features", sections=("features", "embed"), reads=("movies", "posters"), run=_run)
