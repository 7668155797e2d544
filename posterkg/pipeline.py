"""``posterkg run``: every stage end to end, skipping stages whose inputs did not change.

Each stage module exposes ``STAGE = Stage(...)``. A stage's fingerprint is the hash of its own
inputs (``inputs(store, config)``: source files, its config section, ...) chained with the
fingerprint of the stage before it, so a change upstream re-runs everything downstream. The last
fingerprint a stage finished with is kept in the ``stage_state`` table.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import time
from typing import Any, Callable

import click

from posterkg.config import Config
from posterkg.store import Store


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    inputs: Callable[[Store, Config], str]   # cheap fingerprint of this stage's own inputs
    run: Callable[[Store, Config], Any]      # does the work; may print a summary


# Pipeline order. A module that is not importable (an optional extra missing) is reported and the
# run stops there: later stages depend on it.
PIPELINE: list[tuple[str, str]] = [
    ("ingest", "posterkg.ingest.stage"),
    ("split", "posterkg.split"),
    ("tag", "posterkg.vlm.stage"),
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


def run_pipeline(store: Store, config: Config, *, only: list[str] | None = None,
                 force: bool = False, until: str | None = None) -> list[tuple[str, str, float]]:
    """Run the stages in order; return (stage, 'ran'|'skipped', seconds) rows."""
    report = []
    previous = ""
    for stage in load_stages(until=until):
        chained = previous

        def fingerprint() -> str:
            own = stage.inputs(store, config)
            return hashlib.sha256(f"{chained}|{stage.name}|{own}".encode()).hexdigest()[:16]

        fp = fingerprint()
        selected = only is None or stage.name in only
        if selected and (force or store.stage_fingerprint(stage.name) != fp):
            click.echo(f"== {stage.name}")
            t0 = time.perf_counter()
            stage.run(store, config)
            # Re-read the inputs: a stage may create one of its own inputs on its first run
            # (the schema stage writes the editable vocabulary file); record what it finished with.
            fp = fingerprint()
            store.mark_stage(stage.name, fp)
            report.append((stage.name, "ran", time.perf_counter() - t0))
        else:
            report.append((stage.name, "skipped" if selected else "not selected", 0.0))
        previous = fp
        if until and stage.name == until:
            break
    return report
