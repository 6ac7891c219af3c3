"""The PostgreSQL test helpers of conftest.py: ``postgres_db`` gives a fresh,
empty database, and ``restart_postgres`` takes the throwaway server down and
brings it back on the same port (needs ``FJORD_TEST_POSTGRES_URL`` and
``FJORD_PG_DIR``, as exported by ``scripts/test-postgres.sh start``)."""

from __future__ import annotations

import subprocess

from conftest import PG_BIN, psql, restart_postgres, start_postgres, stop_postgres


def test_postgres_db_is_fresh(postgres_db):
    assert psql(postgres_db, "select count(*) from pg_tables where schemaname = 'public'") == "0\n"
    psql(postgres_db, "create table t (x int); insert into t values (1)")
    assert psql(postgres_db, "select current_database()").strip() == postgres_db.rsplit("/", 1)[1]


def test_restart_postgres(postgres_db):
    psql(postgres_db, "create table t (x int); insert into t values (42)")
    restart_postgres(down_seconds=0.5)
    assert psql(postgres_db, "select x from t") == "42\n", "data lost across the restart"

    stop_postgres()
    try:
        down = subprocess.run([str(PG_BIN / "psql"), postgres_db, "-Atc", "select 1"],
                              capture_output=True, text=True, timeout=30)
        assert down.returncode != 0, "psql connected to a stopped server"
    finally:
        start_postgres()
    assert psql(postgres_db, "select 1") == "1\n"
