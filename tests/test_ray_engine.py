"""The ray engine (Ray Data actors on a local 2-CPU Ray cluster started once for this module) against
the local engine on real ML-1M posters: the same rows (pixels points equal, EfficientNet vectors
allclose), the same failure records (a poster the scan rejects and one that breaks after the scan,
so it fails on a worker), resume after an interrupted run, and a rerun that does nothing.

Needs ``ray[data]`` (in the ``test`` extra) and ../shared; without either it skips with a reason,
and with ``CI=true`` that skip is a failure (conftest.skip_or_fail)."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import ML1M, skip_or_fail
from posterkg.store import open_store
from tag_tables import tag_rows

POSTERS = ML1M / "posters"
N_POSTERS = 24
BATCH = 4
SCAN_REJECTED = 99999     # garbage bytes: the poster scan marks it, it never reaches a worker
BROKEN_LATER = 99998      # a whole JPEG at scan time, truncated afterwards: it fails on a worker


@pytest.fixture(scope="module")
def ray_session():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        skip_or_fail(f"ray[data] is not installed ({exc}): pip install -e '.[ray]'")
    if not (POSTERS / "1.jpg").is_file():
        skip_or_fail(f"real ML-1M posters not found at {POSTERS} (set POSTERKG_SHARED)")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
             configure_logging=True)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def posters(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ray-posters")
    ids = sorted(int(p.stem) for p in POSTERS.glob("*.jpg"))[:N_POSTERS]
    for m in ids:
        shutil.copy(POSTERS / f"{m}.jpg", folder / f"{m}.jpg")
    shutil.copy(POSTERS / f"{ids[0]}.jpg", folder / f"{BROKEN_LATER}.jpg")
    (folder / f"{SCAN_REJECTED}.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a whole jpeg")
    return folder, ids


def _db(posters, path):
    from posterkg.ingest.posters import scan_posters

    folder, _ = posters
    good = folder / f"{BROKEN_LATER}.jpg"
    data = (folder / f"{sorted(posters[1])[0]}.jpg").read_bytes()
    good.write_bytes(data)                       # whole at scan time ...
    with open_store(path) as store:
        scan_posters(store, folder, workers=1)
        assert store.scalar(f"SELECT status FROM posters WHERE movie_id = {BROKEN_LATER}") == "ok"
        assert store.scalar(f"SELECT status FROM posters WHERE movie_id = {SCAN_REJECTED}") != "ok"
    good.write_bytes(data[: len(data) // 3])     # ... truncated before tagging / embedding
    return path


def _ray(**kw):
    from posterkg.engines import make_engine

    return make_engine("ray", workers=2, **kw)


def _cli(*args):
    from posterkg.cli import cli

    r = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return r.output


class _Stop(Exception):
    pass


def _part_ids(path):
    import pyarrow.parquet as pq

    return pq.read_table(path, columns=["movie_id"]).column("movie_id").to_pylist()


def test_tag_with_ray_equals_local_resumes_and_records_failures(ray_session, posters, tmp_path):
    from posterkg.vlm.backends import get_backend
    from posterkg.vlm.knowledge import load_schema
    from posterkg.vlm.runner import BackendRef, tag_posters

    spec = load_schema().build_spec()
    local_db, ray_db = _db(posters, tmp_path / "local.duckdb"), _db(posters, tmp_path / "ray.duckdb")
    n = N_POSTERS + 2
    with open_store(local_db) as store:
        s = tag_posters(store, get_backend("pixels"), spec, batch_size=BATCH)
    assert (s["done"], s["failed"], s["engine"]) == (N_POSTERS, 2, "local")
    assert s["failures"] == {"corrupt_image": 2}

    # a ray run interrupted after its first committed batch: that batch (and the scan-rejected
    # poster, recorded up front) is stored whole, nothing else
    def stop(_):
        raise _Stop

    parts = ray_db.with_name(ray_db.stem + ".parts")         # the CLI's default folder
    with open_store(ray_db) as store, pytest.raises(_Stop):
        tag_posters(store, BackendRef("pixels"), spec, batch_size=BATCH, engine=_ray(parts=parts), on_batch=stop)
    with open_store(ray_db, read_only=True) as store:
        first = store.scalar("SELECT count(*) FROM tag_status")
        assert 1 < first <= 1 + BATCH
        assert store.scalar("SELECT count(DISTINCT movie_id) FROM raw_points") == \
            store.scalar("SELECT count(*) FROM tag_status WHERE status = 'done'")
        run = store.execute("SELECT params->>'engine', params->>'workers', done + failed FROM tag_runs").fetchone()
        assert run == ("ray", "2", first)

    # actors that were still running wrote their parts; the driver stopped before committing them
    (folder,) = [d for d in parts.iterdir() if d.is_dir()]
    left = sorted(folder.glob("part-*.parquet"))
    held = {int(m) for f in left for m in _part_ids(f)}

    # resumed through the CLI: what the parts hold is committed without recomputing it, the rest
    # is sent; only what the interrupted run had not committed
    out = _cli("tag", "--db", ray_db, "--backend", "pixels", "--batch-size", BATCH, "--engine", "ray",
               "--workers", 2)
    assert "ray" in out
    with open_store(ray_db, read_only=True) as store:
        last = store.execute("SELECT skipped, done + failed FROM tag_runs ORDER BY started_at DESC LIMIT 1").fetchone()
    assert last == (first, n - first)
    assert tag_rows(ray_db) == tag_rows(local_db)       # every value equal, one attempt each
    # every poster sent to an actor is in exactly one part (none computed twice), and the parts,
    # read by DuckDB as one table, hold the statuses the database has
    assert not list(folder.glob("part-*.parquet")) and not list(folder.glob(".*.tmp"))
    done_parts = sorted((folder / "done").glob("part-*.parquet"))
    assert {f.name for f in left} <= {f.name for f in done_parts}
    ids = [m for f in done_parts for m in _part_ids(f)]
    assert len(ids) == len(set(ids)) == n - 1             # all but the scan-rejected poster
    assert held <= set(ids)
    import duckdb

    got = duckdb.sql(f"SELECT movie_id, value IS NOT NULL, reason FROM read_parquet('{folder}/**/*.parquet') "
                     "ORDER BY movie_id").fetchall()
    st = {m: (status, reason) for m, _, _, _, status, reason, _ in tag_rows(ray_db)[1]}
    assert [(m, "done" if ok else "failed", r) for m, ok, r in got] == \
        [(m, *st[m]) for m in sorted(st) if m != SCAN_REJECTED]
    pts, st = tag_rows(ray_db)
    assert len(pts) > 3 * N_POSTERS
    failed = {(m, reason) for m, *_, status, reason, _ in st if status == "failed"}
    assert failed == {(SCAN_REJECTED, "corrupt_image"), (BROKEN_LATER, "corrupt_image")}

    # a rerun does nothing new (no dataset is even built: the work list is empty)
    with open_store(ray_db) as store:
        again = tag_posters(store, BackendRef("pixels"), spec, batch_size=BATCH, engine=_ray())
    assert (again["done"], again["failed"], again["skipped"]) == (0, 0, n)
    assert tag_rows(ray_db) == tag_rows(local_db)


def test_embed_posters_with_ray_equals_local(ray_session, posters, tmp_path):
    from posterkg.embed.image import load_image_encoder
    from posterkg.embed.posters import EncoderRef, embed_posters, load_features

    local_db, ray_db = _db(posters, tmp_path / "local.duckdb"), _db(posters, tmp_path / "ray.duckdb")
    enc = load_image_encoder("efficientnet-lite0", device="cpu")
    with open_store(local_db) as store:
        s = embed_posters(store, enc, batch_size=BATCH)
    assert (s["done"], s["failed"]) == (N_POSTERS, 2)
    with open_store(ray_db) as store:
        r = embed_posters(store, EncoderRef("efficientnet-lite0", device="cpu"), batch_size=BATCH, engine=_ray())
    assert (r["engine"], r["encoder"], r["dim"], r["done"], r["failed"]) == ("ray", "efficientnet-lite0", 1280,
                                                                          N_POSTERS, 2)
    assert r["failures"] == s["failures"] == {"corrupt_image": 2}
    q = "SELECT movie_id, encoder, status, reason, attempts FROM poster_embed_status ORDER BY ALL"
    with open_store(local_db, read_only=True) as a, open_store(ray_db, read_only=True) as b:
        assert a.execute(q).fetchall() == b.execute(q).fetchall()
        ids_a, xa = load_features(a, "poster", "efficientnet-lite0")
        ids_b, xb = load_features(b, "poster", "efficientnet-lite0")
    assert ids_a.tolist() == ids_b.tolist() == sorted(posters[1])
    np.testing.assert_allclose(xb, xa, rtol=1e-4, atol=1e-5)   # other processes, other thread counts
    assert np.abs(xa).sum(axis=1).min() > 1.0                  # real features, not zeros
    # the rerun (through the CLI, the engine from the config as `posterkg run` reads it) does
    # nothing new
    conf = tmp_path / "ray.toml"
    conf.write_text('[features]\nengine = "ray"\nworkers = 2\nparts = "none"\n')
    out = _cli("embed", "posters", "--config", conf, "--db", ray_db, "--encoder", "efficientnet-lite0",
               "--device", "cpu", "--batch-size", BATCH)
    assert "ray" in out
    with open_store(ray_db, read_only=True) as store:
        last = store.execute("SELECT skipped, done, failed FROM feature_runs ORDER BY started_at DESC LIMIT 1").fetchone()
    assert last == (N_POSTERS + 2, 0, 0)


def test_engine_errors_are_clean(tmp_path):
    from posterkg.engines import make_engine
    from posterkg.errors import ConfigError
    from posterkg.vlm.backends import get_backend
    from posterkg.vlm.knowledge import load_schema
    from posterkg.vlm.runner import tag_posters

    with pytest.raises(ConfigError, match="unknown engine"):
        make_engine("spark")
    with pytest.raises(ConfigError, match="need --engine ray"):
        make_engine("local", workers=2)
    from posterkg.cli import cli

    r = CliRunner().invoke(cli, ["tag", "--db", str(tmp_path / "x.duckdb"), "--workers", "2"])
    assert isinstance(r.exception, ConfigError) and "need --engine ray" in str(r.exception)
    try:
        import ray  # noqa: F401
    except ImportError:
        return
    with open_store(tmp_path / "y.duckdb") as store, pytest.raises(ConfigError, match="BackendRef"):
        tag_posters(store, get_backend("pixels"), load_schema().build_spec(), engine=make_engine("ray"))


def test_more_workers_than_the_cluster_has_is_a_clean_error(ray_session, tmp_path):
    from posterkg.engines import make_engine
    from posterkg.errors import ConfigError
    from posterkg.vlm.knowledge import load_schema
    from posterkg.vlm.runner import BackendRef, tag_posters

    with open_store(tmp_path / "z.duckdb") as store, pytest.raises(ConfigError, match="needs 5 CPUs"):
        tag_posters(store, BackendRef("pixels"), load_schema().build_spec(), engine=make_engine("ray", workers=5))


class _Codec:
    """A WorkRef's byte codec, enough for the parts (no worker is ever built)."""

    def open(self):
        raise AssertionError("recovery must not build a worker")

    def dump_value(self, value):
        return str(value).encode()

    def load_value(self, data):
        return data.decode()


def test_parts_left_by_a_dead_driver_are_committed_without_ray(tmp_path, monkeypatch):
    """Recovery of the parts an earlier driver never committed needs no Ray cluster: what they
    hold for pending movies is committed (once), what is already recorded is skipped, every part
    is retired to done/, and only the movies no part holds are sent."""
    pytest.importorskip("pyarrow")
    from posterkg.engines import make_engine
    from posterkg.engines.ray_engine import RayEngine, part_folder, write_part
    from posterkg.engines.work import Outcome

    codec, key = _Codec(), '["tag", "pixels", "pixels-v1", "abc"]'
    folder = part_folder(tmp_path / "parts", key)
    write_part(folder, [Outcome(1, "a"), Outcome(2, None, "corrupt_image", "bad")], codec)
    write_part(folder, [Outcome(3, "c"), Outcome(9, "z")], codec)          # 9: already recorded
    other = part_folder(tmp_path / "parts", '["tag", "hf", "m", "abc"]')
    write_part(other, [Outcome(4, "other key")], codec)
    (folder / ".part-x.parquet.tmp").write_bytes(b"half a file")           # a write cut short: ignored

    engine = make_engine("ray", parts=tmp_path / "parts")
    assert isinstance(engine, RayEngine)
    monkeypatch.setattr(RayEngine, "connect", lambda self: (_ for _ in ()).throw(AssertionError("no ray")))
    got = []
    engine.run(codec, [(1, "p1"), (2, "p2"), (3, "p3")], 2, got.append, key=key)
    flat = sorted((o.movie_id, o.value, o.reason) for b in got for o in b)
    assert flat == [(1, "a", None), (2, None, "corrupt_image"), (3, "c", None)]
    assert len(got) == 2                                                   # one commit per part
    assert not list(folder.glob("part-*.parquet")) and len(list((folder / "done").glob("*.parquet"))) == 2
    assert len(list(other.glob("part-*.parquet"))) == 1                    # another job's parts untouched
    # movies no part holds still go to the actors
    monkeypatch.setattr(RayEngine, "connect", lambda self: (_ for _ in ()).throw(_Stop()))
    with pytest.raises(_Stop):
        engine.run(codec, [(5, "p5")], 2, got.append, key=key)
    # a job without its key cannot use parts; "none" streams results through the object store
    with pytest.raises(ValueError, match="resume key"):
        engine.run(codec, [(5, "p5")], 2, got.append)
    from posterkg.engines import parts_folder

    assert parts_folder("", tmp_path / "x.duckdb") == tmp_path / "x.parts"
    assert parts_folder("none", tmp_path / "x.duckdb") is None


def test_engine_config_keys_are_checked(tmp_path):
    from posterkg.cli import cli
    from posterkg.errors import ConfigError

    conf = tmp_path / "bad.toml"
    conf.write_text('[tag]\nengine = "spark"\n')
    r = CliRunner().invoke(cli, ["tag", "--config", str(conf), "--db", str(tmp_path / "x.duckdb")])
    assert isinstance(r.exception, ConfigError) and "[tag] engine must be one of local, ray" in str(r.exception)
    conf.write_text('[features]\nworkers = 2\n')
    r = CliRunner().invoke(cli, ["embed", "posters", "--config", str(conf), "--db", str(tmp_path / "x.duckdb")])
    assert isinstance(r.exception, ConfigError) and "need --engine ray" in str(r.exception)
