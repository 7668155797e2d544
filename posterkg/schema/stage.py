"""Pipeline stage ``schema``: discover (only when no vocabulary exists) -> freeze -> project.

* No frozen vocabulary and no TOML file: discover on a seeded sample, write the TOML, freeze it.
* A TOML file exists (e.g. edited by hand): freeze it; identical content is a no-op, so an edit
  followed by ``posterkg run`` creates exactly one new version.
* Then project incrementally (new movies, plus pooled points when the version is newer).
"""

from __future__ import annotations

from pathlib import Path

import click

from posterkg.clikit import print_table
from posterkg.config import Config
from posterkg.embed.cache import EmbeddingCache
from posterkg.embed.encoder import EmbedConfig, load_encoder
from posterkg.pipeline import Stage
from posterkg.schema import vocab as V
from posterkg.schema.discover import REPORT_HEADERS, SchemaConfig, discover
from posterkg.schema.project import project
from posterkg.store import Store


def configs(config: Config) -> tuple[SchemaConfig, EmbedConfig]:
    return config.section("schema", SchemaConfig).check(), config.section("embed", EmbedConfig)


def vocab_path(config: Config, cfg: SchemaConfig | None = None, db: str | Path | None = None) -> Path:
    """``[schema] vocab``, else ``<db stem>.vocab.toml`` beside the database ``db`` actually
    opened (``--db``; default: the config's ``db``), so two databases never share one file."""
    cfg = cfg or config.section("schema", SchemaConfig)
    if cfg.vocab:
        return Path(cfg.vocab)
    db = Path(db) if db is not None else config.db
    return db.with_name(db.stem + ".vocab.toml")


def embed_config(store: Store, config: Config, path: Path | None, *, explicit: bool = False,
                 prefer_frozen: bool = False) -> EmbedConfig:
    """The ``[embed]`` settings to embed with: the model the vocabulary was made with, not the
    config's, unless the model was given explicitly (``--model``): the vocabulary file's
    ``[meta] model`` or the latest frozen version's model (that one first with
    ``prefer_frozen``: projecting onto frozen centroids), else ``[embed]``."""
    from posterkg.embed.encoder import config_from_name

    ecfg = config.section("embed", EmbedConfig)
    if explicit:
        return ecfg

    def from_file():
        if path is not None and path.is_file():
            return V.read_toml(path)[0].get("model")
        return None

    def from_frozen():
        if store.table_exists("vocab_versions") and V.latest_version(store) is not None:
            return V.version_model(store)
        return None

    order = (from_frozen, from_file) if prefer_frozen else (from_file, from_frozen)
    for source in order:
        recorded = source()
        if recorded:
            return config_from_name(recorded, ecfg)
    return ecfg


def _files(store: Store, config: Config) -> list[Path]:
    return [vocab_path(config, db=store.path)]


def run_schema(store: Store, config: Config, *, db_path: Path | None = None) -> dict:
    cfg, _ = configs(config)
    path = vocab_path(config, cfg, db_path or store.path)
    encoder = load_encoder(embed_config(store, config, path))
    encoder.locate()               # weights missing: fail now, with the download hint
    cache = EmbeddingCache(store, encoder)
    V.ensure_tables(store)
    if V.latest_version(store) is None and not path.is_file():
        concepts, reports, meta = discover(store, cfg, cache)
        print_table([r.row() for r in reports], REPORT_HEADERS, title="discovered concepts per type")
        V.write_toml(path, concepts, meta)
        click.echo(f"wrote {path} ({len(concepts)} concepts); edit it and re-run to refreeze")
    if path.is_file():
        _, concepts = V.read_toml(path)
        version, created = V.freeze(store, concepts, cache, source=str(path))
        click.echo(f"vocabulary v{version} {'frozen' if created else 'unchanged'} ({len(concepts)} concepts)")
    summary = project(store, cfg, cache)
    print_table(list(summary.items()), ["projection", "value"])
    return summary


# reads the tagger's answers (raw_points, tag_runs) and the vocabulary file beside the database
STAGE = Stage("schema", sections=("schema", "embed"), reads=("raw_points", "tag_runs"), files=_files,
              run=lambda store, config: run_schema(store, config))
