"""The ``ingest`` pipeline stage: ``[ingest] source`` (a MovieLens folder) and ``posters``.

Its fingerprint is the config section plus the size and mtime of every file in the source folder
and in the poster folder, so ``posterkg run`` re-ingests only when the data changed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import click

from posterkg.config import Config
from posterkg.errors import ConfigError
from posterkg.pipeline import Stage
from posterkg.store import Store


@dataclasses.dataclass
class IngestConfig:
    """``[ingest]`` section."""

    source: str = ""          # MovieLens folder (ML-100K, ML-1M, ML-20M/25M/32M/latest layouts)
    posters: str = ""         # folder of {movie_id}.jpg; empty: no posters


def folder_fingerprint(folder: str | Path) -> str:
    """Hash of (name, size, mtime) of every file directly in ``folder`` (cheap: stat only)."""
    p = Path(folder)
    if not p.is_dir():
        return "missing"
    h = hashlib.sha256()
    with os.scandir(p) as it:
        entries = sorted((e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in it if e.is_file())
    for name, size, mtime in entries:
        h.update(f"{name}\0{size}\0{mtime}\n".encode())
    return h.hexdigest()[:16]


def _config(config: Config) -> IngestConfig:
    cfg = config.section("ingest", IngestConfig)
    if not cfg.source:
        raise ConfigError("[ingest] source is not set: give the MovieLens folder, e.g. source = \"data/ml-1m\"")
    return cfg


def _inputs(store: Store, config: Config) -> str:
    cfg = _config(config)
    from posterkg.ingest.movielens import detect_layout

    root = detect_layout(cfg.source).root
    parts = [json.dumps(dataclasses.asdict(cfg), sort_keys=True), folder_fingerprint(root)]
    if cfg.posters:
        parts.append(folder_fingerprint(cfg.posters))
    return "|".join(parts)


def _run(store: Store, config: Config) -> None:
    from posterkg.ingest.movielens import ingest_movielens
    from posterkg.ingest.posters import scan_posters

    cfg = _config(config)
    for line in ingest_movielens(store, cfg.source).lines():
        click.echo(line)
    if cfg.posters:
        for line in scan_posters(store, cfg.posters).lines():
            click.echo(line)


STAGE = Stage("ingest", _inputs, _run)
