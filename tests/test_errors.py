"""One error model: every error a real PostgreSQL raises is transient, a mistake or a fault, by its
full SQLSTATE, by the connection's state, or (only while connecting) by libpq's message; the pool
waits through what is transient and fails at once on mistakes."""

from __future__ import annotations

import threading
import time

import psycopg2
import pytest
from psycopg2 import sql

from airflow_pool_provider.errors import (
    CatalogError,
    ChunkMismatch,
    ConnectFailed,
    CopyError,
    CopyStopped,
    InvalidName,
    Kind,
    MigrationMistake,
    Mistake,
    PoolClosed,
    PoolTimeout,
    SnapshotLost,
    ToolFailed,
    ToolMissing,
    UnusableConnection,
    classify,
    is_transient,
)
from airflow_pool_provider.pool import ConnectionPool


def _server_error(pg_server, database: str, code: str) -> psycopg2.Error:
    """The error PostgreSQL raises with SQLSTATE ``code``, as psycopg2 delivers it."""
    conn = psycopg2.connect(pg_server.dsn(database))
    try:
        with conn.cursor() as cur, pytest.raises(psycopg2.Error) as caught:
            cur.execute(
                sql.SQL("DO $$ BEGIN RAISE EXCEPTION 'raised on purpose' USING ERRCODE = {}; END $$").format(
                    sql.Literal(code)
                )
            )
        return caught.value
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        ("57P01", Kind.TRANSIENT),  # admin_shutdown, also what pg_terminate_backend sends
        ("57P02", Kind.TRANSIENT),  # crash_shutdown
        ("57P03", Kind.TRANSIENT),  # cannot_connect_now: starting up, in recovery
        ("53300", Kind.TRANSIENT),  # too_many_connections: wait
        ("40001", Kind.TRANSIENT),  # serialization_failure
        ("40P01", Kind.TRANSIENT),  # deadlock_detected
        ("08006", Kind.TRANSIENT),  # connection_failure
        ("23505", Kind.MISTAKE),  # unique_violation
        ("23503", Kind.MISTAKE),  # foreign_key_violation
        ("23502", Kind.MISTAKE),  # not_null_violation
        ("42P01", Kind.MISTAKE),  # undefined_table
        ("42703", Kind.MISTAKE),  # undefined_column
        ("42501", Kind.MISTAKE),  # insufficient_privilege
        ("42804", Kind.MISTAKE),  # datatype_mismatch
        ("22P02", Kind.MISTAKE),  # invalid_text_representation
        ("3F000", Kind.MISTAKE),  # invalid_schema_name
        ("25006", Kind.MISTAKE),  # read_only_sql_transaction
        ("53100", Kind.FAULT),  # disk_full: not retried at once
        ("53200", Kind.FAULT),  # out_of_memory
        ("57014", Kind.FAULT),  # query_canceled: a statement timeout, or our own cancel
        ("55P03", Kind.FAULT),  # lock_not_available
        ("XX000", Kind.FAULT),  # internal_error
        ("P0001", Kind.FAULT),  # raise_exception: unknown, so Airflow's retries decide
    ],
)
def test_a_server_error_is_classified_by_its_full_sqlstate(pg_server, database, code, kind):
    error = _server_error(pg_server, database, code)
    assert error.pgcode == code
    assert classify(error) is kind
    assert is_transient(error) is (kind is Kind.TRANSIENT)


def test_a_lost_connection_is_transient_by_the_connections_state(pg_server, database):
    conn = psycopg2.connect(pg_server.dsn(database))
    pid = conn.get_backend_pid()
    try:
        threading.Timer(0.3, pg_server.execute, ("SELECT pg_terminate_backend(%s)", (pid,))).start()
        with conn.cursor() as cur, pytest.raises(psycopg2.OperationalError) as caught:
            cur.execute("SELECT pg_sleep(5)")
        assert caught.value.pgcode is None  # psycopg2 lost the FATAL message: the state tells
        assert conn.closed
        assert classify(caught.value) is Kind.TRANSIENT  # its cursor names the closed connection
        with pytest.raises(psycopg2.InterfaceError) as again:
            conn.cursor().execute("SELECT 1")
        assert classify(again.value, connections=[conn]) is Kind.TRANSIENT
        assert classify(again.value) is Kind.FAULT  # without the connection, it is not known to be lost
    finally:
        conn.close()


def test_unknown_database_fails_at_once_as_a_mistake(pg_server):
    pool = ConnectionPool(lambda: psycopg2.connect(pg_server.dsn("no_such_database_here")), timeout=10)
    started = time.monotonic()
    with pytest.raises(ConnectFailed, match='database "no_such_database_here" does not exist') as caught:
        pool.getconn()
    assert time.monotonic() - started < 1.0  # not retried for 10 s
    assert classify(caught.value) is Kind.MISTAKE
    assert isinstance(caught.value, psycopg2.OperationalError)
    assert pool.stats()["connection_errors"] == 1


def test_a_refused_connection_is_waited_for_until_the_pool_timeout(own_server):
    own_server.stop()
    pool = ConnectionPool(lambda: psycopg2.connect(own_server.server.dsn()), timeout=1.0)
    started = time.monotonic()
    with pytest.raises(PoolTimeout, match="could not connect within 1 s") as caught:
        pool.getconn()
    assert 0.9 < time.monotonic() - started < 3.0
    assert pool.stats()["connection_errors"] > 2  # tried again with backoff
    assert classify(caught.value) is Kind.FAULT  # the pool waited already: the engine does not retry it


def test_the_pool_waits_while_the_server_accepts_no_connections_57P03(own_server, caplog):
    # A standby without hot standby answers every connection with 57P03 ("not accepting
    # connections"); once promoted, it accepts them.
    own_server.stop()
    (own_server.data / "standby.signal").touch()
    own_server.settings["hot_standby"] = "off"
    own_server.start()
    with pytest.raises(psycopg2.OperationalError, match="not accepting connections"):
        psycopg2.connect(own_server.server.dsn()).close()
    pool = ConnectionPool(lambda: psycopg2.connect(own_server.server.dsn()), timeout=20.0)
    threading.Timer(1.0, own_server._run, ("pg_ctl", "-w", "-D", str(own_server.data), "promote")).start()
    started = time.monotonic()
    with caplog.at_level("WARNING", logger="airflow_pool_provider.pool"):
        conn = pool.getconn()
    waited = time.monotonic() - started
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_is_in_recovery()")
            assert cur.fetchone() == (False,)
    finally:
        conn.close()
        pool.close()
    assert 0.9 < waited < 15
    assert pool.stats()["connection_errors"] >= 2
    assert "not accepting connections" in caplog.text and "retrying" in caplog.text


def test_pool_errors_are_not_transient(pg_server, database):
    pool = ConnectionPool(lambda: psycopg2.connect(pg_server.dsn(database)), max_size=1, timeout=0.1)
    held = pool.getconn()
    with pytest.raises(PoolTimeout) as timed_out:
        pool.getconn()
    held.close()
    pool.close()
    with pytest.raises(PoolClosed) as closed:
        pool.getconn()
    assert classify(timed_out.value) is Kind.FAULT
    assert classify(closed.value) is Kind.FAULT  # a retry gets a new pool


def test_the_packages_own_errors_carry_their_kind():
    assert classify(SnapshotLost("gone", "0000-1")) is Kind.TRANSIENT
    assert classify(ChunkMismatch("checksums differ")) is Kind.MISTAKE
    assert classify(CopyStopped("stopped")) is Kind.FAULT
    assert isinstance(ChunkMismatch("x"), ValueError)  # mistakes are ValueErrors, for parse-time checks


def test_every_mistake_shares_one_base_whichever_part_raised_it():
    for mistake in (InvalidName("a.b.c"), UnusableConnection("iam"), CatalogError("x"), ToolMissing("no pg_dump")):
        assert isinstance(mistake, Mistake) and isinstance(mistake, ValueError)
        assert classify(mistake) is Kind.MISTAKE
    assert not isinstance(MigrationMistake("x"), CopyError)  # the migration's own, not the copy's
    assert classify(ToolFailed("pg_restore exited with 1")) is Kind.FAULT


def test_a_mistake_on_one_of_several_hosts_is_not_waited_for(pg_server):
    # libpq tries each host and joins their errors: one refused, one answering "no such database".
    dsn = f"host=127.0.0.1,{pg_server.host} port=1,{pg_server.port} user={pg_server.user} dbname=no_such_db_at_all"
    pool = ConnectionPool(lambda: psycopg2.connect(dsn), timeout=10)
    started = time.monotonic()
    with pytest.raises(ConnectFailed, match='database "no_such_db_at_all" does not exist'):
        pool.getconn()
    assert time.monotonic() - started < 1.0
