import subprocess
import sys

import pytest

from posterkg.errors import DatabaseLockedError
from posterkg.store import open_store


def test_migrations_apply_once_and_record_version(tmp_path):
    db = tmp_path / "t.duckdb"
    steps = ["CREATE TABLE a (x INTEGER)", "ALTER TABLE a ADD COLUMN y INTEGER"]
    with open_store(db) as s:
        assert s.migrate("demo", steps[:1]) == 1
        assert s.migrate("demo", steps) == 2
        assert s.migrate("demo", steps) == 2   # idempotent
        cols = [r[0] for r in s.execute("DESCRIBE a").fetchall()]
    assert cols == ["x", "y"]
    with open_store(db) as s:
        assert s.version("demo") == 2


def test_failed_migration_rolls_back(tmp_path):
    with open_store(tmp_path / "t.duckdb") as s:
        with pytest.raises(Exception):
            s.migrate("demo", ["CREATE TABLE a (x INTEGER)", "THIS IS NOT SQL"])
        assert s.version("demo") == 0
        assert not s.table_exists("a")


def test_locked_database_gives_clear_error(tmp_path):
    db = tmp_path / "locked.duckdb"
    open_store(db).close()
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import duckdb,sys,time; c=duckdb.connect(sys.argv[1]); print('ok', flush=True); time.sleep(60)",
         str(db)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "ok"
        with pytest.raises(DatabaseLockedError, match="locked by another"):
            open_store(db)
    finally:
        holder.kill()
        holder.wait()


def test_clear_recreates_table_with_its_keys_and_indexes(tmp_path):
    with open_store(tmp_path / "t.duckdb") as s:
        s.execute("CREATE TABLE t (a INTEGER PRIMARY KEY, b VARCHAR)")
        s.execute("CREATE INDEX t_b ON t (b)")
        s.execute("INSERT INTO t SELECT i, 'x' || i FROM range(1000) r(i)")
        with s.transaction():
            s.clear("t")
            s.execute("INSERT INTO t SELECT i, 'y' FROM range(10) r(i)")
        assert s.count("t") == 10
        with pytest.raises(Exception, match="(?i)duplicate|constraint"):
            s.execute("INSERT INTO t VALUES (1, 'dup')")
        assert s.scalar("SELECT count(*) FROM duckdb_indexes() WHERE table_name = 't'") == 1
