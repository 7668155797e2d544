"""The ``ingest`` pipeline stage: ``[ingest] source`` (a MovieLens folder) and ``posters``.

It declares the ``[ingest]`` section and the source and poster folders (``_files``); the pipeline
fingerprints them (name, size and mtime of every file), so ``posterkg run`` re-ingests only when
the data changed.

On a fresh machine (``source`` absent) the data is downloaded first: see
:mod:`posterkg.ingest.bootstrap` (``download``, ``fallback_dir``, ``posters_url``).
"""

from __future__ import annotations

import dataclasses
import hashlib
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
    # Fresh machine (posterkg.ingest.bootstrap): when `source` is not a folder, use fallback_dir,
    # downloading the `download` release into it first when it is absent too.
    download: str = ""        # release to download when source is absent, e.g. "ml-1m"; "": never
    fallback_dir: str = ""    # where the download goes; default data/<download>
    download_url: str = ""    # mirror of files.grouplens.org/datasets/movielens; "": GroupLens
    md5: str = ""             # expected MD5 of the zip; "": the published one
    download_retries: int = 5
    probe_timeout: float = 5.0  # seconds: a server that does not answer fails the run this fast
    posters_url: str = ""     # poster URL template ({movie_id}, {tmdb_id}, {imdb_id}) or "tmdb";
                              # used when the `posters` folder is absent: fetched into fallback_dir/posters
    posters_concurrency: int = 8
    max_pixels: int = 25_000_000   # a bigger poster gets status too_large (not decoded, not tagged); 0: no cap


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
    if not cfg.source and not cfg.download and not cfg.fallback_dir:
        raise ConfigError("[ingest] source is not set: give the MovieLens folder, e.g. source = \"data/ml-1m\"")
    return cfg


def _run(store: Store, config: Config) -> None:
    from posterkg.ingest.bootstrap import bootstrap, fetch_missing_posters
    from posterkg.ingest.movielens import ingest_movielens
    from posterkg.ingest.posters import scan_posters

    cfg = _config(config)
    res, lines = bootstrap(store, cfg)
    for line in lines:
        click.echo(line)
    for line in ingest_movielens(store, res.source).lines():
        click.echo(line)
    if res.fetch_posters and res.posters is not None:
        for line in fetch_missing_posters(store, cfg, res.posters):
            click.echo(line)
    if res.posters is not None:
        if res.posters.is_dir() or cfg.posters and res.posters == Path(cfg.posters):
            for line in scan_posters(store, res.posters, max_pixels=cfg.max_pixels).lines():
                click.echo(line)
        else:
            click.echo(f"no poster folder at {cfg.posters or res.posters}: running without posters")


def _files(store: Store, config: Config) -> list[Path]:
    """The folders the stage reads: the MovieLens folder and the poster folder, where they are
    found (``[ingest] source`` or the fallback); before a download, the configured (absent) source."""
    from posterkg.ingest.bootstrap import resolve
    from posterkg.ingest.movielens import detect_layout

    cfg = _config(config)
    res = resolve(cfg)
    if res.source is None:
        return [Path(cfg.source or res.fallback or "")]
    return [detect_layout(res.source).root] + ([res.posters] if res.posters is not None else [])


# Reads files only: an ingest run by hand (other data into the same database) is not undone by
# `posterkg run`; the stages that read its tables (split ...) see the new content and re-run.
STAGE = Stage("ingest", sections=("ingest",), files=_files, run=_run)
