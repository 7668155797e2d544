"""Pipeline stage ``schema``: discover (only when no vocabulary exists) -> freeze -> project.

* No frozen vocabulary and no TOML file: discover on a seeded sample, write the TOML, freeze it.
* A TOML file exists (e.g. edited by hand): freeze it; identical content is a no-op, so an edit
  followed by ``posterkg run`` creates exactly one new version.
* Then project incrementally (new movies, plus pooled points when the version is newer).
"""

from __future__ import annotations

import hashlib
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


def vocab_path(config: Config, cfg: SchemaConfig | None = None) -> Path:
    """``[schema] vocab``, else ``<db stem>.vocab.toml`` beside the database."""
    cfg = cfg or config.section("schema", SchemaConfig)
    if cfg.vocab:
        return Path(cfg.vocab)
    db = config.db
    return db.with_name(db.stem + ".vocab.toml")


def _inputs(store: Store, config: Config) -> str:
    cfg, _ = configs(config)
    path = vocab_path(config, cfg)
    parts = [config.fingerprint("schema", "embed")]
    if store.table_exists("raw_points"):
        parts.append(str(store.execute("SELECT count(*), max(run_id) FROM raw_points").fetchall()))
    if path.is_file():
        parts.append(hashlib.sha256(path.read_bytes()).hexdigest())
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def run_schema(store: Store, config: Config, *, db_path: Path | None = None) -> dict:
    cfg, ecfg = configs(config)
    cache = EmbeddingCache(store, load_encoder(ecfg))
    path = vocab_path(config, cfg)
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


STAGE = Stage("schema", _inputs, lambda store, config: run_schema(store, config))
