"""Dense movie features: poster embeddings and text embeddings in the database, and their loader.

Tables (component ``features``):

* ``poster_embeddings(movie_id, encoder, vector FLOAT[], created_at)``: one row per poster and
  image encoder (:mod:`posterkg.embed.image`; ``encoder`` is the encoder's stored name, e.g.
  ``efficientnet-lite0``, ``pixels-v1``, ``clip:/models/clip-vit-b32``);
* ``poster_embed_status(movie_id, encoder, status, reason, error, attempts, run_id, updated_at)``:
  ``done`` or ``failed`` per (movie, encoder); failure reasons ``corrupt_image`` (the file does not
  decode, or the poster scan marked it), ``no_poster`` (asked for by id, no poster row),
  ``encoder_error``;
* ``text_embeddings(movie_id, encoder, vector FLOAT[], created_at)``: ``"title (year): genres"``
  of every movie through the vocabulary stage's text encoder (:class:`posterkg.embed.Encoder`;
  ``encoder`` is its cache name, e.g. ``sentence-transformers/all-MiniLM-L6-v2#mean``);
* ``feature_runs(run_id, kind, encoder, dim, started_at, finished_at, done, skipped, failed,
  params)``: one row per invocation, counters updated in each batch's transaction.

:func:`embed_posters` is resumable and idempotent like tagging: (movie, encoder) pairs already
``done`` (and ``failed`` ones unless ``retry_failed``) are skipped; each batch's vectors, statuses
and run counters are written in ONE transaction, so a kill -9 loses at most the batch in flight.
Decoding and preprocessing of the next batch run in a helper thread while the model encodes the
current one. The loop is :mod:`posterkg.engines.work`, shared with tagging; ``engine=ray`` (given
an :class:`EncoderRef`) runs the encoder as Ray Data actors instead, same tables and guarantees.

:func:`load_features` is what stages and models use: ``(movie_ids, matrix)`` sorted by movie id.

``[features]`` (:class:`FeaturesConfig`) and :func:`run_embed` are ready for a pipeline stage
(after ``ingest``, before the models): ``Stage("features", sections=("features", "embed"),
reads=("movies", "posters"), run=run_embed)``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pyarrow as pa

from posterkg.engines.work import Outcome
from posterkg.errors import ConfigError, InputError
from posterkg.progress import bar
from posterkg.store import Store

COMPONENT = "features"
MIGRATIONS: list[str] = [
    """
    CREATE TABLE IF NOT EXISTS poster_embeddings (
        movie_id INTEGER NOT NULL,
        encoder VARCHAR NOT NULL,
        vector FLOAT[] NOT NULL,
        created_at TIMESTAMP NOT NULL,
        PRIMARY KEY (movie_id, encoder)
    );
    CREATE TABLE IF NOT EXISTS poster_embed_status (
        movie_id INTEGER NOT NULL,
        encoder VARCHAR NOT NULL,
        status VARCHAR NOT NULL,
        reason VARCHAR,
        error VARCHAR,
        attempts INTEGER NOT NULL,
        run_id VARCHAR NOT NULL,
        updated_at TIMESTAMP NOT NULL,
        PRIMARY KEY (movie_id, encoder)
    );
    CREATE TABLE IF NOT EXISTS text_embeddings (
        movie_id INTEGER NOT NULL,
        encoder VARCHAR NOT NULL,
        vector FLOAT[] NOT NULL,
        created_at TIMESTAMP NOT NULL,
        PRIMARY KEY (movie_id, encoder)
    );
    CREATE TABLE IF NOT EXISTS feature_runs (
        run_id VARCHAR PRIMARY KEY,
        kind VARCHAR NOT NULL,
        encoder VARCHAR NOT NULL,
        dim INTEGER,
        started_at TIMESTAMP NOT NULL,
        finished_at TIMESTAMP,
        done INTEGER NOT NULL DEFAULT 0,
        skipped INTEGER NOT NULL DEFAULT 0,
        failed INTEGER NOT NULL DEFAULT 0,
        params JSON
    );
    """,
]

KINDS = ("poster", "text")
_TABLES = {"poster": "poster_embeddings", "text": "text_embeddings"}


def ensure_tables(store: Store) -> None:
    store.migrate(COMPONENT, MIGRATIONS)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def _run_id() -> str:
    return f"{_now():%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"


def _vector_table(ids: Sequence[int], encoder: str, mat: np.ndarray, now: dt.datetime) -> pa.Table:
    mat = np.ascontiguousarray(mat, dtype=np.float32)
    n, d = mat.shape
    offsets = pa.array(np.arange(0, (n + 1) * d, d, dtype=np.int32))
    vectors = pa.ListArray.from_arrays(offsets, pa.array(mat.reshape(-1)))
    return pa.table({
        "movie_id": pa.array(np.asarray(ids, dtype=np.int32)),
        "encoder": pa.array([encoder] * n, pa.string()),
        "vector": vectors,
        "created_at": pa.array([now] * n, pa.timestamp("us")),
    })


def _insert_arrow(store: Store, table: str, tbl: pa.Table) -> None:
    if tbl.num_rows == 0:
        return
    cols = ", ".join(tbl.column_names)
    store.register("_posterkg_vectors", tbl)
    try:
        store.con.execute(f"INSERT OR REPLACE INTO {table} ({cols}) SELECT {cols} FROM _posterkg_vectors")
    finally:
        store.con.unregister("_posterkg_vectors")


# -- posters ---------------------------------------------------------------------------------------

def _load_batch(encoder, jobs: list[tuple[int, str]]):
    """Decode + prepare one batch (the helper thread's part). Returns (ok ids, images, prepared,
    failures, error)."""
    from posterkg.vlm.images import CorruptImage, load_image

    ok_ids, images, failures = [], [], []
    for movie_id, path in jobs:
        try:
            images.append(load_image(path))
            ok_ids.append(movie_id)
        except CorruptImage as exc:
            failures.append((movie_id, "corrupt_image", str(exc)))
    prepared = None
    error = None
    if images:
        try:
            prepared = encoder.prepare(images)
        except Exception as exc:  # noqa: BLE001 - recorded per poster by the caller
            error = exc
    return ok_ids, images, prepared, failures, error


@dataclasses.dataclass(frozen=True)
class EncoderRef:
    """A picklable recipe for an image encoder: ``load_image_encoder(name, device=..., **options)``
    where it runs (the ray engine builds it once per actor)."""

    name: str
    device: str = "auto"
    options: dict[str, Any] = dataclasses.field(default_factory=dict)

    def create(self):
        from posterkg.embed.image import load_image_encoder

        return load_image_encoder(self.name, device=self.device, **dict(self.options))


class EmbedWorker:
    """Poster embedding as a :class:`~posterkg.engines.work.Worker`: decode + prepare in ``load``,
    the forward pass in ``compute``; a batch that fails is retried poster by poster, so one bad
    poster costs only itself; non-finite vectors are failures."""

    def __init__(self, encoder, *, owned: bool = False):
        self.encoder, self.owned = encoder, owned

    def load(self, batch: list[tuple[int, str]]):
        return _load_batch(self.encoder, batch)

    def compute(self, loaded) -> list[Outcome]:
        encoder = self.encoder
        ok_ids, images, prepared, failures, error = loaded
        mat = None
        if ok_ids:
            try:
                if error is not None:
                    raise error
                mat = np.asarray(encoder.encode_prepared(prepared), dtype=np.float32)
                if mat.shape != (len(ok_ids), int(encoder.dim)):
                    raise RuntimeError(f"encoder returned shape {mat.shape} for {len(ok_ids)} posters")
            except Exception:  # noqa: BLE001 - retry one by one: one bad poster costs only itself
                mat, ok_ids, more = _one_by_one(encoder, ok_ids, images)
                failures = failures + more
            if not np.isfinite(mat).all():
                bad = ~np.isfinite(mat).all(axis=1)
                failures = failures + [(m, "encoder_error", "non-finite vector")
                                       for m, b in zip(ok_ids, bad) if b]
                ok_ids = [m for m, b in zip(ok_ids, bad) if not b]
                mat = mat[~bad]
        out = [Outcome(int(m), mat[i]) for i, m in enumerate(ok_ids)]
        return out + [Outcome(int(m), None, r, e) for m, r, e in failures]

    def close(self) -> None:
        if self.owned:
            self.encoder.close()


@dataclasses.dataclass(frozen=True)
class EmbedWork:
    """The :class:`~posterkg.engines.work.WorkRef` of poster embedding; vectors travel as float32 bytes."""

    encoder: EncoderRef

    def open(self) -> EmbedWorker:
        return EmbedWorker(self.encoder.create(), owned=True)

    def identity(self, worker: EmbedWorker) -> dict[str, Any]:
        enc = worker.encoder
        return {"encoder": str(enc.name), "dim": int(enc.dim), "device": getattr(enc, "device", "cpu")}

    def dump_value(self, value: Any) -> bytes:
        return np.asarray(value, dtype=np.float32).tobytes()

    def load_value(self, data: bytes) -> Any:
        return np.frombuffer(data, dtype=np.float32)


def embed_posters(store: Store, encoder, *, batch_size: int = 16, limit: int | None = None,
                  movies: Sequence[int] | None = None, retry_failed: bool = False,
                  params: dict[str, Any] | None = None, desc: str | None = None,
                  on_batch: Callable[[int], None] | None = None, engine=None) -> dict[str, Any]:
    """Embed posters with ``encoder`` (an :class:`~posterkg.embed.image.base.ImageEncoder`, or an
    :class:`EncoderRef`) into ``poster_embeddings``; return a summary dict (run_id, encoder, dim,
    engine, selected, done, skipped, failed, failures {reason: n}, seconds, posters_per_s).

    ``limit`` = the first N selected posters by movie id (a rerun with the same limit is a
    no-op); ``movies`` restricts to these ids. ``on_batch(n_committed)`` is called after each
    committed batch (tests, progress hooks). ``engine`` (:func:`posterkg.engines.make_engine`;
    default local) says where the encoder runs; the ray engine needs an :class:`EncoderRef`.
    """
    from posterkg.engines import LocalEngine

    if batch_size < 1:
        raise ConfigError("batch_size must be >= 1")
    ensure_tables(store)
    engine = engine or LocalEngine()
    if isinstance(encoder, EncoderRef):
        ident, handle = engine.identity(EmbedWork(encoder))
    elif isinstance(engine, LocalEngine):
        ident = {"encoder": str(encoder.name), "dim": int(encoder.dim), "device": getattr(encoder, "device", "cpu")}
        handle = EmbedWorker(encoder)
    else:
        raise ConfigError(f"the {engine.name} engine builds the encoder on its workers: pass an EncoderRef")
    try:
        return _embed(store, engine, handle, ident, batch_size=batch_size, limit=limit, movies=movies,
                      retry_failed=retry_failed, params=params, desc=desc, on_batch=on_batch)
    finally:
        if isinstance(handle, EmbedWorker):
            handle.close()


def _embed(store: Store, engine, handle, ident: dict[str, Any], *, batch_size, limit, movies, retry_failed,
           params, desc, on_batch) -> dict[str, Any]:
    from posterkg.engines import plan_posters
    from posterkg.engines.work import committer

    name, dim = ident["encoder"], int(ident["dim"])
    plan = plan_posters(store, "SELECT movie_id, status, attempts FROM poster_embed_status WHERE encoder = ?",
                        [name], movies=movies, limit=limit or None, retry_failed=retry_failed,
                        missing_table="run `posterkg ingest movielens DIR --posters DIR` first")
    run_id = _run_id()
    run_params = {"batch_size": batch_size, "limit": limit, "retry_failed": retry_failed,
                  "device": ident["device"], **engine.describe(), **(params or {})}
    store.execute("INSERT INTO feature_runs (run_id, kind, encoder, dim, started_at, skipped, params) "
                  "VALUES (?, 'poster', ?, ?, ?, ?, ?)",
                  [run_id, name, dim, _now(), plan.skipped, json.dumps(run_params, default=str)])
    counts = {"done": 0, "failed": 0}
    reasons: dict[str, int] = {}

    def write(outcomes: list[Outcome]) -> None:
        now = _now()
        ok = [o for o in outcomes if o.ok]
        failures = [o for o in outcomes if not o.ok]
        ids = [o.movie_id for o in ok]
        status = [(o.movie_id, name, "done", None, None, plan.attempt(o.movie_id), run_id, now) for o in ok]
        status += [(o.movie_id, name, "failed", o.reason, (o.error or "")[:2000], plan.attempt(o.movie_id),
                    run_id, now) for o in failures]
        with store.transaction() as con:
            if ok:
                mat = np.stack([np.asarray(o.value, dtype=np.float32) for o in ok])
                _insert_arrow(store, "poster_embeddings", _vector_table(ids, name, mat, now))
            if failures:   # a poster that failed now has no vector of this encoder
                con.execute("DELETE FROM poster_embeddings WHERE encoder = ? AND movie_id IN "
                            "(SELECT unnest(?::INTEGER[]))", [name, [o.movie_id for o in failures]])
            if status:
                con.executemany("INSERT OR REPLACE INTO poster_embed_status VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                                status)
            con.execute("UPDATE feature_runs SET done = done + ?, failed = failed + ? WHERE run_id = ?",
                        [len(ok), len(failures), run_id])
        counts["done"] += len(ok)
        counts["failed"] += len(failures)
        for o in failures:
            reasons[o.reason] = reasons.get(o.reason, 0) + 1

    commit = committer(write, counts, on_batch)

    if plan.unsendable:
        write(plan.unsendable)

    t0 = time.perf_counter()
    progress = bar(total=len(plan.jobs), desc=desc or f"embed {name}", unit="poster")
    try:
        engine.run(handle, plan.jobs, batch_size, commit, progress=progress, key=json.dumps(["embed", name]))
    finally:
        progress.close()
        store.execute("UPDATE feature_runs SET finished_at = ? WHERE run_id = ?", [_now(), run_id])
    seconds = time.perf_counter() - t0
    n_jobs = len(plan.jobs)
    return {"run_id": run_id, "kind": "poster", "encoder": name, "dim": dim, "engine": engine.name,
            "device": ident["device"], "selected": plan.selected,
            "done": counts["done"], "skipped": plan.skipped, "failed": counts["failed"],
            "failures": dict(sorted(reasons.items())), "seconds": seconds,
            "posters_per_s": n_jobs / seconds if n_jobs and seconds > 0 else 0.0}


def _one_by_one(encoder, ids: list[int], images: list):
    vecs, ok, failures = [], [], []
    for m, img in zip(ids, images):
        try:
            v = np.asarray(encoder.encode([img]), dtype=np.float32)
            if v.shape != (1, int(encoder.dim)):
                raise RuntimeError(f"encoder returned shape {v.shape} for one poster")
            vecs.append(v[0])
            ok.append(m)
        except Exception as exc:  # noqa: BLE001
            failures.append((m, "encoder_error", f"{type(exc).__name__}: {exc}"))
    mat = np.stack(vecs) if vecs else np.zeros((0, int(encoder.dim)), dtype=np.float32)
    return mat, ok, failures


# -- texts -----------------------------------------------------------------------------------------

def movie_text(title: str, year: int | None, genres: Sequence[str] | None) -> str:
    """``"Toy Story (1995): Animation, Children's, Comedy"``; the year or genres left out when unknown."""
    text = str(title or "").strip()
    if year is not None and not (isinstance(year, float) and np.isnan(year)):
        text += f" ({int(year)})"
    g = [str(x) for x in (genres or []) if x and str(x) != "(no genres listed)"]
    return f"{text}: {', '.join(g)}" if g else text


def movie_texts(store: Store, limit: int | None = None) -> list[tuple[int, str]]:
    if not store.table_exists("movies"):
        raise InputError("no movies table: run `posterkg ingest movielens` first")
    sql = "SELECT movie_id, title, year, genres FROM movies ORDER BY movie_id"
    if limit:
        sql += f" LIMIT {int(limit)}"
    return [(int(m), movie_text(t, y, g)) for m, t, y, g in store.execute(sql).fetchall()]


def embed_texts(store: Store, encoder, *, limit: int | None = None, batch_size: int = 512,
                force: bool = False) -> dict[str, Any]:
    """Embed every movie's text (:func:`movie_text`) with ``encoder`` (a
    :class:`posterkg.embed.Encoder`) into ``text_embeddings``. Movies already embedded with this
    encoder are skipped unless ``force``; one transaction per ``batch_size`` movies."""
    ensure_tables(store)
    name = encoder.name
    texts = movie_texts(store, limit)
    done = {int(m) for (m,) in store.execute(
        "SELECT movie_id FROM text_embeddings WHERE encoder = ?", [name]).fetchall()}
    todo = texts if force else [(m, t) for m, t in texts if m not in done]
    run_id = _run_id()
    store.execute("INSERT INTO feature_runs (run_id, kind, encoder, started_at, skipped, params) "
                  "VALUES (?, 'text', ?, ?, ?, ?)",
                  [run_id, name, _now(), len(texts) - len(todo),
                   json.dumps({"limit": limit, "batch_size": batch_size, "force": force})])
    t0 = time.perf_counter()
    dim = None
    progress = bar(total=len(todo), desc=f"embed texts {name}", unit="movie")
    try:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            mat = np.asarray(encoder.encode([t for _, t in chunk]), dtype=np.float32)
            dim = int(mat.shape[1])
            with store.transaction() as con:
                _insert_arrow(store, "text_embeddings", _vector_table([m for m, _ in chunk], name, mat, _now()))
                con.execute("UPDATE feature_runs SET done = done + ?, dim = ? WHERE run_id = ?",
                            [len(chunk), dim, run_id])
            progress.update(len(chunk))
    finally:
        progress.close()
        store.execute("UPDATE feature_runs SET finished_at = ? WHERE run_id = ?", [_now(), run_id])
    seconds = time.perf_counter() - t0
    return {"run_id": run_id, "kind": "text", "encoder": name, "dim": dim, "selected": len(texts),
            "done": len(todo), "skipped": len(texts) - len(todo), "failed": 0, "failures": {},
            "seconds": seconds, "texts_per_s": len(todo) / seconds if todo and seconds > 0 else 0.0}


# -- loading ---------------------------------------------------------------------------------------

def resolve_feature_encoder(kind: str, encoder: str) -> str:
    """The stored encoder name for a user-given one (aliases: ``pixels``, ``minilm`` ...)."""
    if kind == "poster":
        from posterkg.embed.image import encoder_name

        return encoder_name(encoder)
    if kind == "text":
        if "#" in encoder:
            return encoder
        from posterkg.embed.encoder import resolve_model

        spec = resolve_model(encoder)
        return f"{spec.name}#{spec.pooling}"
    raise ConfigError(f"feature kind must be one of {', '.join(KINDS)}, not {kind!r}")


def feature_encoders(store: Store) -> list[tuple[str, str, int, int]]:
    """(kind, encoder, movies, dim) of every feature set in the database."""
    out = []
    for kind, table in _TABLES.items():
        if store.table_exists(table):
            out += [(kind, e, int(n), int(d)) for e, n, d in store.execute(
                f"SELECT encoder, count(*), max(len(vector)) FROM {table} GROUP BY 1 ORDER BY 1").fetchall()]
    return out


def load_features(store: Store, kind: str = "poster", encoder: str = "efficientnet-lite0", *,
                  movie_ids: Sequence[int] | None = None, normalize: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``(movie_ids int64 [n], matrix float32 [n, d])`` of one feature set, sorted by movie id.

    ``kind`` ``poster`` reads ``poster_embeddings``, ``text`` reads ``text_embeddings``;
    ``encoder`` is a stored name or an alias (``pixels``, ``minilm``, ``clip:/path``).
    ``movie_ids`` restricts to those movies (only those that have a vector come back: check the
    returned ids, movies without a poster have none). ``normalize`` L2-normalises the rows.
    """
    if kind not in _TABLES:
        raise ConfigError(f"feature kind must be one of {', '.join(KINDS)}, not {kind!r}")
    table = _TABLES[kind]
    name = resolve_feature_encoder(kind, encoder)
    if not store.table_exists(table):
        raise InputError(f"no {table} table: run `posterkg embed {kind}s` first")
    sql = f"SELECT movie_id, vector FROM {table} WHERE encoder = ?"
    params: list[Any] = [name]
    if movie_ids is not None:
        sql += " AND movie_id IN (SELECT unnest(?::INTEGER[]))"
        params.append([int(m) for m in movie_ids])
    tbl = store.con.sql(sql + " ORDER BY movie_id", params=params).to_arrow_table()
    if tbl.num_rows == 0:
        have = ", ".join(e for k, e, _, _ in feature_encoders(store) if k == kind) or "none"
        raise InputError(f"no {kind} embeddings for encoder {name!r} (have: {have}); "
                         f"run `posterkg embed {kind}s` first")
    ids = tbl.column("movie_id").to_numpy().astype(np.int64)
    vec = tbl.column("vector").combine_chunks()
    lengths = np.unique(np.diff(vec.offsets.to_numpy()))
    if len(lengths) != 1:
        raise InputError(f"{table} for {name!r} has vectors of different lengths {lengths.tolist()}")
    # a writable copy (Arrow's buffers are read-only; torch.from_numpy warns on those)
    mat = np.array(vec.flatten().to_numpy(), dtype=np.float32).reshape(len(ids), int(lengths[0]))
    if normalize:
        mat /= np.maximum(np.linalg.norm(mat, axis=1, keepdims=True), 1e-12)
    return np.array(ids), mat


# -- config and stage ------------------------------------------------------------------------------

@dataclasses.dataclass
class FeaturesConfig:
    """``[features]`` section."""

    poster_encoder: str = "efficientnet-lite0"   # "" = no poster embeddings
    text: bool = True                            # also embed "title (year): genres"
    text_model: str = ""                         # "" = [embed] model (the vocabulary stage's encoder)
    batch_size: int = 16                         # posters per forward pass and per transaction
    device: str = "auto"                         # auto (GPU when present) | cpu | cuda | cuda:N
    limit: int = 0                               # only the first N posters by movie id; 0 = all
    retry_failed: bool = False
    engine: str = "local"                        # local | ray (posterkg.engines; docs/ray.md)
    ray_address: str = ""                        # ray: cluster to join ("" = start a local one)
    workers: int = 0                             # ray: actors (0 = one per GPU, else one per CPU)
    parts: str = ""                              # ray: Parquet parts folder ("" = <db stem>.parts; "none")

    def check(self) -> None:
        if self.batch_size < 1:
            raise ConfigError("[features] batch_size must be >= 1")
        if self.limit < 0:
            raise ConfigError("[features] limit must be >= 0")


def _text_encoder(config, cfg: FeaturesConfig):
    from posterkg.embed.encoder import EmbedConfig, load_encoder

    ecfg = config.section("embed", EmbedConfig) if config is not None else EmbedConfig()
    if cfg.text_model:
        ecfg = dataclasses.replace(ecfg, model=cfg.text_model, pooling="")
    return load_encoder(ecfg)


def run_poster_embed(store: Store, cfg: FeaturesConfig, *, movies: Sequence[int] | None = None,
                     name: str | None = None) -> dict[str, Any]:
    """Poster embeddings with ``name`` (default ``cfg.poster_encoder``) on the engine of
    ``[features] engine``: the local engine loads the encoder here, the ray engine on its actors
    (from an :class:`EncoderRef`). Returns :func:`embed_posters`' summary."""
    from posterkg.embed.image import load_image_encoder
    from posterkg.engines import engine_for

    cfg.check()
    engine = engine_for(cfg, "features", store.path)
    name = name or cfg.poster_encoder or "efficientnet-lite0"
    local = engine.name == "local"
    enc = load_image_encoder(name, device=cfg.device) if local else EncoderRef(name, device=cfg.device)
    try:
        return embed_posters(store, enc, batch_size=cfg.batch_size, limit=cfg.limit or None, movies=movies,
                             retry_failed=cfg.retry_failed, engine=engine)
    finally:
        if local:
            enc.close()
        else:
            engine.shutdown()


def run_embed(store: Store, config, *, echo: bool = True) -> dict[str, Any]:
    """The ``features`` stage: poster embeddings with ``[features] poster_encoder``, then (with
    ``text = true``) text embeddings with the ``[embed]`` model. ``config`` is a
    :class:`posterkg.config.Config`. Returns {"poster": summary | None, "text": summary | None}."""
    from posterkg.embed.image import load_image_encoder

    cfg = config.section("features", FeaturesConfig)
    cfg.check()
    out: dict[str, Any] = {"poster": None, "text": None}
    if cfg.poster_encoder:
        out["poster"] = run_poster_embed(store, cfg)
    if cfg.text:
        out["text"] = embed_texts(store, _text_encoder(config, cfg), limit=None)
    if echo:
        import click

        for s in (out["poster"], out["text"]):
            if s:
                click.echo(describe(s))
    return out


def describe(summary: dict[str, Any]) -> str:
    rate = summary.get("posters_per_s", summary.get("texts_per_s", 0.0))
    unit = "posters/s" if summary["kind"] == "poster" else "texts/s"
    fails = ", ".join(f"{n} {r}" for r, n in summary["failures"].items())
    return (f"embed {summary['kind']}s ({summary['encoder']}, dim {summary['dim']}): {summary['done']:,} done, "
            f"{summary['skipped']:,} skipped, {summary['failed']:,} failed{' (' + fails + ')' if fails else ''}; "
            f"{summary['seconds']:.1f} s, {rate:.1f} {unit}")


def poster_paths(store: Store, movie_ids: Sequence[int]) -> dict[int, Path]:
    """movie id -> poster path (status ok) for ``movie_ids``; for scoring new movies."""
    rows = store.execute("SELECT movie_id, path FROM posters WHERE status = 'ok' AND movie_id IN "
                         "(SELECT unnest(?::INTEGER[]))", [[int(m) for m in movie_ids]]).fetchall()
    return {int(m): Path(p) for m, p in rows}
