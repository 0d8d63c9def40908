"""A migration never waits for ever: its sessions are not cancelled by a statement_timeout the server sets."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg2
import pytest
from psycopg2 import sql

from airflow_pool_provider.migration import stages
from airflow_pool_provider.migration.request import MigrationRequest
from airflow_pool_provider.pool import ConnectionPool


def _one(conn, query, params=None):
    with conn.cursor() as cur:
        cur.execute(query, params)
        row = cur.fetchone()
    return row[0] if row else None


@contextmanager
def _migration(src_dsn: str, dst_dsn: str, **request) -> Iterator[stages.Migration]:
    """What one task of the migration of table ``t`` works with (pools of its own)."""
    source_pool = ConnectionPool(lambda: psycopg2.connect(src_dsn), name="source", max_size=6)
    target_pool = ConnectionPool(lambda: psycopg2.connect(dst_dsn), name="target", max_size=6)
    connect = psycopg2.extensions.parse_dsn(src_dsn)
    resolved = MigrationRequest(tables=("t",), **request).resolved("source", "target")
    try:
        yield stages.Migration(resolved, source_pool, target_pool, connect, logging.getLogger("test"), 600.0)
    finally:
        source_pool.close()
        target_pool.close()


def _copy(m: stages.Migration) -> None:
    """The data stage: each table gets its indexes and keys once its rows are in."""
    for batch in stages.plan_data(m):
        stages.copy_data(m, batch)


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
            _copy(m)
            stages.post_data(m)
            report = stages.verify_and_report(m)
        finally:
            m.snapshots.release()
    assert report.verified
    assert _one(dst, "SELECT count(*) FROM t") == 10000
    told = [r.getMessage() for r in caplog.records if "statement_timeout = 200ms" in r.getMessage()]
    assert len(told) == 2 and {"'source'", "'target'"} == {m.split()[1].rstrip(":") for m in told}
