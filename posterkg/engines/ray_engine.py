"""The ``ray`` engine: the same workers as Ray Data ``map_batches`` actors over a Ray cluster.

The driver (this process) plans the work exactly as the local engine does (the pending
``(movie_id, path)`` rows of this run's resume key), builds a ``ray.data`` dataset with one block
per batch, and maps it with a callable class on an actor pool: each actor builds the worker (the
tagging backend or the image encoder) once, from the picklable :class:`~posterkg.engines.work.WorkRef`,
and turns each batch into the rows the local path would write (one per poster: the value as bytes
or a failure reason). Results stream back with ``iter_batches`` and the driver commits each batch
in ONE DuckDB transaction as it arrives, so a kill -9 of the driver loses at most the batches in
flight and a rerun resumes; only the driver writes the database.

Resources: one actor per GPU when the cluster has GPUs (``num_gpus=1`` each), otherwise one per
``cpus_per_worker`` CPUs. ``address`` ``None`` starts a local cluster (``ray.init(num_cpus=...)``,
no dashboard, quiet logs) and shuts it down afterwards; ``"auto"`` or ``"ray://host:10001"``
joins an existing cluster. A Ray session that is already initialised in this process is used as
it is and left running (tests start one per module).

Parquet parts (``parts``, the CLI's default ``<db stem>.parts/`` beside the database): each actor
writes its batch's results as one Parquet file into ``<parts>/<key hash>/`` (written to a hidden
temporary name, then renamed: a part is whole or absent) and hands back only the file's path; the
driver reads the part with DuckDB, commits it, and moves it to ``done/`` under the same folder. So
the results of a job are one table for DuckDB (``read_parquet('<parts>/<key hash>/**/*.parquet')``)
and a restarted job first commits the parts an earlier driver never committed (a kill -9 of the
driver loses no finished batch) and sends only what no part holds. Without ``parts`` the results
come back through Ray's object store instead (no shared filesystem needed).

Every node must have posterkg installed (same version) and see the poster paths the driver reads
from the ``posters`` table (a shared filesystem or the same folder layout), and the ``parts`` folder
when it is used.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import uuid
from pathlib import Path
from typing import Any, Callable, Sequence

from posterkg.engines.work import Job, Outcome, WorkRef, batches_of
from posterkg.errors import ConfigError, PosterkgError

#: the columns every worker batch comes back with
RESULT_COLUMNS = ("movie_id", "value", "reason", "error")


def import_ray():
    """``ray`` and ``ray.data``, or a clear error naming the extra to install."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise PosterkgError(f"the ray engine needs Ray Data ({exc}): pip install -e '.[ray]'") from exc
    return ray


def _quiet() -> None:
    for name in ("ray", "ray.data", "ray._private", "ray.train", "ray.tune"):
        logging.getLogger(name).setLevel(logging.ERROR)


def outcome_table(outcomes: Sequence[Outcome], ref: WorkRef):
    """One batch's outcomes as an Arrow table of :data:`RESULT_COLUMNS` (values as bytes)."""
    import pyarrow as pa

    return pa.table({
        "movie_id": pa.array([int(o.movie_id) for o in outcomes], pa.int64()),
        "value": pa.array([None if o.value is None else ref.dump_value(o.value) for o in outcomes], pa.binary()),
        "reason": pa.array([o.reason for o in outcomes], pa.string()),
        "error": pa.array([o.error for o in outcomes], pa.string()),
    })


def part_folder(parts: str | Path, key: str) -> Path:
    """The folder of one job's parts: ``<parts>/<sha1(key)[:16]>`` (its ``key.json`` names the key)."""
    return Path(parts) / hashlib.sha1(key.encode()).hexdigest()[:16]


def write_part(folder: str | Path, outcomes: Sequence[Outcome], ref: WorkRef) -> Path:
    """Write one batch's outcomes as a Parquet part in ``folder``: to a hidden temporary name, then
    renamed, so a reader sees a whole part or none."""
    import pyarrow.parquet as pq

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    first = min((int(o.movie_id) for o in outcomes), default=0)
    name = f"part-{first:010d}-{uuid.uuid4().hex[:12]}.parquet"
    tmp = folder / f".{name}.tmp"
    pq.write_table(outcome_table(outcomes, ref), tmp)
    os.replace(tmp, folder / name)
    return folder / name


def read_parts(paths: Sequence[str | Path], ref: WorkRef) -> dict[str, list[Outcome]]:
    """The outcomes of Parquet parts, read by DuckDB as one table: ``{path: [Outcome, ...]}``."""
    import duckdb

    if not paths:
        return {}
    con = duckdb.connect()
    try:
        rows = con.execute("SELECT filename, movie_id, value, reason, error FROM "
                           "read_parquet(?::VARCHAR[], filename = true) ORDER BY filename, movie_id",
                           [[str(p) for p in paths]]).fetchall()
    finally:
        con.close()
    out: dict[str, list[Outcome]] = {str(p): [] for p in paths}
    for f, m, v, r, e in rows:
        out[str(f)].append(Outcome(int(m), None if v is None else ref.load_value(bytes(v)), r, e))
    return out


def _retire(path: str | Path) -> None:
    """A committed part moves to ``done/`` beside it (kept: the job's results stay one table)."""
    path = Path(path)
    (path.parent / "done").mkdir(exist_ok=True)
    os.replace(path, path.parent / "done" / path.name)


class _BatchActor:
    """The ``map_batches`` callable class: builds the worker once per actor."""

    def __init__(self, ref: WorkRef, folder: str | None = None):
        _quiet()
        self.ref = ref
        self.folder = folder
        self.worker = ref.open()

    def __call__(self, batch):
        import pyarrow as pa

        jobs = [(int(m), str(p)) for m, p in zip(batch["movie_id"].to_pylist(), batch["path"].to_pylist())]
        outcomes = self.worker.compute(self.worker.load(jobs))
        if self.folder is None:
            return outcome_table(outcomes, self.ref)
        path = write_part(self.folder, outcomes, self.ref)
        return pa.table({"part": pa.array([str(path)], pa.string()),
                         "rows": pa.array([len(outcomes)], pa.int64())})


def _probe(ref: WorkRef) -> dict[str, Any]:
    _quiet()
    worker = ref.open()
    try:
        return ref.identity(worker)
    finally:
        worker.close()


@dataclasses.dataclass
class RayEngine:
    """Run workers as Ray Data actors; see the module docstring."""

    address: str | None = None       # None: start a local cluster; "auto" / "ray://host:port": join one
    workers: int = 0                 # actors; 0 = one per GPU, else one per cpus_per_worker CPUs
    num_cpus: int = 0                # local cluster only: CPUs it may use; 0 = all of this machine
    cpus_per_worker: float = 1.0
    gpus_per_worker: float | None = None   # None = 1 when the cluster has GPUs, else 0
    probe_on_driver: bool | None = None    # where the resume key is learnt; None = driver when no GPU per worker
    parts: str | Path | None = None        # Parquet parts folder (module doc); None = results via the object store
    ray_llm: bool = True                   # the vllm tagging backend through ray.data.llm (posterkg.engines.ray_llm)
    name: str = "ray"
    _started: bool = dataclasses.field(default=False, init=False, repr=False)
    _resolved: dict = dataclasses.field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.workers < 0 or self.num_cpus < 0:
            raise ConfigError("--workers and the ray engine's num_cpus must be >= 0")
        if self.cpus_per_worker <= 0:
            raise ConfigError("the ray engine's cpus_per_worker must be > 0")
        if self.gpus_per_worker is not None and self.gpus_per_worker < 0:
            raise ConfigError("the ray engine's gpus_per_worker must be >= 0")

    # -- cluster ------------------------------------------------------------------------------------

    def connect(self):
        """Join or start the cluster (idempotent); return ``ray``."""
        ray = import_ray()
        if ray.is_initialized():
            return ray
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                  "logging_level": logging.ERROR, "configure_logging": True}
        # the C++ core worker's error-level chatter (Ray Data's own actors have constructor
        # arguments in the object store) is not for our users; RAY_BACKEND_LOG_LEVEL overrides
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
        if self.address:
            kwargs["address"] = self.address
        else:
            want = math.ceil(self.workers * self.cpus_per_worker) if self.workers else (os.cpu_count() or 1)
            kwargs["num_cpus"] = int(self.num_cpus or want)
        try:
            ray.init(**kwargs)
        except ConnectionError as exc:
            raise PosterkgError(f"cannot join the Ray cluster at {self.address!r}: {exc}") from exc
        self._started = True
        _quiet()
        return ray

    def shutdown(self) -> None:
        if self._started:
            import ray

            ray.shutdown()
            self._started = False

    def resources(self) -> dict[str, Any]:
        """Actors, CPUs and GPUs per actor for this cluster (after :meth:`connect`)."""
        if self._resolved:
            return self._resolved
        import ray

        total = ray.cluster_resources()
        gpus = float(total.get("GPU", 0.0))
        per_gpu = self.gpus_per_worker if self.gpus_per_worker is not None else (1.0 if gpus >= 1 else 0.0)
        if self.workers:
            n = self.workers
            cpus = float(total.get("CPU", 0.0))
            if (per_gpu > 0 and n * per_gpu > gpus) or n * self.cpus_per_worker > cpus:
                raise ConfigError(f"--workers {n} needs {n * self.cpus_per_worker:g} CPUs"
                                  + (f" and {n * per_gpu:g} GPUs" if per_gpu else "")
                                  + f"; the Ray cluster has {cpus:g} CPUs and {gpus:g} GPUs")
        elif per_gpu > 0:
            n = max(1, int(gpus // per_gpu))
        else:
            n = max(1, int(float(total.get("CPU", 1.0)) // self.cpus_per_worker))
        self._resolved = {"workers": n, "cpus_per_worker": self.cpus_per_worker, "gpus_per_worker": per_gpu,
                          "cluster_cpus": float(total.get("CPU", 0.0)), "cluster_gpus": gpus}
        return self._resolved

    def describe(self) -> dict[str, Any]:
        out = {"engine": "ray", "address": self.address or "local", **self.resources()}
        if self.parts:
            out["parts"] = str(self.parts)
        return out

    # -- work ---------------------------------------------------------------------------------------

    def identity(self, ref: WorkRef) -> tuple[dict[str, Any], WorkRef]:
        """Build the worker once to learn the resume key (backend + model, encoder + dim): on the
        driver when the workers use no GPU (a CPU backend is cheap to build), else in a Ray task
        with the actors' resources, so a GPU model is never loaded on the driver. The handle for
        :meth:`run` is the recipe itself. The vllm backend through ``ray.data.llm`` needs neither:
        its key comes from the options (:meth:`llm_plan`)."""
        plan = self.llm_plan(ref)
        ray = self.connect()
        if plan is not None:
            return plan.identity(), ref
        res = self.resources()
        on_driver = self.probe_on_driver if self.probe_on_driver is not None else not res["gpus_per_worker"]
        if on_driver:
            return _probe(ref), ref
        task = ray.remote(num_cpus=res["cpus_per_worker"], num_gpus=res["gpus_per_worker"] or 0)(_probe)
        try:
            return ray.get(task.remote(ref)), ref
        except ray.exceptions.RayTaskError as exc:
            cause = exc.cause if getattr(exc, "cause", None) is not None else exc
            if isinstance(cause, PosterkgError):
                raise type(cause)(str(cause)) from None
            raise PosterkgError(f"the ray engine could not build the worker: {cause}") from exc

    def llm_plan(self, ref: WorkRef):
        """The :class:`~posterkg.engines.ray_llm.LLMTagPlan` when ``ref`` is vllm tagging and
        ``ray_llm`` is on (the work then runs through Ray Data's LLM processor), else ``None``."""
        if not self.ray_llm:
            return None
        from posterkg.engines.ray_llm import LLMTagPlan

        return LLMTagPlan.for_work(ref)

    def recover(self, ref: WorkRef, jobs: Sequence[Job], key: str,
                commit: Callable[[list[Outcome]], None], *, progress=None) -> list[Job]:
        """Commit the parts of ``key`` that an earlier driver left uncommitted (their outcomes for
        the movies of ``jobs``; the others are already recorded), retire them, and return the jobs
        no part holds. Needs no Ray cluster."""
        folder = part_folder(self.parts, key)
        pending = sorted(folder.glob("part-*.parquet")) if folder.is_dir() else []
        if not pending:
            return list(jobs)
        wanted = {int(m) for m, _ in jobs}
        for path, outcomes in read_parts(pending, ref).items():
            mine = [o for o in outcomes if o.movie_id in wanted]
            if mine:
                commit(mine)
                wanted.difference_update(o.movie_id for o in mine)
                if progress is not None:
                    progress.update(len(mine))
            _retire(path)
        return [j for j in jobs if int(j[0]) in wanted]

    def run(self, ref: WorkRef, jobs: Sequence[Job], batch_size: int,
            commit: Callable[[list[Outcome]], None], *, progress=None, key: str | None = None) -> None:
        """Map ``jobs`` over the actor pool; ``commit`` each batch as it streams back. With
        ``parts``, ``key`` (the job's resume key as text) names its parts folder, and the parts
        an earlier run left are committed first (:meth:`recover`)."""
        folder = None
        if self.parts and jobs:
            if not key:
                raise ValueError("the ray engine's parts need the job's resume key")
            folder = part_folder(self.parts, key)
            try:
                folder.mkdir(parents=True, exist_ok=True)
                meta = folder / "key.json"
                if not meta.exists():
                    meta.write_text(json.dumps({"key": key}) + "\n")
            except OSError as exc:
                raise PosterkgError(f"cannot write the ray engine's parts folder {folder}: {exc}") from exc
            jobs = self.recover(ref, jobs, key, commit, progress=progress)
        if not jobs:
            return
        ray = self.connect()
        import pyarrow as pa

        res = self.resources()
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        ctx.execution_options.preserve_order = False
        blocks = [pa.table({"movie_id": pa.array([m for m, _ in b], pa.int64()),
                            "path": pa.array([p for _, p in b], pa.string())})
                  for b in batches_of(jobs, batch_size)]
        ds = ray.data.from_arrow(blocks)
        gpus = res["gpus_per_worker"] or None
        plan = self.llm_plan(ref)
        if plan is not None:
            from posterkg.engines.ray_llm import map_dataset

            out = map_dataset(plan, ds, ref, batch_size=batch_size, resources=res, workers=self.workers,
                              folder=None if folder is None else str(folder), batches=len(blocks))
        else:
            out = ds.map_batches(
                _BatchActor, fn_constructor_kwargs={"ref": ref, "folder": None if folder is None else str(folder)},
                batch_size=batch_size, batch_format="pyarrow",
                compute=ray.data.ActorPoolStrategy(size=min(res["workers"], len(blocks))),
                num_cpus=res["cpus_per_worker"], num_gpus=gpus)
        stream = iter(out.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=1))
        while True:
            try:
                tbl = next(stream)
            except StopIteration:
                return
            except ray.exceptions.RayError as exc:   # a worker could not start or died: batches committed so far stay
                raise PosterkgError(f"the ray engine stopped: {str(exc).strip().splitlines()[-1][:500]} "
                                    "(committed batches are kept; rerun to resume)") from exc
            if folder is not None:
                for path, outcomes in read_parts(tbl.column("part").to_pylist(), ref).items():
                    if outcomes:
                        commit(outcomes)
                    _retire(path)
                    if progress is not None:
                        progress.update(len(outcomes))
                continue
            outcomes = [Outcome(int(m), None if v is None else ref.load_value(v), r, e)
                        for m, v, r, e in zip(*(tbl.column(c).to_pylist() for c in RESULT_COLUMNS))]
            if outcomes:
                commit(outcomes)
                if progress is not None:
                    progress.update(len(outcomes))
