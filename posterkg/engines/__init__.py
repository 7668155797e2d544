"""Engines: where the poster batch work of ``posterkg tag`` and ``posterkg embed posters`` runs.

* ``local`` (:class:`~posterkg.engines.work.LocalEngine`): this process, one batch at a time (the
  default; what the pipeline stages use);
* ``ray`` (:class:`~posterkg.engines.ray_engine.RayEngine`): Ray Data ``map_batches`` actors over a
  local or remote Ray cluster, one actor per GPU (or per CPU on a CPU cluster), results committed by
  the driver batch by batch.

Both run the same workers (:mod:`posterkg.engines.work`: the tagging backend or the image encoder,
built once per worker) over the same work list and write the same tables with the same guarantees
(one transaction per batch, resume by key, failures recorded per poster). See ``docs/scale.md``.
"""

from __future__ import annotations

from typing import Any

from posterkg.engines.work import Job, LocalEngine, Outcome, Plan, Worker, WorkRef, plan_posters
from posterkg.errors import ConfigError

ENGINES = ("local", "ray")

__all__ = ["ENGINES", "Job", "LocalEngine", "Outcome", "Plan", "Worker", "WorkRef", "make_engine", "plan_posters"]


def make_engine(name: str | None = "local", *, address: str | None = None, workers: int = 0,
                num_cpus: int = 0, **options: Any):
    """``local`` or ``ray`` (with the cluster ``address``, ``workers`` actors, ``num_cpus`` for a
    local cluster; other options go to :class:`~posterkg.engines.ray_engine.RayEngine`)."""
    name = (name or "local").lower()
    if name == "local":
        if address or workers or options:
            raise ConfigError("--ray-address and --workers need --engine ray")
        return LocalEngine()
    if name == "ray":
        from posterkg.engines.ray_engine import RayEngine

        return RayEngine(address=address or None, workers=workers, num_cpus=num_cpus, **options)
    raise ConfigError(f"unknown engine {name!r}; choose one of {', '.join(ENGINES)}")
