"""ConnectionPool against a real PostgreSQL: reuse, bounds, timeouts, health checks, resets,
misuse, fork safety, leaks, lifetimes and stats.

Every pool gets its own ``application_name`` so ``pg_stat_activity`` shows exactly its backends
even on a shared server.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg2
import psycopg2.extensions as ext
import pytest
from forking import in_child
from observe import app_backends, wait_until
from psycopg2 import sql

from airflow_pool_provider.pool import ConnectionPool, PoolClosed, PooledConnection, PoolError, PoolTimeout
from airflow_pool_provider.testing.postgres import Server

STATS_KEYS = {
    "name",
    "min_size",
    "max_size",
    "size",
    "idle",
    "in_use",
    "waiting",
    "connections_created",
    "connection_errors",
    "checkouts",
    "returns",
    "waits",
    "wait_time_ms",
    "timeouts",
    "pings",
    "discarded_broken",
    "discarded_expired",
    "rollbacks_on_return",
    "leaks_detected",
    "peak_in_use",
    "closed",
}


# -- helpers ------------------------------------------------------------------------------------


def backend_pid(conn: Any) -> int:
    """The backend serving ``conn``; leaves no transaction open that it did not find open."""
    was_idle = conn.info.transaction_status == ext.TRANSACTION_STATUS_IDLE
    with conn.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        pid = cur.fetchone()[0]
    if was_idle and not conn.autocommit:
        conn.rollback()
    return pid


def terminate(server: Server, pid: int) -> None:
    """Kill a backend and wait until the server has really let it go."""
    assert server.execute("SELECT pg_terminate_backend(%s)", (pid,)) == [(True,)]
    wait_until(
        lambda: not server.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)),
        what=f"backend {pid} to exit",
    )


def run_thread(target: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    """Start ``target`` in a thread; its result or exception lands in the returned dict."""
    out: dict[str, Any] = {}

    def body() -> None:
        try:
            out["result"] = target()
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            out["error"] = exc

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    return thread, out


@pytest.fixture
def make_pool(pg_server: Server, database: str) -> Iterator[Callable[..., tuple[ConnectionPool, str]]]:
    """Pools on this test's database, each with a unique application_name; closed after."""
    made: list[ConnectionPool] = []

    def make(server: Server | None = None, dbname: str | None = None, **settings: Any):
        srv = server or pg_server
        db = dbname or database
        app = f"pooltest-{uuid.uuid4().hex[:10]}"
        settings.setdefault("timeout", 5.0)
        pool = ConnectionPool(lambda: psycopg2.connect(srv.dsn(db, application_name=app)), name=app, **settings)
        made.append(pool)
        return pool, app

    yield make
    for pool in made:
        pool.close()


# -- 1. reuse -----------------------------------------------------------------------------------


def test_successive_checkouts_reuse_one_backend(make_pool, pg_server):
    pool, app = make_pool(max_size=4)
    pids = []
    for _ in range(5):
        conn = pool.getconn()
        pids.append(backend_pid(conn))
        conn.close()
    with pool.connection() as conn:
        pids.append(backend_pid(conn))

    assert len(set(pids)) == 1, pids
    assert app_backends(pg_server, app) == [pids[0]]
    stats = pool.stats()
    assert stats["connections_created"] == 1
    assert stats["checkouts"] == 6
    assert stats["returns"] == 6
    assert (stats["size"], stats["idle"], stats["in_use"]) == (1, 1, 0)
    # a young, quiet idle connection is handed out on the socket check alone, without a ping
    assert stats["pings"] == 0


def test_idle_connection_older_than_ping_after_is_pinged_and_kept(make_pool):
    pool, _ = make_pool(ping_after=0.1)
    with pool.connection() as conn:
        pid = backend_pid(conn)
    time.sleep(0.2)
    with pool.connection() as conn:
        assert backend_pid(conn) == pid
    stats = pool.stats()
    assert stats["pings"] == 1
    assert stats["connections_created"] == 1
    assert stats["discarded_broken"] == 0


# -- 2. the bound -------------------------------------------------------------------------------


def test_64_threads_never_exceed_max_size(make_pool, pg_server):
    pool, app = make_pool(max_size=4, timeout=20.0)
    threads_n, rounds = 64, 6
    start = threading.Barrier(threads_n + 1)
    errors: list[BaseException] = []
    seen_backends: list[int] = []
    seen_pool: list[tuple[int, int]] = []
    stop = threading.Event()

    def worker() -> None:
        try:
            start.wait(10)
            for _ in range(rounds):
                with pool.connection() as conn, conn.cursor() as cur:
                    cur.execute("SELECT pg_sleep(0.01)")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def sampler() -> None:
        admin = pg_server.admin()
        try:
            with admin.cursor() as cur:
                while not stop.is_set():
                    cur.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (app,))
                    seen_backends.append(cur.fetchone()[0])
                    s = pool.stats()
                    seen_pool.append((s["size"], s["in_use"]))
                    time.sleep(0.002)
        finally:
            admin.close()

    sampling = threading.Thread(target=sampler, daemon=True)
    sampling.start()
    workers = [threading.Thread(target=worker, daemon=True) for _ in range(threads_n)]
    for t in workers:
        t.start()
    start.wait(10)
    deadline = time.monotonic() + 30
    for t in workers:
        t.join(max(0.0, deadline - time.monotonic()))
    stuck = sum(t.is_alive() for t in workers)
    stop.set()
    sampling.join(5)

    assert stuck == 0, f"{stuck} worker threads did not finish (deadlock?)"
    assert errors == []
    assert len(seen_backends) >= 5, "the sampler barely ran; the check would prove nothing"
    assert max(seen_backends) >= 1, "the sampler never saw the pool's backends"
    assert max(seen_backends) <= 4, (str(seen_backends), str(pool.stats()))
    assert max(size for size, _ in seen_pool) <= 4
    assert max(in_use for _, in_use in seen_pool) <= 4
    stats = pool.stats()
    assert stats["peak_in_use"] == 4  # 64 contending threads do fill the pool
    assert stats["connections_created"] <= 4
    assert stats["checkouts"] == threads_n * rounds
    assert stats["returns"] == threads_n * rounds
    assert stats["waits"] >= 1
    assert stats["in_use"] == 0 and stats["waiting"] == 0
    assert len(app_backends(pg_server, app)) <= 4


class _SlowRollback(ext.connection):
    """A real psycopg2 connection whose rollback() takes 0.3 s (a slow network, say)."""

    def rollback(self) -> None:
        time.sleep(0.3)
        super().rollback()


def test_connection_being_reset_on_return_still_counts_against_max_size(pg_server, database):
    app = f"pooltest-{uuid.uuid4().hex[:10]}"
    pool = ConnectionPool(
        lambda: psycopg2.connect(pg_server.dsn(database, application_name=app), connection_factory=_SlowRollback),
        name=app,
        max_size=1,
        timeout=2.0,
    )
    try:
        first = pool.getconn()
        with first.cursor() as cur:
            cur.execute("SELECT 1")  # leaves a transaction open: rolled back on return
        returning = threading.Thread(target=first.close)
        returning.start()
        time.sleep(0.1)  # first.close() is now inside its rollback
        second = pool.getconn()  # must wait for the first connection, not open another one
        returning.join(5)
        try:
            assert pool.stats()["size"] <= 1, pool.stats()
            assert len(app_backends(pg_server, app)) <= 1
        finally:
            second.close()
    finally:
        pool.close()


# -- 3. PoolTimeout -----------------------------------------------------------------------------


def test_pool_timeout_when_all_connections_are_out(make_pool):
    pool, app = make_pool(max_size=2, timeout=0.5)
    held = [pool.getconn(), pool.getconn()]
    waiter, waited = run_thread(lambda: pool.getconn(timeout=10))
    wait_until(lambda: pool.stats()["waiting"] == 1, what="a second waiter")

    started = time.monotonic()
    with pytest.raises(PoolTimeout) as info:
        pool.getconn()
    elapsed = time.monotonic() - started

    assert type(info.value) is PoolTimeout
    assert isinstance(info.value, psycopg2.OperationalError)
    assert 0.5 <= elapsed < 2.0, elapsed
    message = str(info.value)
    assert repr(app) in message
    assert "max_size=2" in message
    assert "in use=2" in message
    assert "waiting=1" in message
    assert "after 0.5 s" in message
    stats = pool.stats()
    assert stats["timeouts"] == 1
    assert stats["in_use"] == 2

    # the other waiter is still served once a connection comes back
    pid = backend_pid(held[0])
    held[0].close()
    waiter.join(5)
    assert not waiter.is_alive()
    assert "error" not in waited, waited.get("error")
    assert backend_pid(waited["result"]) == pid
    waited["result"].close()
    held[1].close()
    assert pool.stats()["timeouts"] == 1


def test_pool_timeout_message_names_the_per_call_timeout(make_pool):
    pool, _ = make_pool(max_size=1, timeout=30.0)
    held = pool.getconn()
    try:
        started = time.monotonic()
        with pytest.raises(PoolTimeout) as info:
            pool.getconn(timeout=0.3)
        assert time.monotonic() - started < 2.0
        assert "after 0.3 s" in str(info.value), str(info.value)
    finally:
        held.close()


# -- 4. dead backends are never handed out ------------------------------------------------------


@pytest.mark.parametrize("idle_past_ping_after", [False, True], ids=["at-once", "after-ping_after"])
def test_backend_killed_while_idle_is_replaced(make_pool, pg_server, idle_past_ping_after):
    ping_after = 0.2 if idle_past_ping_after else 60.0
    pool, app = make_pool(ping_after=ping_after)
    with pool.connection() as conn:
        first = backend_pid(conn)

    terminate(pg_server, first)
    if idle_past_ping_after:
        time.sleep(0.3)

    with pool.connection() as conn:
        second = backend_pid(conn)
        with conn.cursor() as cur:
            cur.execute("SELECT 40 + 2")
            assert cur.fetchone() == (42,)
    assert second != first
    assert app_backends(pg_server, app) == [second]
    stats = pool.stats()
    assert stats["discarded_broken"] >= 1
    assert stats["connections_created"] == 2
    assert stats["in_use"] == 0 and stats["size"] == 1


# -- 5. server restarts -------------------------------------------------------------------------


def test_server_restart_is_survived(make_pool, own_server):
    pool, app = make_pool(server=own_server.server, dbname="postgres", timeout=5.0)
    with pool.connection() as conn:
        before = backend_pid(conn)

    own_server.restart()

    with pool.connection() as conn:
        after = backend_pid(conn)
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
            assert cur.fetchone() == (1,)
    assert after != before
    assert app_backends(own_server.server, app) == [after]
    stats = pool.stats()
    assert stats["discarded_broken"] == 1
    assert stats["connections_created"] == 2


def test_getconn_waits_for_a_server_that_comes_back(make_pool, own_server, caplog):
    pool, app = make_pool(server=own_server.server, dbname="postgres", timeout=5.0)
    with pool.connection() as conn:
        before = backend_pid(conn)
    own_server.stop()
    restarter = threading.Timer(1.0, own_server.start)
    restarter.start()
    try:
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="airflow_pool_provider.pool"):
            conn = pool.getconn(timeout=3.0)
        elapsed = time.monotonic() - started
    finally:
        restarter.join(30)
    try:
        after = backend_pid(conn)
    finally:
        conn.close()
    assert after != before
    assert 0.9 <= elapsed < 3.5, elapsed
    stats = pool.stats()
    assert stats["connection_errors"] >= 1
    assert stats["timeouts"] == 0
    retries = [r for r in caplog.records if "cannot connect" in r.getMessage()]
    assert retries and all(r.levelno == logging.WARNING for r in retries)
    assert app_backends(own_server.server, app) == [after]


def test_server_down_longer_than_timeout_raises_pool_timeout(make_pool, own_server):
    pool, _ = make_pool(server=own_server.server, dbname="postgres", timeout=0.5)
    own_server.stop()
    started = time.monotonic()
    with pytest.raises(PoolTimeout) as info:
        pool.getconn()
    elapsed = time.monotonic() - started
    assert type(info.value) is PoolTimeout
    assert 0.5 <= elapsed < 2.5, elapsed
    message = str(info.value)
    assert "could not connect within 0.5 s" in message
    assert repr(pool.name) in message
    stats = pool.stats()
    assert stats["timeouts"] == 1
    assert stats["connection_errors"] >= 2  # it did retry
    assert (stats["size"], stats["in_use"]) == (0, 0)

    # the failed attempt left no phantom "opening" slot behind: the pool works once the server is up
    own_server.start()
    with pool.connection() as conn:
        assert backend_pid(conn) > 0
    assert pool.stats()["connections_created"] == 1


# -- 6. resets on return ------------------------------------------------------------------------


@pytest.fixture
def items_table(pg_server, database) -> Callable[[], int]:
    """Creates table ``items`` in the test database; returns a committed-row counter."""
    conn = psycopg2.connect(pg_server.dsn(database))
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE items (id int)")

    def committed_rows() -> int:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM items")
            return cur.fetchone()[0]

    yield committed_rows
    conn.close()


def test_open_transaction_is_rolled_back_on_return(make_pool, items_table):
    pool, _ = make_pool()
    conn = pool.getconn()
    pid = backend_pid(conn)
    with conn.cursor() as cur:
        cur.execute("INSERT INTO items VALUES (1)")
    assert conn.info.transaction_status == ext.TRANSACTION_STATUS_INTRANS
    conn.close()

    assert items_table() == 0  # not visible from another connection
    assert pool.stats()["rollbacks_on_return"] == 1
    with pool.connection() as conn:
        # checked before anything runs on it
        assert conn.info.transaction_status == ext.TRANSACTION_STATUS_IDLE
        assert backend_pid(conn) == pid
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM items")
            assert cur.fetchone() == (0,)
        conn.commit()
    stats = pool.stats()
    assert stats["rollbacks_on_return"] == 1
    assert stats["connections_created"] == 1


def test_explicit_begin_in_autocommit_is_rolled_back_on_return(make_pool, items_table):
    pool, _ = make_pool()
    conn = pool.getconn()
    pid = backend_pid(conn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("BEGIN")
        cur.execute("INSERT INTO items VALUES (1)")
    assert conn.info.transaction_status == ext.TRANSACTION_STATUS_INTRANS
    conn.close()

    assert items_table() == 0
    with pool.connection() as conn:
        assert conn.autocommit is False
        assert conn.info.transaction_status == ext.TRANSACTION_STATUS_IDLE
        assert backend_pid(conn) == pid
    assert pool.stats()["rollbacks_on_return"] == 1


def test_failed_transaction_and_session_flags_are_reset_on_return(make_pool, items_table):
    pool, _ = make_pool()
    conn = pool.getconn()
    pid = backend_pid(conn)
    conn.set_session(readonly=True, isolation_level="SERIALIZABLE")
    with conn.cursor() as cur, pytest.raises(psycopg2.errors.UndefinedTable):
        cur.execute("SELECT * FROM no_such_table")
    assert conn.info.transaction_status == ext.TRANSACTION_STATUS_INERROR
    conn.close()

    with pool.connection() as conn:
        assert backend_pid(conn) == pid
        assert conn.readonly is None and conn.isolation_level is None
        with conn.cursor() as cur:
            cur.execute("SHOW transaction_read_only")
            assert cur.fetchone() == ("off",)
            cur.execute("SHOW transaction_isolation")
            assert cur.fetchone() == ("read committed",)
            cur.execute("INSERT INTO items VALUES (7)")  # writable again
        conn.commit()
    assert items_table() == 1
    assert pool.stats()["rollbacks_on_return"] == 1


def _show(conn, name: str) -> str:
    with conn.cursor() as cur:
        cur.execute(sql.SQL("SHOW {}").format(sql.Identifier(name)))
        value = cur.fetchone()[0]
    conn.rollback()
    return value


def test_session_settings_asked_for_hold_for_the_checkout_and_are_undone_for_one_that_does_not_ask(pg_server, database):
    server_value = {"options": "-c statement_timeout=150ms"}  # as a role's or a database's setting would
    pool = ConnectionPool(lambda: psycopg2.connect(pg_server.dsn(database, **server_value)), max_size=1)
    wanted = {"statement_timeout": "0", "lock_timeout": "2s"}
    try:
        with pool.connection(settings=wanted) as conn:
            pid = backend_pid(conn)
            assert (_show(conn, "statement_timeout"), _show(conn, "lock_timeout")) == ("0", "2s")
            assert conn.settings_before == {"statement_timeout": "150ms", "lock_timeout": "0"}
        with pool.connection(settings=wanted) as conn:  # kept while idle: nothing to set again
            assert backend_pid(conn) == pid and _show(conn, "statement_timeout") == "0"
            assert conn.settings_before == {"statement_timeout": "150ms", "lock_timeout": "0"}
        with pool.connection() as conn:  # another taker gets the session as the server set it
            assert backend_pid(conn) == pid
            assert (_show(conn, "statement_timeout"), _show(conn, "lock_timeout")) == ("150ms", "0")
            assert conn.settings_before == {}
    finally:
        pool.close()


# -- 7. misuse ----------------------------------------------------------------------------------


def test_returning_twice_raises_pool_error(make_pool):
    pool, app = make_pool()
    conn = pool.getconn()
    pool.putconn(conn)
    with pytest.raises(PoolError, match="already given back") as info:
        pool.putconn(conn)
    assert type(info.value) is PoolError
    assert repr(app) in str(info.value)
    conn.close()  # close() stays idempotent, like psycopg2's
    stats = pool.stats()
    assert stats["returns"] == 1 and stats["idle"] == 1 and stats["in_use"] == 0


def test_putconn_of_a_foreign_connection_raises_pool_error(make_pool, pg_server, database):
    pool_a, app_a = make_pool()
    pool_b, _ = make_pool()
    conn_b = pool_b.getconn()
    with pytest.raises(PoolError, match="not checked out from this pool") as info:
        pool_a.putconn(conn_b)
    assert type(info.value) is PoolError
    assert repr(app_a) in str(info.value)
    # the connection is untouched and still belongs to pool_b
    assert backend_pid(conn_b) > 0
    assert pool_b.stats()["in_use"] == 1
    conn_b.close()
    assert pool_b.stats()["returns"] == 1
    assert pool_a.stats()["returns"] == 0

    raw = psycopg2.connect(pg_server.dsn(database))  # a plain psycopg2 connection
    try:
        with pytest.raises(PoolError, match="not checked out from this pool"):
            pool_a.putconn(raw)
    finally:
        raw.close()


def test_using_a_returned_wrapper_raises_pool_error(make_pool):
    pool, app = make_pool()
    conn = pool.getconn()
    conn.close()
    with pytest.raises(PoolError, match="already given back") as info:
        conn.cursor()
    assert type(info.value) is PoolError
    assert repr(app) in str(info.value)
    with pytest.raises(PoolError):
        conn.raw  # noqa: B018
    with pytest.raises(PoolError):
        conn.autocommit = True
    assert conn.closed == 1
    assert "returned" in repr(conn)
    # the physical connection was kept and is healthy
    with pool.connection() as again:
        assert again.closed == 0
        assert backend_pid(again) > 0


def test_dropped_wrapper_comes_back_to_the_pool(make_pool, caplog):
    pool, app = make_pool()
    conn = pool.getconn()
    pid = backend_pid(conn)
    assert pool.stats()["in_use"] == 1
    with caplog.at_level(logging.WARNING, logger="airflow_pool_provider.pool"):
        del conn
        gc.collect()
    stats = pool.stats()
    assert stats["returns"] == 1
    assert stats["in_use"] == 0 and stats["idle"] == 1
    assert any("dropped without close()" in r.getMessage() for r in caplog.records)
    with pool.connection() as conn:
        assert backend_pid(conn) == pid


def _forgetful(pool: ConnectionPool) -> int:
    conn = pool.getconn()  # never closed: the wrapper dies when this function returns
    return backend_pid(conn)


@pytest.mark.parametrize("leak_threshold", [None, 300.0], ids=["leak-check-off", "leak-check-on"])
def test_wrapper_dropped_by_a_returning_function_comes_back(make_pool, leak_threshold):
    pool, _ = make_pool(leak_threshold=leak_threshold)
    pid = _forgetful(pool)
    gc.collect()
    stats = pool.stats()
    try:
        assert (stats["in_use"], stats["returns"]) == (0, 1), stats
        with pool.connection() as conn:
            assert backend_pid(conn) == pid
    finally:
        # cleanup only: drop the kept frames so a leaked wrapper is reclaimed now, not at exit
        for slot in list(pool._in_use.values()):
            slot.taker = None
        gc.collect()


def test_closed_pool_refuses_checkouts_and_closes_returned_connections(make_pool, pg_server):
    pool, app = make_pool()
    held = pool.getconn()
    with pool.connection() as conn:
        idle_pid = backend_pid(conn)
    held_pid = backend_pid(held)
    pool.close()
    assert pool.closed is True
    wait_until(lambda: idle_pid not in app_backends(pg_server, app), what="the idle backend to close")
    assert held_pid in app_backends(pg_server, app)  # in-use connections are not yanked
    with pytest.raises(PoolClosed, match="is closed") as info:
        pool.getconn()
    assert isinstance(info.value, PoolError)
    held.close()
    wait_until(lambda: app_backends(pg_server, app) == [], what="the returned backend to close")


# -- 8. fork ------------------------------------------------------------------------------------


def test_forked_child_gets_its_own_backend_and_leaves_the_parents_alone(make_pool, pg_server):
    pool, app = make_pool(max_size=2)
    idle, held = pool.getconn(), pool.getconn()  # held stays checked out in the parent at fork time
    parent_pid, held_pid = backend_pid(idle), backend_pid(held)
    idle.close()

    def child() -> dict[str, Any]:
        with pool.connection() as conn:
            child_pid = backend_pid(conn)
        stats = pool.stats()
        try:
            held.close()  # an inherited wrapper: must not end the parent's session
            closed_inherited = "ok"
        except PoolError as exc:
            closed_inherited = type(exc).__name__
        pool.close()  # must close only the child's own connection
        return {
            "pid": child_pid,
            "created": stats["connections_created"],
            "in_use": stats["in_use"],
            "closed_inherited": closed_inherited,
        }

    report = in_child(child)
    assert report["pid"] not in (parent_pid, held_pid)
    assert report["created"] == 1 and report["in_use"] == 0  # the child started from scratch

    # the parent's idle and checked-out sessions both survived the child's close()
    assert backend_pid(held) == held_pid
    held.close()
    with pool.connection() as conn:
        pids = {backend_pid(conn)}
        with pool.connection() as conn2:
            pids.add(backend_pid(conn2))
    assert pids == {parent_pid, held_pid}
    stats = pool.stats()
    assert stats["discarded_broken"] == 0
    assert stats["connections_created"] == 2
    assert pool.closed is False


def test_pool_closed_before_fork_stays_closed_in_the_child(make_pool):
    pool, _ = make_pool()
    pool.close()

    def child() -> dict[str, Any]:
        try:
            pool.getconn(timeout=1).close()
            outcome = "served a connection"
        except PoolClosed:
            outcome = "PoolClosed"
        return {"closed": pool.closed, "outcome": outcome}

    report = in_child(child)
    assert report == {"closed": True, "outcome": "PoolClosed"}


# -- 9. leaks -----------------------------------------------------------------------------------


def test_leak_is_reported_with_the_stack_of_the_taker(make_pool, caplog):
    pool, app = make_pool(leak_threshold=0.2)
    with caplog.at_level(logging.WARNING, logger="airflow_pool_provider.pool"):
        conn = pool.getconn()
        assert pool.stats()["leaks_detected"] == 0  # not yet
        time.sleep(0.3)
        stats = pool.stats()
        again = pool.stats()  # reported once, not at every look
    conn.close()

    assert stats["leaks_detected"] == 1
    assert again["leaks_detected"] == 1
    leaks = [r for r in caplog.records if "has been held for" in r.getMessage()]
    assert len(leaks) == 1
    assert leaks[0].levelno == logging.WARNING
    message = leaks[0].getMessage()
    assert repr(app) in message
    assert "leak_threshold=0.2 s" in message
    assert "test_leak_is_reported_with_the_stack_of_the_taker" in message


def _take_and_keep(pool: ConnectionPool) -> PooledConnection:
    return pool.getconn()


def test_leak_is_reported_at_the_next_getconn(make_pool, caplog):
    pool, app = make_pool(leak_threshold=0.2, max_size=2)
    with caplog.at_level(logging.WARNING, logger="airflow_pool_provider.pool"):
        leaked = _take_and_keep(pool)
        time.sleep(0.3)
        other = pool.getconn()
    other.close()
    leaked.close()
    leaks = [r.getMessage() for r in caplog.records if "has been held for" in r.getMessage()]
    assert len(leaks) == 1
    assert "_take_and_keep" in leaks[0]
    assert "test_leak_is_reported_at_the_next_getconn" in leaks[0]
    assert pool.stats()["leaks_detected"] == 1


def test_leak_report_shows_the_line_that_took_the_connection(make_pool, caplog):
    pool, _ = make_pool(leak_threshold=0.1)
    with caplog.at_level(logging.WARNING, logger="airflow_pool_provider.pool"):
        conn = pool.getconn()  # the taking line
        time.sleep(0.2)
        pool.stats()
    conn.close()
    leaks = [r.getMessage() for r in caplog.records if "has been held for" in r.getMessage()]
    assert len(leaks) == 1
    assert "conn = pool.getconn()  # the taking line" in leaks[0], leaks[0]


# -- 10. lifetimes ------------------------------------------------------------------------------


def test_max_lifetime_replaces_a_connection(make_pool, pg_server):
    pool, app = make_pool(max_lifetime=0.3, max_idle=None)
    with pool.connection() as conn:
        first = backend_pid(conn)
    time.sleep(0.4)
    with pool.connection() as conn:
        second = backend_pid(conn)
    assert second != first
    assert pool.stats()["discarded_expired"] >= 1
    assert app_backends(pg_server, app) == [second]  # the expired one was closed


def test_connection_expiring_while_checked_out_is_closed_on_return(make_pool, pg_server):
    pool, app = make_pool(max_lifetime=0.3, max_idle=None)
    conn = pool.getconn()
    pid = backend_pid(conn)
    time.sleep(0.4)
    conn.close()
    stats = pool.stats()
    assert stats["discarded_expired"] == 1
    assert (stats["size"], stats["idle"]) == (0, 0)
    wait_until(lambda: pid not in app_backends(pg_server, app), what="the expired backend to close")


def test_max_idle_replaces_a_connection_idle_too_long(make_pool, pg_server):
    pool, app = make_pool(max_idle=0.3, max_lifetime=None, ping_after=60)
    with pool.connection() as conn:
        first = backend_pid(conn)
    time.sleep(0.4)
    with pool.connection() as conn:
        second = backend_pid(conn)
    assert second != first
    assert pool.stats()["discarded_expired"] >= 1
    assert app_backends(pg_server, app) == [second]


def test_max_idle_spares_connections_within_min_size(make_pool):
    pool, _ = make_pool(min_size=1, max_idle=0.3, max_lifetime=None, ping_after=60)
    with pool.connection() as conn:
        first = backend_pid(conn)
    time.sleep(0.4)
    with pool.connection() as conn:
        assert backend_pid(conn) == first
    assert pool.stats()["discarded_expired"] == 0


def test_max_idle_closes_surplus_idle_connections_under_low_load(make_pool, pg_server):
    pool, app = make_pool(max_size=4, max_idle=0.3, max_lifetime=None, ping_after=60)
    burst = [pool.getconn() for _ in range(4)]
    for conn in burst:
        conn.close()
    assert len(app_backends(pg_server, app)) == 4
    for _ in range(8):  # one connection at a time, for longer than max_idle
        with pool.connection() as conn:
            backend_pid(conn)
        time.sleep(0.1)
    assert len(app_backends(pg_server, app)) == 1, pool.stats()


# -- 11. stats ----------------------------------------------------------------------------------


def test_stats_in_a_small_scenario(make_pool):
    pool, app = make_pool(max_size=1, timeout=5.0)
    fresh = pool.stats()
    assert STATS_KEYS <= set(fresh)
    assert fresh == {
        **fresh,
        "name": app,
        "size": 0,
        "idle": 0,
        "in_use": 0,
        "waiting": 0,
        "connections_created": 0,
        "checkouts": 0,
        "wait_time_ms": 0.0,
        "timeouts": 0,
        "discarded_broken": 0,
        "discarded_expired": 0,
        "peak_in_use": 0,
        "max_size": 1,
        "closed": False,
    }

    held = pool.getconn()
    waiter, waited = run_thread(lambda: pool.getconn())
    wait_until(lambda: pool.stats()["waiting"] == 1, what="the waiter")
    during = pool.stats()
    assert (during["size"], during["idle"], during["in_use"], during["waiting"]) == (1, 0, 1, 1)
    time.sleep(0.2)
    held.close()
    waiter.join(5)
    assert "error" not in waited, waited.get("error")
    waited["result"].close()

    after = pool.stats()
    assert after["size"] == 1 and after["idle"] == 1 and after["in_use"] == 0
    assert after["waiting"] == 0
    assert after["connections_created"] == 1
    assert after["checkouts"] == 2 and after["returns"] == 2
    assert after["waits"] >= 1
    assert after["wait_time_ms"] >= 150, after["wait_time_ms"]
    assert after["timeouts"] == 0
    assert after["discarded_broken"] == 0 and after["discarded_expired"] == 0
    assert after["peak_in_use"] == 1


def test_invalid_pool_settings_raise_value_error():
    def connect():
        raise AssertionError("must not connect")

    with pytest.raises(ValueError, match="max_size must be at least 1"):
        ConnectionPool(connect, name="bad", max_size=0)
    with pytest.raises(ValueError, match="min_size must be within 0..max_size"):
        ConnectionPool(connect, name="bad", min_size=3, max_size=2)
    with pytest.raises(ValueError, match="timeout must be positive"):
        ConnectionPool(connect, name="bad", timeout=0)
