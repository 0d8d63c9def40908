"""A migration never waits for ever: its DDL waits for its locks a bounded time and names who
holds it off, and its sessions are not cancelled by a statement_timeout the server sets."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg2
import pytest
from migration_tasks import copy_all, migration_task
from psycopg2 import sql

from airflow_pool_provider.migration import stages
from airflow_pool_provider.migration.locks import LockWaitExceeded
from airflow_pool_provider.migration.request import MigrationRequest


def _one(conn, query, params=None):
    with conn.cursor() as cur:
        cur.execute(query, params)
        row = cur.fetchone()
    return row[0] if row else None


def _migration(src_dsn: str, dst_dsn: str, **request):
    """What one task of the migration of table ``t`` works with."""
    return migration_task(src_dsn, dst_dsn, MigrationRequest(tables=("t",), **request))


def _primary_key(dst) -> str | None:
    return _one(dst, "SELECT conname FROM pg_constraint WHERE conrelid = to_regclass('t') AND contype = 'p'")


@pytest.fixture
def table_t(migration_databases):
    src, dst = migration_databases
    with src.cursor() as cur:
        cur.execute(
            "CREATE TABLE t (id int PRIMARY KEY, v text);"
            "INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 1000) g"
        )
    return src, dst


@contextmanager
def _reader_idle_in_transaction(dst_dsn: str, ends_after: float) -> Iterator[int]:
    """A session that read ``t`` and stays idle in its transaction until ``ends_after`` seconds
    pass (or the block ends); yields its pid."""
    reader = psycopg2.connect(dst_dsn, application_name="idle reader")
    with reader.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        pid = cur.fetchone()[0]
        cur.execute("SELECT count(*) FROM t")
    timer = threading.Timer(ends_after, reader.rollback)
    timer.start()
    try:
        yield pid
    finally:
        timer.cancel()
        reader.close()


def _held_off_by(caplog, pid: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if f"held off by pid {pid} (idle in transaction" in r.getMessage()]


def test_ddl_waits_for_a_reader_idle_in_transaction_names_it_and_goes_on_once_it_ends(table_t, caplog):
    src, dst = table_t
    waits = {"ddl_lock_timeout": 0.3, "ddl_lock_wait": 60.0}
    with _migration(src.dsn, dst.dsn, run_id="run-1", **waits) as m:
        try:
            m.snapshots.ensure()
            stages.pre_data(m)
            with _reader_idle_in_transaction(dst.dsn, ends_after=2.0) as pid:
                copy_all(m)  # the primary key waits for the reader
            assert _primary_key(dst) == "t_pkey"
            waited = _held_off_by(caplog, pid)
            assert waited and "ALTER TABLE" in waited[0] and "ADD CONSTRAINT" in waited[0]
            assert "its query: SELECT count(*) FROM t" in waited[0]
            stages.post_data(m)
        finally:
            m.snapshots.release()

    caplog.clear()
    with _migration(src.dsn, dst.dsn, run_id="run-2", mode="replace", **waits) as again:
        try:
            with _reader_idle_in_transaction(dst.dsn, ends_after=2.0) as pid:
                stages.pre_data(again)  # its DROP TABLE waits for the reader
        finally:
            again.snapshots.release()
    assert "DROP TABLE" in _held_off_by(caplog, pid)[0]
    assert _one(dst, "SELECT count(*) FROM t") == 0  # made anew


def test_ddl_gives_up_after_its_wait_naming_the_session_and_the_stage_resumes_once_it_ends(table_t):
    src, dst = table_t
    with _migration(src.dsn, dst.dsn, run_id="run-1", ddl_lock_timeout=0.2, ddl_lock_wait=1.5) as m:
        try:
            m.snapshots.ensure()
            stages.pre_data(m)
            # Ends after 20 s even if nothing gives up, so that waiting for ever fails the test, not hangs it.
            with _reader_idle_in_transaction(dst.dsn, ends_after=20.0) as pid:
                started = time.monotonic()
                with pytest.raises(LockWaitExceeded) as failed:
                    copy_all(m)
                assert time.monotonic() - started < 10
            message = str(failed.value)
            assert 'ALTER TABLE "public"."t" ADD CONSTRAINT "t_pkey" PRIMARY KEY USING INDEX "t_pkey"' in message
            assert f"pid {pid} (idle in transaction" in message and "SELECT count(*) FROM t" in message
            assert f"SELECT pg_terminate_backend({pid})" in message
            assert _primary_key(dst) is None

            stages.post_data(m)  # the reader is gone: the stage builds what is missing
        finally:
            m.snapshots.release()
    assert _primary_key(dst) == "t_pkey"


@pytest.fixture
def slow_role(pg_server, migration_databases):
    """A role whose statements are cancelled after 200 ms (ALTER ROLE ... SET statement_timeout)."""
    role = f"slow_{uuid.uuid4().hex[:10]}"
    name = sql.Identifier(role)
    pg_server.execute(sql.SQL("CREATE ROLE {} LOGIN SUPERUSER").format(name))
    pg_server.execute(sql.SQL("ALTER ROLE {} SET statement_timeout = '200ms'").format(name))
    yield role
    _, dst = migration_databases
    with dst.cursor() as cur:
        cur.execute(sql.SQL("REASSIGN OWNED BY {} TO CURRENT_USER").format(name))
    pg_server.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (role,))
    pg_server.execute(sql.SQL("DROP ROLE {}").format(name))


def test_a_statement_timeout_the_role_sets_does_not_cancel_the_migration_and_the_log_says_so(
    pg_server, migration_databases, slow_role, caplog
):
    src, dst = migration_databases
    with src.cursor() as cur:  # on the target, the chunk's COPY (the CHECK) and the index build take 300 ms at least
        cur.execute(
            "CREATE FUNCTION slow(id int) RETURNS int IMMUTABLE LANGUAGE plpgsql AS "
            "$$ BEGIN IF id = 1 THEN PERFORM pg_sleep(0.3); END IF; RETURN id; END $$;"
            "CREATE TABLE t (id int PRIMARY KEY, v text CHECK (slow(id) = id));"
            "INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 10000) g;"
            "CREATE INDEX t_slow ON t (slow(id))"
        )
    src_dsn = pg_server.dsn(src.info.dbname, user=slow_role)
    dst_dsn = pg_server.dsn(dst.info.dbname, user=slow_role)
    with _migration(src_dsn, dst_dsn, run_id="run-1") as m:
        try:
            m.snapshots.ensure()
            stages.pre_data(m)
            copy_all(m)
            stages.post_data(m)
            report = stages.verify_and_report(m)
        finally:
            m.snapshots.release()
    assert report.verified
    assert _one(dst, "SELECT count(*) FROM t") == 10000
    told = [r.getMessage() for r in caplog.records if "statement_timeout = 200ms" in r.getMessage()]
    assert len(told) == 2 and {"'source'", "'target'"} == {m.split()[1].rstrip(":") for m in told}


def test_the_ddl_waits_are_settings_and_waits_that_cannot_work_are_a_mistake(monkeypatch):
    from airflow_pool_provider import settings
    from airflow_pool_provider.errors import MigrationMistake
    from airflow_pool_provider.migration.locks import LockWaits
    from airflow_pool_provider.operators.migration import MigrationPlanOperator

    monkeypatch.setenv("AIRFLOW__POOLED_POSTGRES__DDL_LOCK_TIMEOUT", "0.5")
    monkeypatch.setenv("AIRFLOW__POOLED_POSTGRES__DDL_LOCK_WAIT", "42")
    settings.forget()
    try:
        operator = MigrationPlanOperator(task_id="plan", source_conn_id="a", target_conn_id="b")
        assert operator.request().lock_waits == LockWaits(0.5, 42.0)
    finally:
        settings.forget()
    with pytest.raises(MigrationMistake, match="ddl_lock_wait must be a positive number of seconds, got 0"):
        MigrationRequest(ddl_lock_wait=0)
