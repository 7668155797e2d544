"""``posterkg run``: every stage end to end, skipping stages whose inputs did not change.

Each stage module exposes ``STAGE = Stage(...)`` and DECLARES what it depends on:

* ``sections``: the config sections it reads (``[split]``, ``[gnn]`` ...);
* ``reads``: the database tables it reads (``ratings``, ``split`` ...);
* ``files``: a callable ``(store, config) -> paths`` of the files and folders it reads (the
  MovieLens folder, the poster folder, the vocabulary TOML ...).

The pipeline computes every fingerprint here, in one place (:func:`fingerprint_parts`): the
config sections as given, the content hash of each table read (:meth:`Store.table_hash`: row count
plus the sum of DuckDB's ``hash`` of every row, one scan), the sha256 of each file (a folder: the
name, size and mtime of every file directly in it), chained with the fingerprint of the stage
before it. So any change upstream, including a command run by hand (``posterkg ingest`` of other
data, ``posterkg split --scheme random``), re-runs the stages that read what it changed and
everything after them. A content hash rather than a per-table version counter: it needs no
cooperation from the code that writes (raw SQL anywhere stays covered), at about 30 ms per million
rows. The last fingerprint a stage finished with is kept in ``stage_state``.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import click

from posterkg.config import Config
from posterkg.store import Store

Files = Callable[[Store, Config], Iterable["str | Path"]]


def _no_files(store: Store, config: Config) -> list[Path]:
    return []


class Stage:
    """A pipeline stage and what it depends on (see the module docstring).

    ``Stage(name, sections=(...), reads=(...), files=callable, run=callable)``. An optional
    ``inputs(store, config) -> str`` (second positional argument) adds a part a declaration
    cannot say, e.g. a dependency that holds only under some setting (the graph stage reads
    ``user_interests`` only with ``[graph] user_interests``); it is hashed with the rest.
    """

    def __init__(self, name: str, inputs: Callable[[Store, Config], str] | None = None,
                 run: Callable[[Store, Config], Any] | None = None, *, sections: Iterable[str] = (),
                 reads: Iterable[str] = (), files: Files | None = None):
        if run is None:
            raise TypeError(f"stage {name}: run= is required")
        self.name = name
        self.inputs = inputs
        self.run = run
        self.sections = tuple(sections)
        self.reads = tuple(reads)
        self.files = files or _no_files

    def __repr__(self) -> str:
        return f"Stage({self.name!r}, sections={self.sections}, reads={self.reads})"


# Pipeline order. A module that is not importable (an optional extra missing) is reported and the
# run stops there: later stages depend on it.
PIPELINE: list[tuple[str, str]] = [
    ("ingest", "posterkg.ingest.stage"),
    ("split", "posterkg.split"),
    ("tag", "posterkg.vlm.stage"),
    ("features", "posterkg.embed.stage"),
    ("schema", "posterkg.schema.stage"),
    ("graph", "posterkg.graphs.stage"),
    ("train", "posterkg.gnn.stage"),
]


def load_stages(names: list[str] | None = None, until: str | None = None) -> list[Stage]:
    stages = []
    for name, module in PIPELINE:
        if names and name not in names:
            continue
        stages.append(importlib.import_module(module).STAGE)
        if until and name == until:   # later stages are not even imported
            break
    return stages


def path_hash(path: str | Path) -> str:
    """sha256 of a file's bytes; for a folder, of (name, size, mtime) of every file directly in
    it (stat only); ``missing`` when it does not exist."""
    p = Path(path)
    h = hashlib.sha256()
    if p.is_file():
        with open(p, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
        return h.hexdigest()[:16]
    if p.is_dir():
        with os.scandir(p) as it:
            entries = sorted((e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in it if e.is_file())
        for name, size, mtime in entries:
            h.update(f"{name}\0{size}\0{mtime}\n".encode())
        return h.hexdigest()[:16]
    return "missing"


def fingerprint_parts(stage: Stage, store: Store, config: Config) -> dict[str, Any]:
    """What a stage's fingerprint is made of: its config sections, table hashes and file hashes."""
    return {
        "sections": {s: config.data.get(s, {}) for s in stage.sections},
        "tables": {t: store.table_hash(t) for t in stage.reads},
        "files": {str(p): path_hash(p) for p in stage.files(store, config)},
        **({"inputs": stage.inputs(store, config)} if stage.inputs is not None else {}),
    }


def fingerprint(stage: Stage, store: Store, config: Config, previous: str = "") -> str:
    blob = json.dumps(fingerprint_parts(stage, store, config), sort_keys=True, default=str)
    return hashlib.sha256(f"{previous}|{stage.name}|{blob}".encode()).hexdigest()[:16]


def run_pipeline(store: Store, config: Config, *, only: list[str] | None = None,
                 force: bool = False, until: str | None = None) -> list[tuple[str, str, float]]:
    """Run the stages in order; return (stage, 'ran'|'skipped', seconds) rows."""
    report = []
    previous = ""
    for stage in load_stages(until=until):
        fp = fingerprint(stage, store, config, previous)
        selected = only is None or stage.name in only
        if selected and (force or store.stage_fingerprint(stage.name) != fp):
            click.echo(f"== {stage.name}")
            t0 = time.perf_counter()
            stage.run(store, config)
            # Re-read the inputs: a stage may create one of its own inputs on its first run
            # (the schema stage writes the editable vocabulary file); record what it finished with.
            fp = fingerprint(stage, store, config, previous)
            store.mark_stage(stage.name, fp)
            report.append((stage.name, "ran", time.perf_counter() - t0))
        else:
            report.append((stage.name, "skipped" if selected else "not selected", 0.0))
        previous = fp
        if until and stage.name == until:
            break
    return report
