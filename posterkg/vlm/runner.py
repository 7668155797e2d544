"""The tagging runner: posters in, validated knowledge points out; resumable and idempotent.

Tables (component ``tag``):

* ``raw_points(movie_id, type, value, confidence, backend, model, schema_hash, run_id)``: one
  row per knowledge point.
* ``tag_status(movie_id, backend, model, schema_hash, status, reason, error, run_id, attempts,
  updated_at)``: one row per poster and resume key; ``status`` is ``done`` or ``failed``.
* ``tag_runs(run_id, backend, model, schema_hash, mode, started_at, finished_at, done, skipped,
  failed, points, params)``: one row per invocation; its counters are updated in the same
  transaction as each batch, so they are right even after a kill.

Resume key: ``(movie_id, backend, model, schema_hash)`` where ``schema_hash`` is the
:class:`~posterkg.vlm.base.TagSpec`'s (the knowledge-schema hash; in closed mode combined with
the vocabulary). A rerun skips posters whose key is ``done``; posters that ``failed`` are skipped
too unless ``retry_failed``. Each batch's points and statuses are written in ONE transaction, so
a kill -9 loses at most the batch in flight and never leaves a poster with part of its points.

Only posters whose ``posters.status`` is ``ok`` are sent to the backend; the others are recorded
as failed with reason ``corrupt_image`` (the poster scan's status and error are kept in
``error``); ids asked for with ``movies=`` that have no row in ``posters`` are recorded with
reason ``no_poster``. Every answer is validated against the very JSON schema sent
(:func:`posterkg.vlm.knowledge.check_answer`) before anything is stored; failure reasons:
``corrupt_image``, ``no_poster``, ``truncated``, ``invalid_json``, ``schema_violation``,
``out_of_memory``, ``backend_error``.

The batch loop itself (plan, up-front failures, one commit per batch) is
:mod:`posterkg.engines.work`, shared with poster embedding; ``engine=`` runs the backend in this
process (``local``) or as Ray Data actors (``ray``, :mod:`posterkg.engines.ray_engine`, given a
:class:`BackendRef`): same tables, same guarantees.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import json
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd

from posterkg.engines.work import Outcome
from posterkg.errors import ConfigError
from posterkg.progress import bar
from posterkg.store import Store
from posterkg.vlm.base import Backend, PosterJob, TagResult, TagSpec
from posterkg.vlm.knowledge import InvalidOutput, check_answer, parse_answer

COMPONENT = "tag"
MIGRATIONS: list[str] = [
    """
    CREATE TABLE IF NOT EXISTS raw_points (
        movie_id INTEGER NOT NULL,
        type VARCHAR NOT NULL,
        value VARCHAR NOT NULL,
        confidence DOUBLE NOT NULL,
        backend VARCHAR NOT NULL,
        model VARCHAR NOT NULL,
        schema_hash VARCHAR NOT NULL,
        run_id VARCHAR NOT NULL
    );
    CREATE TABLE IF NOT EXISTS tag_status (
        movie_id INTEGER NOT NULL,
        backend VARCHAR NOT NULL,
        model VARCHAR NOT NULL,
        schema_hash VARCHAR NOT NULL,
        status VARCHAR NOT NULL,
        reason VARCHAR,
        error VARCHAR,
        run_id VARCHAR NOT NULL,
        attempts INTEGER NOT NULL,
        updated_at TIMESTAMP NOT NULL,
        PRIMARY KEY (movie_id, backend, model, schema_hash)
    );
    CREATE TABLE IF NOT EXISTS tag_runs (
        run_id VARCHAR PRIMARY KEY,
        backend VARCHAR NOT NULL,
        model VARCHAR NOT NULL,
        schema_hash VARCHAR NOT NULL,
        mode VARCHAR NOT NULL,
        started_at TIMESTAMP NOT NULL,
        finished_at TIMESTAMP,
        done INTEGER NOT NULL DEFAULT 0,
        skipped INTEGER NOT NULL DEFAULT 0,
        failed INTEGER NOT NULL DEFAULT 0,
        points INTEGER NOT NULL DEFAULT 0,
        params JSON
    );
    """,
]

RAW_POINT_COLUMNS = ["movie_id", "type", "value", "confidence", "backend", "model", "schema_hash", "run_id"]


def ensure_tables(store: Store) -> None:
    store.migrate(COMPONENT, MIGRATIONS)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def _reason_of(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".lower()
    if "out of memory" in text or "outofmemory" in text or isinstance(exc, MemoryError):
        return "out_of_memory"
    return getattr(exc, "reason", None) or "backend_error"


@dataclasses.dataclass(frozen=True)
class BackendRef:
    """A picklable recipe for a backend: ``get_backend(name, model, **options)`` where it runs (the
    ray engine builds it once per actor; the local engine in this process)."""

    name: str
    model: str | None = None
    options: dict[str, Any] = dataclasses.field(default_factory=dict)

    def create(self) -> Backend:
        from posterkg.vlm.backends import get_backend

        return get_backend(self.name, self.model, **dict(self.options))


class TagWorker:
    """Tagging as a :class:`~posterkg.engines.work.Worker`: a batch of posters -> validated points."""

    def __init__(self, backend: Backend, spec: TagSpec, *, owned: bool = False):
        self.backend, self.spec, self.owned = backend, spec, owned

    def load(self, batch: list[tuple[int, str]]) -> list[PosterJob]:
        return [PosterJob(int(m), Path(p)) for m, p in batch]   # backends decode images themselves

    def compute(self, jobs: list[PosterJob]) -> list[Outcome]:
        return [Outcome(*_outcome(r, self.spec)) for r in _run_batch(self.backend, jobs, self.spec)]

    def close(self) -> None:
        if self.owned:
            self.backend.close()


@dataclasses.dataclass(frozen=True)
class TagWork:
    """The :class:`~posterkg.engines.work.WorkRef` of tagging: backend recipe + spec; points travel
    between processes as JSON (floats round-trip exactly)."""

    backend: BackendRef
    spec: TagSpec

    def open(self) -> TagWorker:
        return TagWorker(self.backend.create(), self.spec, owned=True)

    def identity(self, worker: TagWorker) -> dict[str, Any]:
        return {"backend": worker.backend.name, "model": worker.backend.model}

    def dump_value(self, value: Any) -> bytes:
        return json.dumps(value).encode()

    def load_value(self, data: bytes) -> Any:
        return json.loads(data)


def tag_posters(store: Store, backend: Backend | BackendRef, spec: TagSpec, *, movies: Sequence[int] | None = None,
                limit: int | None = None, batch_size: int = 8, retry_failed: bool = False,
                params: dict[str, Any] | None = None, desc: str | None = None,
                engine=None, on_batch: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Tag posters with ``backend`` and store validated points; return a summary dict.

    ``movies`` restricts to these movie ids, ``limit`` to the first N selected posters (by movie
    id), so a rerun with the same arguments is a no-op once everything is done. The summary has
    run_id, backend, model, schema_hash, mode, engine, selected, done, skipped, failed, points,
    points_per_type, failures (reason -> count), seconds, posters_per_s.

    ``engine`` (:func:`posterkg.engines.make_engine`; default local) says where the backend runs;
    the ray engine needs ``backend`` as a :class:`BackendRef` (it builds the backend on its
    actors). ``on_batch(n_committed)`` is called after each committed batch.
    """
    from posterkg.engines import LocalEngine

    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    ensure_tables(store)
    engine = engine or LocalEngine()
    if isinstance(backend, BackendRef):
        ident, handle = engine.identity(TagWork(backend, spec))
    elif isinstance(engine, LocalEngine):
        ident, handle = {"backend": backend.name, "model": backend.model}, TagWorker(backend, spec)
    else:
        raise ConfigError(f"the {engine.name} engine builds the backend on its workers: pass a BackendRef")
    try:
        return _tag(store, engine, handle, (ident["backend"], ident["model"], spec.schema_hash), spec,
                    movies=movies, limit=limit, batch_size=batch_size, retry_failed=retry_failed,
                    params=params, desc=desc, on_batch=on_batch)
    finally:
        if isinstance(handle, TagWorker):
            handle.close()


def _tag(store: Store, engine, handle, key: tuple[str, str, str], spec: TagSpec, *, movies, limit, batch_size,
         retry_failed, params, desc, on_batch) -> dict[str, Any]:
    from posterkg.engines import plan_posters
    from posterkg.engines.work import committer

    plan = plan_posters(store, "SELECT movie_id, status, attempts FROM tag_status "
                        "WHERE backend = ? AND model = ? AND schema_hash = ?", key,
                        movies=movies, limit=limit, retry_failed=retry_failed,
                        missing_table="run `posterkg ingest` (with posters) first")
    run_id = f"{_now():%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
    run_params = {"batch_size": batch_size, "limit": limit, "retry_failed": retry_failed,
                  "movies": len(movies) if movies is not None else None, **engine.describe(), **(params or {})}
    store.execute(
        "INSERT INTO tag_runs (run_id, backend, model, schema_hash, mode, started_at, skipped, params) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [run_id, *key, spec.mode, _now(), plan.skipped, json.dumps(run_params, default=str)],
    )

    counts = {"done": 0, "failed": 0, "points": 0}
    per_type: collections.Counter[str] = collections.Counter()
    reasons: collections.Counter[str] = collections.Counter()
    t0 = time.perf_counter()

    def write(outcomes: list[Outcome]) -> None:
        """Store one batch: points + statuses + run counters, in one transaction."""
        point_rows = []
        status_rows = []
        now = _now()
        for o in outcomes:
            attempts = plan.attempt(o.movie_id)
            if o.ok:
                for p in o.value:
                    point_rows.append((o.movie_id, p["type"], p["value"], float(p["confidence"]),
                                       *key, run_id))
                status_rows.append((o.movie_id, *key, "done", None, None, run_id, attempts, now))
            else:
                status_rows.append((o.movie_id, *key, "failed", o.reason, (o.error or "")[:2000],
                                    run_id, attempts, now))
        done = sum(1 for o in outcomes if o.ok)
        failed = len(outcomes) - done
        ids = [o.movie_id for o in outcomes]
        with store.transaction() as con:
            con.execute(
                "DELETE FROM raw_points WHERE backend = ? AND model = ? AND schema_hash = ? "
                "AND movie_id IN (SELECT unnest(?::INTEGER[]))", [*key, ids])
            if point_rows:
                store.insert_df("raw_points", pd.DataFrame(point_rows, columns=RAW_POINT_COLUMNS))
            store.insert_df("tag_status", pd.DataFrame(status_rows, columns=[
                "movie_id", "backend", "model", "schema_hash", "status", "reason", "error",
                "run_id", "attempts", "updated_at"]), mode="replace")
            con.execute(
                "UPDATE tag_runs SET done = done + ?, failed = failed + ?, points = points + ? "
                "WHERE run_id = ?", [done, failed, len(point_rows), run_id])
        counts["done"] += done
        counts["failed"] += failed
        counts["points"] += len(point_rows)
        for o in outcomes:
            if o.ok:
                per_type.update(p["type"] for p in o.value)
            else:
                reasons[o.reason or "backend_error"] += 1

    commit = committer(write, counts, on_batch)

    # posters that cannot be sent: recorded at once, one transaction
    if plan.unsendable:
        write(plan.unsendable)

    progress = bar(total=len(plan.jobs), desc=desc or f"tag {key[0]}", unit="poster")
    try:
        engine.run(handle, plan.jobs, batch_size, commit, progress=progress, key=json.dumps(["tag", *key]))
    finally:
        progress.close()
        store.execute("UPDATE tag_runs SET finished_at = ? WHERE run_id = ?", [_now(), run_id])

    seconds = time.perf_counter() - t0
    n_jobs = len(plan.jobs)
    return {
        "run_id": run_id, "backend": key[0], "model": key[1],
        "schema_hash": spec.schema_hash, "mode": spec.mode, "engine": engine.name,
        "selected": plan.selected, "done": counts["done"], "skipped": plan.skipped,
        "failed": counts["failed"], "points": counts["points"],
        "points_per_type": dict(sorted(per_type.items())), "failures": dict(sorted(reasons.items())),
        "seconds": seconds, "posters_per_s": (n_jobs / seconds) if n_jobs and seconds > 0 else 0.0,
    }


def _run_batch(backend: Backend, batch: list[PosterJob], spec: TagSpec) -> list[TagResult]:
    """Call the backend; if the whole batch raises, retry poster by poster so one bad poster (or
    an out-of-memory on a big batch) costs only itself."""
    try:
        results = backend.tag_batch(batch, spec)
        if len(results) != len(batch):
            raise RuntimeError(f"backend returned {len(results)} results for {len(batch)} posters")
    except Exception as exc:  # noqa: BLE001 - recorded per poster below
        if len(batch) == 1:
            return [TagResult(batch[0].movie_id, error=f"{type(exc).__name__}: {exc}",
                              reason=_reason_of(exc))]
        return [r for job in batch for r in _run_batch(backend, [job], spec)]
    by_id = {r.movie_id: r for r in results}
    return [by_id.get(j.movie_id) or TagResult(j.movie_id, error="no result for this poster",
                                               reason="backend_error") for j in batch]


def _outcome(result: TagResult, spec: TagSpec):
    """(movie_id, points | None, reason, error) for one backend result, validated."""
    try:
        if result.error is not None and result.points is None and result.raw is None:
            return (result.movie_id, None, result.reason or "backend_error", result.error)
        if result.points is not None:
            obj: Any = {"points": result.points}
        else:
            obj = parse_answer(result.raw, result.finish_reason)
        points = check_answer(obj, spec.json_schema, closed=spec.mode == "closed")
        return (result.movie_id, points, None, None)
    except InvalidOutput as exc:
        raw = (result.raw or "")[:300]
        return (result.movie_id, None, exc.reason, f"{exc.message}; raw: {raw}" if raw else exc.message)


def summary_rows(summary: dict[str, Any]) -> list[tuple[str, Any]]:
    """The summary as (field, value) rows for :func:`posterkg.clikit.print_table`."""
    rows: list[tuple[str, Any]] = [
        ("backend", summary["backend"]), ("model", summary["model"]),
        ("schema_hash", summary["schema_hash"]), ("mode", summary["mode"]),
        ("run_id", summary["run_id"]), ("engine", summary.get("engine", "local")),
        ("done", summary["done"]), ("skipped", summary["skipped"]), ("failed", summary["failed"]),
        ("points", summary["points"]),
        ("posters/s", f"{summary['posters_per_s']:.2f}"),
    ]
    rows += [(f"points: {t}", n) for t, n in summary["points_per_type"].items()]
    rows += [(f"failed: {r}", n) for r, n in summary["failures"].items()]
    return rows


def status_counts(store: Store, backend: str, model: str, schema_hash: str) -> dict[str, int]:
    ensure_tables(store)
    return dict(store.execute(
        "SELECT status, count(*) FROM tag_status WHERE backend = ? AND model = ? AND schema_hash = ? "
        "GROUP BY status", [backend, model, schema_hash]).fetchall())
