"""A migration under faults and load: its task process killed in the data stage and in the
post-data stage, then run again; a task and its snapshot's holder lost mid-table; and a source
written to while it is migrated."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

import psycopg2
import pytest
from copy_helpers import chunks_done, ledger_counts
from dag_process import DagTestProcess
from dag_runs import load_dag, run_dag
from migration_tasks import copy_all, migration_task
from observe import wait_until

from airflow_pool_provider.copy.names import TableName
from airflow_pool_provider.errors import CopyError, MigrationMistake
from airflow_pool_provider.migration import stages
from airflow_pool_provider.migration.request import MigrationRequest
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


@contextmanager
def _copied(src, dst, request: MigrationRequest) -> Iterator[stages.Migration]:
    """A task that took the snapshot and copied every table; its snapshot is released at the end."""
    with migration_task(src.dsn, dst.dsn, request.resolved("faults")) as m:
        try:
            m.snapshots.ensure()
            stages.pre_data(m)
            copy_all(m)
            yield m
        finally:
            m.snapshots.release()


def _lose_holder(src, holder) -> None:
    """End the process holding the snapshot (as a job ending sessions idle in transaction would)."""
    os.kill(holder.pid, signal.SIGKILL)
    wait_until(
        lambda: not _one(src, "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (holder.backend_pid,)),
        timeout=30,
        what="the holder's backend to end",
    )


#: The target refuses one row of customers' last chunk: the chunks before it commit, then the copy fails.
_REFUSE_LAST_CUSTOMER = """
CREATE FUNCTION refuse_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.id = {id} THEN RAISE EXCEPTION 'row refused by the test'; END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER refuse_row BEFORE INSERT ON customers FOR EACH ROW EXECUTE FUNCTION refuse_row();
"""


@pytest.mark.parametrize("legacy_scale", [0.01])  # 500 customers
def test_a_table_read_on_through_a_new_snapshot_after_its_task_and_holder_were_lost_is_not_one_instant(legacy):
    src, dst = legacy
    request = MigrationRequest(tables=("customers",), chunk_size=100, parallelism=1, run_id="run-1")
    request = request.resolved("lost-mid-table")
    with migration_task(src.dsn, dst.dsn, request) as first:
        first.snapshots.ensure()
        stages.pre_data(first)
        with dst.cursor() as cur:
            cur.execute(_REFUSE_LAST_CUSTOMER.format(id=_one(src, "SELECT max(id) FROM customers")))
        with pytest.raises(CopyError, match="row refused by the test"):
            copy_all(first)  # the task fails mid-table...
        holder = first.snapshots.current()
    assert 0 < chunks_done(dst) < ledger_counts(dst).chunks
    _lose_holder(src, holder)  # ...and its snapshot's holder is lost too
    with dst.cursor() as cur:
        cur.execute("DROP TRIGGER refuse_row ON customers")

    with migration_task(src.dsn, dst.dsn, request) as again:
        try:
            copy_all(again)  # the rest of the table, through a new snapshot
            stages.post_data(again)
            report = stages.verify_and_report(again)
        finally:
            again.snapshots.release()
    assert again.snapshots.current().epoch == 2
    assert report.verified and not report.one_instant
    assert [(t.table, t.snapshot_epochs) for t in report.tables] == [('"public"."customers"', [1, 2])]
    assert "NOT one instant" in report.table()
    assert table_digest(dst, "customers", key=None) == table_digest(src, "customers", key=None)


@pytest.mark.parametrize("legacy_scale", [0.01])
def test_a_migration_without_faults_reads_every_table_at_one_instant(legacy):
    src, dst = legacy
    request = MigrationRequest(tables=("customers", "products"), chunk_size=100, run_id="run-1")
    with _copied(src, dst, request) as m:
        report = stages.verify_and_report(m)
    assert report.one_instant and "one instant" not in report.table()
    assert {t.table: t.snapshot_epochs for t in report.tables} == {
        '"public"."customers"': [1],
        '"public"."products"': [1],
    }


def _copy_tables(m: stages.Migration, tables: set[str]) -> None:
    """Copy only the chunks of ``tables`` (a task that copied those, then was lost)."""
    for batch in stages.plan_data(m):
        parts = [p for p in batch.parts if TableName.parse(p.table).name in tables]
        if parts:
            stages.copy_data(m, replace(batch, parts=parts))


def _foreign_key(conn, name: str) -> bool | None:
    """Whether the target's foreign key ``name`` is validated; None: there is none."""
    return _one(conn, "SELECT convalidated FROM pg_constraint WHERE conname = %s AND contype = 'f'", (name,))


@pytest.mark.parametrize("legacy_scale", [0.01])
def test_a_foreign_key_left_unchecked_by_a_failed_or_killed_run_is_checked_when_run_again(legacy):
    src, dst = legacy
    request = MigrationRequest(tables=("customers", "orders"), chunk_size=500, run_id="run-1")
    with _copied(src, dst, request) as m:
        with dst.cursor() as cur:  # a row that breaks the key: its check fails, after it was added
            cur.execute("INSERT INTO orders (id, customer_id, ordered_at) VALUES (-1, -1, now())")
        with pytest.raises(psycopg2.errors.ForeignKeyViolation, match="orders_customer_id_fkey"):
            stages.post_data(m)
        assert _foreign_key(dst, "orders_customer_id_fkey") is False  # added NOT VALID, as a kill leaves it
        with dst.cursor() as cur:
            cur.execute("DELETE FROM orders WHERE id = -1")
        stages.post_data(m)  # run again: the key is checked, not added twice
    assert _foreign_key(dst, "orders_customer_id_fkey") is True


@pytest.mark.parametrize("legacy_scale", [0.01])
def test_a_foreign_key_broken_by_a_lost_snapshot_says_so_and_what_to_do(legacy):
    src, dst = legacy
    request = MigrationRequest(tables=("customers", "orders"), chunk_size=500, run_id="run-1")
    request = request.resolved("faults")
    with migration_task(src.dsn, dst.dsn, request) as first:
        first.snapshots.ensure()
        stages.pre_data(first)
        _copy_tables(first, {"customers"})
        holder = first.snapshots.current()
    _lose_holder(src, holder)
    with src.cursor() as cur:  # the source goes on: a new customer with an order
        cur.execute("INSERT INTO customers (email, name) VALUES ('late@example.com', 'Late') RETURNING id")
        cur.execute("INSERT INTO orders (customer_id, ordered_at) VALUES (%s, now())", (cur.fetchone()[0],))

    with migration_task(src.dsn, dst.dsn, request) as again:
        try:
            copy_all(again)  # orders, through a new snapshot
            with pytest.raises(MigrationMistake) as raised:
                stages.post_data(again)
        finally:
            again.snapshots.release()
    message = str(raised.value)
    assert "foreign key orders_customer_id_fkey on" in message and "snapshot was lost" in message
    assert '\'"public"."customers"\': [1]' in message and '\'"public"."orders"\': [2]' in message
    assert "mode='replace'" in message
