"""A migration under faults and load: its task process killed in the data stage and in the
post-data stage, then run again; and a source written to while it is migrated."""

from __future__ import annotations

import threading
import time

import psycopg2
import pytest
from copy_helpers import chunks_done, ledger_counts
from dag_process import DagTestProcess
from dag_runs import load_dag, run_dag
from observe import wait_until

from airflow_pool_provider.testing.data import table_digest
from airflow_pool_provider.testing.legacy_db import TABLES


@pytest.fixture
def legacy_scale() -> float:
    return 0.05  # about 53,000 rows


def _one(conn, query, params=None):
    with conn.cursor() as cur:
        cur.execute(query, params)
        row = cur.fetchone()
    return row[0] if row else None


def _rows(conn, query, params=None):
    with conn.cursor() as cur:
        cur.execute(query, params)
        return cur.fetchall()


def _kill_when(run: DagTestProcess, ready, what: str) -> None:
    try:
        wait_until(lambda: ready() or run.process.poll() is not None, timeout=120, what=what)
        assert run.process.poll() is None, f"the run ended before {what}:\n{run.output[-3000:]}"
        run.kill_group()
    finally:
        run.stop()


def _assert_migrated(src, dst) -> None:
    for table in TABLES:
        assert table_digest(dst, table, key=None) == table_digest(src, table, key=None), table


@pytest.mark.parametrize("stage", ["data", "post_data"])
def test_a_migration_killed_in_a_stage_completes_exactly_once_when_run_again(airflow_db, legacy, stage):
    src, dst = legacy
    conf = {"chunk_size": 200}
    first = DagTestProcess("migrate_tables", conf)
    if stage == "data":

        def some_chunks_done() -> bool:
            # Every leaf's chunks are planned before the first is copied: once one is done, the
            # count of chunks is the whole migration's (read earlier, it may be one table's).
            counts = ledger_counts(dst)
            return counts is not None and 5 <= counts.done < counts.chunks - 5

        _kill_when(first, some_chunks_done, "some chunks were copied")
        done = chunks_done(dst)
        assert 5 <= done < ledger_counts(dst).chunks
    else:
        _kill_when(
            first,
            lambda: first.seen(r"running task <TaskInstance: migrate_tables\.post_data") is not None,
            "the post-data stage started",
        )
        counts = ledger_counts(dst)
        assert counts.chunks - counts.done == 0  # no chunk left unfinished

    again, report = run_dag(load_dag("migrate_tables", "migrate_tables.py"), conf, task_id="verify")
    assert again.state == "success" and report["verified"]
    _assert_migrated(src, dst)  # nothing lost, nothing doubled
    fks = _one(
        dst,
        "SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND convalidated "
        "AND connamespace = 'public'::regnamespace AND conparentid = 0",
    )
    assert fks == _one(
        src,
        "SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND conparentid = 0 "
        "AND connamespace = 'public'::regnamespace",
    )


def _write_while_migrating(src_dsn: str, stop: threading.Event, counts: dict) -> None:
    """A writer: new orders with their items (one transaction each), and updated totals."""
    conn = psycopg2.connect(src_dsn)
    try:
        while not stop.is_set():
            with conn, conn.cursor() as cur:
                cur.execute("INSERT INTO orders (customer_id, ordered_at, total) VALUES (1, now(), 10) RETURNING id")
                order = cur.fetchone()[0]
                cur.execute("INSERT INTO order_items SELECT %s, g, 1, 1, 5 FROM generate_series(1, 3) g", (order,))
                cur.execute("UPDATE orders SET total = total + 1 WHERE id = (SELECT max(id) - 100 FROM orders)")
                cur.execute("UPDATE customers SET note = 'touched ' || now() WHERE id = 1 + %s %% 500", (order,))
            counts["orders"] = counts.get("orders", 0) + 1
            time.sleep(0.005)
    finally:
        conn.close()


def test_a_source_written_to_during_the_migration_is_copied_as_of_one_instant(airflow_db, legacy, pg_server):
    src, dst = legacy
    stop, counts = threading.Event(), {}
    writer = threading.Thread(target=_write_while_migrating, args=(pg_server.dsn(src.info.dbname), stop, counts))
    writer.start()
    try:
        run, report = run_dag(load_dag("migrate_tables", "migrate_tables.py"), {"chunk_size": 500}, task_id="verify")
    finally:
        stop.set()
        writer.join(30)
    assert counts.get("orders", 0) > 20, "the writer did not write during the migration"
    assert run.state == "success" and report["verified"] and report["one_instant"]
    # The writer kept adding orders: the target has fewer than the source has now...
    assert _one(dst, "SELECT count(*) FROM orders") < _one(src, "SELECT count(*) FROM orders")
    # ...and every order in the target came with all its items, as of one instant: the foreign
    # keys validated, and no order has fewer items than the source gives it.
    target_items = dict(_rows(dst, "SELECT order_id, count(*) FROM order_items GROUP BY 1"))
    source_items = dict(
        _rows(
            src, "SELECT order_id, count(*) FROM order_items WHERE order_id = ANY(%s) GROUP BY 1", (list(target_items),)
        )
    )
    assert target_items == source_items
    assert (
        _one(
            dst, "SELECT count(*) FROM orders o WHERE NOT EXISTS (SELECT 1 FROM order_items i WHERE i.order_id = o.id)"
        )
        == 0
    )  # every order has its items
