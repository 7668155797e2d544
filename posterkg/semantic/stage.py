"""Stage ``semantic_ids``: RQ-VAE semantic IDs of the movies, when the config asks for them.

Not in the default pipeline (``posterkg/pipeline.py`` PIPELINE): it runs only with a
``[semantic_ids]`` section, after ``features`` (and ``graph``, for the ``concepts`` block), and
builds only the configured versions that are not in the database yet. IDs are ground truth, so
an existing version is never rebuilt by the pipeline (``posterkg semantic-ids build --rebuild``
does that by hand); movies ingested after the build get IDs from the frozen state
(:func:`posterkg.semantic.ids.assign`).
"""

from __future__ import annotations

from posterkg.config import Config
from posterkg.pipeline import Stage
from posterkg.store import Store


def _run(store: Store, config: Config):
    if "semantic_ids" not in config.data:
        return {"built": [], "assigned": [], "skipped": "no [semantic_ids] section"}
    from posterkg.semantic.ids import assign, build, ensure_tables, version_configs, versions

    ensure_tables(store)
    have = set(versions(store))
    names = list(version_configs(config))
    todo = [n for n in names if n not in have]
    built = build(store, config, version_names=todo) if todo else []
    assigned = [assign(store, n) for n in names if n in have]
    return {"built": built, "assigned": assigned}


STAGE = Stage("semantic_ids", sections=("semantic_ids",),
              reads=("movies", "poster_embeddings", "text_embeddings", "movie_concept_edges", "split"),
              run=_run)
