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

Every node must have posterkg installed (same version) and see the poster paths the driver reads
from the ``posters`` table (a shared filesystem or the same folder layout).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
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


class _BatchActor:
    """The ``map_batches`` callable class: builds the worker once per actor."""

    def __init__(self, ref: WorkRef):
        _quiet()
        self.ref = ref
        self.worker = ref.open()

    def __call__(self, batch):
        import pyarrow as pa

        jobs = [(int(m), str(p)) for m, p in zip(batch["movie_id"].to_pylist(), batch["path"].to_pylist())]
        outcomes = self.worker.compute(self.worker.load(jobs))
        return pa.table({
            "movie_id": pa.array([int(o.movie_id) for o in outcomes], pa.int64()),
            "value": pa.array([None if o.value is None else self.ref.dump_value(o.value) for o in outcomes],
                              pa.binary()),
            "reason": pa.array([o.reason for o in outcomes], pa.string()),
            "error": pa.array([o.error for o in outcomes], pa.string()),
        })


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
        return {"engine": "ray", "address": self.address or "local", **self.resources()}

    # -- work ---------------------------------------------------------------------------------------

    def identity(self, ref: WorkRef) -> tuple[dict[str, Any], WorkRef]:
        """Build the worker once to learn the resume key (backend + model, encoder + dim): on the
        driver when the workers use no GPU (a CPU backend is cheap to build), else in a Ray task
        with the actors' resources, so a GPU model is never loaded on the driver. The handle for
        :meth:`run` is the recipe itself."""
        ray = self.connect()
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

    def run(self, ref: WorkRef, jobs: Sequence[Job], batch_size: int,
            commit: Callable[[list[Outcome]], None], *, progress=None) -> None:
        """Map ``jobs`` over the actor pool; ``commit`` each batch as it streams back."""
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
        out = ds.map_batches(
            _BatchActor, fn_constructor_kwargs={"ref": ref}, batch_size=batch_size, batch_format="pyarrow",
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
            outcomes = [Outcome(int(m), None if v is None else ref.load_value(v), r, e)
                        for m, v, r, e in zip(*(tbl.column(c).to_pylist() for c in RESULT_COLUMNS))]
            if outcomes:
                commit(outcomes)
                if progress is not None:
                    progress.update(len(outcomes))
