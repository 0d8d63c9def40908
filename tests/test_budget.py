"""A connection budget that holds: a pool's max_size is a hard cap, the task's pool_slots bound
its connections, and a copy leaves a server's last slots to other clients, shrinking or refusing
before it writes anything."""

from __future__ import annotations

import re
import threading

import psycopg2
import pytest
from conftest import FAST_SERVER_SETTINGS
from copy_helpers import CopyEnv

from airflow_pool_provider.copy import CopySpec, TableCopy
from airflow_pool_provider.errors import BudgetError, CopyMistake
from airflow_pool_provider.operators import ChunkedTableCopyOperator
from airflow_pool_provider.pool import ConnectionPool
from airflow_pool_provider.registry import PoolSettings
from airflow_pool_provider.testing.postgres import TemporaryPostgres


@pytest.fixture(scope="module")
def small_server():
    """A private server with max_connections=20 (3 reserved for superusers, 2 kept free by us)."""
    temp = TemporaryPostgres({**FAST_SERVER_SETTINGS, "max_connections": "20"})
    try:
        yield temp.start()
    finally:
        temp.cleanup()


@pytest.fixture
def copy_server(small_server):
    return small_server


@pytest.fixture
def env(env: CopyEnv) -> CopyEnv:
    env.note_table(3000, note="'n'")
    return env


def _hold(server, dbname: str, count: int) -> list:
    """Other clients: ``count`` idle connections."""
    return [psycopg2.connect(server.dsn(dbname)) for _ in range(count)]


def _peak_backends(server, app: str, stop: threading.Event, peak: list[int]) -> None:
    admin = server.admin()
    try:
        with admin.cursor() as cur:
            while not stop.wait(0.005):
                cur.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (app,))
                peak[0] = max(peak[0], cur.fetchone()[0])
    finally:
        admin.close()


def _copy(env: CopyEnv, spec: CopySpec, **kwargs):
    app = "budget-copy"
    src_dsn = env.server.dsn(env.db["src"], application_name=app)
    dst_dsn = env.server.dsn(env.db["dst"], application_name=app)
    source = ConnectionPool(lambda: psycopg2.connect(src_dsn), name="source", max_size=20)
    target = ConnectionPool(lambda: psycopg2.connect(dst_dsn), name="target", max_size=20)
    stop, peak = threading.Event(), [0]
    watcher = threading.Thread(target=_peak_backends, args=(env.server, app, stop, peak), daemon=True)
    watcher.start()
    try:
        return TableCopy(source, target, spec, copy_id="budget", **kwargs).run(), peak[0]
    finally:
        stop.set()
        watcher.join(5)
        source.close()
        target.close()


def _clients(server) -> int:
    return server.execute("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'")[0][0]


def test_a_copy_shrinks_to_the_slots_a_busy_server_has_to_spare(env, caplog):
    # Leave 4 slots to spare once the copy's snapshot and target connections and the watcher are
    # open: 20 - 3 reserved - 2 kept free - 4 = 11 in use. The admin connection asking is one more now.
    others = _hold(env.server, env.db["src"], 11 - (_clients(env.server) - 1) - 3)
    try:
        with caplog.at_level("WARNING"):
            summary, peak = _copy(env, CopySpec("t", chunk_size=100, parallelism=8))
    finally:
        for conn in others:
            conn.close()
    assert summary.workers == 2 and summary.rows == 3000  # 2 x 2 + 1 = 5 = our 2 + 4 spare - 1
    assert peak <= 5
    assert "2 worker(s) instead of 8" in caplog.text
    assert re.search(r"server source has 4 slot\(s\) to spare \(max_connections=20, reserved=3", caplog.text)
    assert env.digest("dst", order="id") == env.digest("src", order="id")


def test_a_copy_refuses_before_writing_when_the_server_has_no_slot_to_spare(env):
    env.sql("dst", "INSERT INTO t VALUES (5000, 'keep')")
    others = _hold(env.server, env.db["src"], 13)
    try:
        with pytest.raises(BudgetError, match=r"not enough free connections to copy: server source has 0 slot"):
            _copy(env, CopySpec("t", chunk_size=100, mode="replace"))
    finally:
        for conn in others:
            conn.close()
    assert env.rows("dst", "SELECT * FROM t") == [(5000, "keep")]  # not truncated
    assert env.ledger("budget") == []  # no plan stored


def test_the_pools_max_size_is_a_hard_cap(env, caplog):
    src_dsn, dst_dsn = env.server.dsn(env.db["src"]), env.server.dsn(env.db["dst"])
    source = ConnectionPool(lambda: psycopg2.connect(src_dsn), name="src_pool", max_size=3)
    target = ConnectionPool(lambda: psycopg2.connect(dst_dsn), name="dst_pool", max_size=3)
    try:
        with caplog.at_level("WARNING"):
            summary = TableCopy(source, target, CopySpec("t", chunk_size=100, parallelism=6), copy_id="cap").run()
        assert summary.workers == 2 and source.max_size == target.max_size == 3
        assert source.stats()["peak_in_use"] <= 3 and target.stats()["peak_in_use"] <= 3
        assert "source pool 'src_pool' has max_size=3" in caplog.text
        assert "raise [pooled_postgres] max_size" in caplog.text
    finally:
        source.close()
        target.close()


def test_pool_slots_bound_the_connections_of_the_copy(env, caplog):
    with caplog.at_level("WARNING"):
        summary, peak = _copy(env, CopySpec("t", chunk_size=100, parallelism=8), connection_limit=7)
    assert summary.workers == 3 and peak <= 7
    assert "the task may hold 7 connection(s) (pool_slots)" in caplog.text


def test_the_default_max_size_gives_a_copy_on_one_connection_id_two_workers(env, caplog):
    env.sql("src", "CREATE TABLE t_copy (LIKE t)")
    dsn = env.server.dsn(env.db["src"])
    pool = ConnectionPool(lambda: psycopg2.connect(dsn), name="shared", max_size=PoolSettings().max_size)
    try:
        with caplog.at_level("WARNING"):
            summary = TableCopy(
                pool, pool, CopySpec("t", target_table="t_copy", chunk_size=100, parallelism=4), copy_id="shared"
            ).run()
        assert summary.workers == 2 and pool.stats()["peak_in_use"] <= 5
        assert "source and target share pool 'shared' (max_size=5)" in caplog.text
    finally:
        pool.close()


def test_a_pool_too_small_for_one_worker_is_a_mistake(env):
    env.sql("src", "CREATE TABLE t_copy (LIKE t)")
    dsn = env.server.dsn(env.db["src"])
    pool = ConnectionPool(lambda: psycopg2.connect(dsn), name="tiny", max_size=2)
    try:
        with pytest.raises(CopyMistake, match="no worker fits the connection limits"):
            TableCopy(pool, pool, CopySpec("t", target_table="t_copy"), copy_id="tiny").run()
    finally:
        pool.close()


@pytest.mark.parametrize(
    ("kwargs", "slots"),
    [
        ({"parallelism": 3}, 7),
        ({"parallelism": "{{ params.p }}"}, 5),
        ({}, 5),
        ({"parallelism": "{{ params.p }}", "pool_slots": 9}, 9),
        ({"parallelism": 8, "pool_slots": 3}, 3),
    ],
)
def test_pool_slots_count_the_connections_a_copy_holds(kwargs, slots):
    op = ChunkedTableCopyOperator(task_id="t", source_conn_id="a", target_conn_id="b", source_table="t", **kwargs)
    assert op.pool_slots == slots


def test_a_role_without_stats_rights_still_counts_other_roles_sessions(env):
    from airflow_pool_provider.copy.budget import read_slots

    role = "budget_reader_" + env.db["src"][-8:]
    env.server.execute(f'CREATE ROLE "{role}" LOGIN')
    others = _hold(env.server, env.db["src"], 5)  # the superuser's sessions
    try:
        conn = psycopg2.connect(env.server.dsn(env.db["src"], user=role))
        try:
            with conn.cursor() as cur:
                seen_as_role = read_slots(cur, "source").in_use
        finally:
            conn.close()
        assert seen_as_role >= 5 + 1  # the others, and its own
    finally:
        for other in others:
            other.close()
        env.server.execute(f'DROP ROLE "{role}"')
