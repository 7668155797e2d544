"""The resumable poster batch loop that tagging and poster embedding share.

Both jobs have the same shape: select posters, skip those whose resume key is already ``done``
(and ``failed`` unless ``retry_failed``), record the posters that cannot be sent (``corrupt_image``
from the poster scan, ``no_poster`` for ids with no poster row) at once, then run the rest in
batches, committing each batch's results in ONE transaction (rows + statuses + run counters), so a
kill -9 loses at most the batches in flight and a rerun resumes. What differs lives in the caller:

* a :class:`Worker` turns a batch of ``(movie_id, path)`` jobs into one :class:`Outcome` per
  poster (``load`` is the CPU-side decode, ``compute`` the model); it never touches the database;
* a ``commit(outcomes)`` callback writes one batch (tables of the caller's component).

An engine decides where the workers run: :class:`LocalEngine` (this process; ``load`` of the next
batch in a helper thread while ``compute`` runs the current one) or
:class:`posterkg.engines.ray_engine.RayEngine` (Ray Data actors, results streamed back and
committed by this process). A :class:`WorkRef` is the picklable recipe an engine uses to build
the worker where it runs (the backend or encoder is loaded once per worker).
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
from typing import Any, Callable, Protocol, Sequence

from posterkg.errors import InputError
from posterkg.store import Store

Job = tuple[int, str]            # (movie_id, poster path)


@dataclasses.dataclass
class Outcome:
    """One poster's result: ``value`` (the points, the vector ...) or ``None`` with a reason."""

    movie_id: int
    value: Any = None
    reason: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.value is not None


class Worker(Protocol):
    def load(self, batch: list[Job]) -> Any:
        """CPU-side work for a batch (decode, preprocess); thread-safe, no model state."""
        ...

    def compute(self, loaded: Any) -> list[Outcome]:
        """One outcome per poster of the batch; never raises for one bad poster."""
        ...

    def close(self) -> None:
        ...


class WorkRef(Protocol):
    """A picklable recipe for a worker, plus the byte codec of its outcome values (for engines that
    move outcomes between processes)."""

    def open(self) -> Worker:
        ...

    def identity(self, worker: Worker) -> dict[str, Any]:
        """What the driver needs before it can plan (the resume key: backend/model, encoder/dim)."""
        ...

    def dump_value(self, value: Any) -> bytes:
        ...

    def load_value(self, data: bytes) -> Any:
        ...


@dataclasses.dataclass
class Plan:
    """The work list of one run: what to send, what to record as failed at once, what is skipped."""

    selected: int
    skipped: int
    jobs: list[Job]
    unsendable: list[Outcome]
    attempts: dict[int, int]            # movie id -> attempts recorded before this run

    def attempt(self, movie_id: int) -> int:
        """The attempt number this run writes for ``movie_id``."""
        return self.attempts.get(int(movie_id), 0) + 1


def select_posters(store: Store, movies: Sequence[int] | None, limit: int | None, *,
                   missing_table: str):
    """``(rows, missing)``: (movie_id, path, status, error) of the selected posters by movie id, and
    the ids asked for with ``movies`` that have no poster row (trimmed to ``limit``)."""
    if not store.table_exists("posters"):
        raise InputError(f"no posters table: {missing_table}")
    sql = "SELECT movie_id, path, status, error FROM posters"
    params: list[Any] = []
    if movies is not None:
        sql += " WHERE movie_id IN (SELECT unnest(?::INTEGER[]))"
        params.append([int(m) for m in movies])
    sql += " ORDER BY movie_id"
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    rows = store.execute(sql, params).fetchall()
    missing: list[int] = []
    if movies is not None:
        missing = sorted({int(m) for m in movies} - {int(r[0]) for r in rows})
        if limit is not None:
            missing = missing[: max(0, int(limit) - len(rows))]
    return rows, missing


def plan_posters(store: Store, previous_sql: str, previous_params: Sequence[Any], *,
                 movies: Sequence[int] | None, limit: int | None, retry_failed: bool,
                 missing_table: str) -> Plan:
    """The pending work: ``previous_sql`` selects ``(movie_id, status, attempts)`` of this resume
    key; posters ``done`` are skipped, ``failed`` ones too unless ``retry_failed``."""
    rows, missing = select_posters(store, movies, limit, missing_table=missing_table)
    previous = {int(m): (s, int(a)) for m, s, a in store.execute(previous_sql, list(previous_params)).fetchall()}

    def wanted(m: int) -> bool:
        prev = previous.get(m)
        return not prev or (prev[0] == "failed" and retry_failed)

    todo = [(int(m), p, s, e) for m, p, s, e in rows if wanted(int(m))]
    todo_missing = [m for m in missing if wanted(m)]
    unsendable = [Outcome(m, None, "corrupt_image", f"poster status {s}: {e or ''}".strip())
                  for m, _, s, e in todo if s != "ok"]
    unsendable += [Outcome(m, None, "no_poster", "no row in the posters table") for m in todo_missing]
    return Plan(selected=len(rows) + len(missing),
                skipped=(len(rows) - len(todo)) + (len(missing) - len(todo_missing)),
                jobs=[(m, str(p)) for m, p, s, _ in todo if s == "ok"],
                unsendable=unsendable,
                attempts={m: a for m, (_, a) in previous.items()})


def committer(write: Callable[[list[Outcome]], None], counts: dict[str, int],
              on_batch: Callable[[int], None] | None) -> Callable[[list[Outcome]], None]:
    """The engines' ``commit`` callback: ``write`` one batch (its own transaction), then tell
    ``on_batch`` how many posters this run has committed (``counts["done"] + counts["failed"]``)."""
    def commit(outcomes: list[Outcome]) -> None:
        write(outcomes)
        if on_batch is not None:
            on_batch(counts["done"] + counts["failed"])
    return commit


def batches_of(jobs: Sequence[Job], batch_size: int) -> list[list[Job]]:
    return [list(jobs[i:i + batch_size]) for i in range(0, len(jobs), batch_size)]


@dataclasses.dataclass
class LocalEngine:
    """Run the worker in this process: one batch at a time, the next batch's ``load`` in a helper
    thread while ``compute`` runs the current one."""

    name: str = "local"

    def describe(self) -> dict[str, Any]:
        return {"engine": "local"}

    def identity(self, ref: WorkRef) -> tuple[dict[str, Any], Worker]:
        worker = ref.open()
        return ref.identity(worker), worker

    def run(self, worker: Worker, jobs: Sequence[Job], batch_size: int,
            commit: Callable[[list[Outcome]], None], *, progress=None, key: str | None = None) -> None:
        """``commit`` each batch's outcomes in job order; ``progress.update(n)`` after each.
        (``key``, the job's resume key, is for engines that keep results outside the database.)"""
        batches = batches_of(jobs, batch_size)
        pool = cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="posterkg-load")
        try:
            future = pool.submit(worker.load, batches[0]) if batches else None
            for i in range(len(batches)):
                loaded = future.result()
                future = pool.submit(worker.load, batches[i + 1]) if i + 1 < len(batches) else None
                commit(worker.compute(loaded))
                if progress is not None:
                    progress.update(len(batches[i]))
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
