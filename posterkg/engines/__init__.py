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

from pathlib import Path
from typing import Any

from posterkg.engines.work import Job, LocalEngine, Outcome, Plan, Worker, WorkRef, plan_posters
from posterkg.errors import ConfigError

ENGINES = ("local", "ray")

__all__ = ["ENGINES", "Job", "LocalEngine", "Outcome", "Plan", "Worker", "WorkRef", "engine_for", "make_engine",
           "parts_folder", "plan_posters"]


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


def parts_folder(setting: str | None, db: str | Path | None) -> Path | None:
    """The ray engine's Parquet parts folder: ``setting`` (a path), ``"none"`` (results through
    Ray's object store), or ``""``: ``<db stem>.parts`` beside the database (none for an
    in-memory one)."""
    if setting == "none":
        return None
    if setting:
        return Path(setting)
    if db is None or str(db) == ":memory:":
        return None
    db = Path(db)
    return db.with_name(db.stem + ".parts")


def engine_for(cfg: Any, section: str, db: str | Path | None):
    """The engine a stage section asks for: ``engine``, ``ray_address``, ``workers`` and ``parts``
    of ``[tag]`` or ``[features]`` (``cfg`` is that section's dataclass), and ``[tag] ray_llm``."""
    name = (cfg.engine or "local").lower()
    if name not in ENGINES:
        raise ConfigError(f"[{section}] engine must be one of {', '.join(ENGINES)}, got {cfg.engine!r}")
    if cfg.workers < 0:
        raise ConfigError(f"[{section}] workers must be >= 0")
    if name == "local":
        return make_engine("local", address=cfg.ray_address or None, workers=cfg.workers)
    return make_engine("ray", address=cfg.ray_address or None, workers=cfg.workers,
                       parts=parts_folder(cfg.parts, db), ray_llm=bool(getattr(cfg, "ray_llm", True)))
