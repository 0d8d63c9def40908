"""Faults during a copy: backends killed mid-chunk, the task process killed hard and run again."""

from __future__ import annotations

import threading
import time

import psycopg2
import pytest
from copy_helpers import chunks_done, ledger_counts
from dag_process import DagTestProcess

from airflow_pool_provider.copy import CopySpec, TableCopy
from airflow_pool_provider.pool import ConnectionPool
from airflow_pool_provider.testing.data import table_digest

SLOW_TARGET = """
CREATE FUNCTION slow_statement() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_sleep(%s); RETURN NULL; END $$;
CREATE TRIGGER slow_statement AFTER INSERT ON events FOR EACH STATEMENT EXECUTE FUNCTION slow_statement();
"""


def _terminate(pg_server, application_name: str, query_like: str, times: int, stop: threading.Event) -> list[int]:
    """Kill up to ``times`` backends of ``application_name`` while they run ``query_like``."""
    killed: list[int] = []
    admin = pg_server.admin()
    try:
        with admin.cursor() as cur:
            while len(killed) < times and not stop.is_set():
                cur.execute(
                    "SELECT pid FROM pg_stat_activity WHERE application_name = %s AND state = 'active' "
                    "AND query LIKE %s LIMIT 1",
                    (application_name, query_like),
                )
                row = cur.fetchone()
                if row:
                    cur.execute("SELECT pg_terminate_backend(%s)", row)
                    killed.append(row[0])
                    time.sleep(0.1)
                else:
                    time.sleep(0.002)
    finally:
        admin.close()
    return killed


@pytest.mark.parametrize(("side", "rows"), [("target", 30_000), ("source", 6_000)])
def test_backend_terminated_mid_chunk_is_retried_and_copy_ends_exactly_once(
    pg_server, make_events, make_reader, side, rows
):
    src_db, dst_db, src, dst = make_events(rows)
    reader = make_reader(src_db)  # the source side's copy has a row filter
    with dst.cursor() as cur:
        cur.execute(SLOW_TARGET, (0.03,))
    dst.commit()
    source = ConnectionPool(
        lambda: psycopg2.connect(pg_server.dsn(src_db, application_name="copy-source", user=reader)), name="source"
    )
    target = ConnectionPool(
        lambda: psycopg2.connect(pg_server.dsn(dst_db, application_name="copy-target")), name="target"
    )
    pattern = "COPY%FROM STDIN%" if side == "target" else "COPY (SELECT%"
    stop = threading.Event()
    killed: list[int] = []
    killer = threading.Thread(target=lambda: killed.extend(_terminate(pg_server, f"copy-{side}", pattern, 2, stop)))
    killer.start()
    try:
        # On the source side the filter sleeps a little per row, so a COPY can be caught running.
        where = "pg_sleep(0.0001) IS NOT NULL" if side == "source" else None
        summary = TableCopy(
            source, target, CopySpec("events", chunk_size=1000, parallelism=2, where=where), copy_id="faults"
        ).run()
    finally:
        stop.set()
        killer.join(10)
    assert len(killed) == 2, "the test did not manage to kill two backends mid-COPY"
    assert table_digest(dst) == table_digest(src)  # nothing lost, nothing doubled
    assert summary.rows == rows and summary.total_rows == rows
    assert ledger_counts(dst, "faults") == (rows // 1000, rows // 1000, rows)
    pool = target if side == "target" else source
    assert pool.stats()["discarded_broken"] >= 1  # the dead connections never went back into use
    source.close()
    target.close()


def test_chunk_that_keeps_failing_fails_the_copy_and_leaves_nothing_behind(pg_server, make_events):
    src_db, dst_db, src, dst = make_events(3000)
    with dst.cursor() as cur:  # every attempt at the chunk holding id 1500 loses its connection
        cur.execute("""
            CREATE FUNCTION drop_out() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.id = 1500 THEN PERFORM pg_terminate_backend(pg_backend_pid()); END IF;
                RETURN NEW;
            END $$;
            CREATE TRIGGER drop_out BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION drop_out();
        """)
    dst.commit()
    source = ConnectionPool(lambda: psycopg2.connect(pg_server.dsn(src_db)), name="source")
    target = ConnectionPool(lambda: psycopg2.connect(pg_server.dsn(dst_db)), name="target")
    spec = CopySpec("events", chunk_size=1000, parallelism=1, max_chunk_retries=2)
    from airflow_pool_provider.copy import CopyError

    with pytest.raises(CopyError, match="chunk 2 failed 3 time"):
        TableCopy(source, target, spec, copy_id="doomed").run()
    with dst.cursor() as cur:
        cur.execute("SELECT count(*) FROM events WHERE id > 1000 AND id <= 2000")
        assert cur.fetchone()[0] == 0  # the failed chunk left no row
        cur.execute("SELECT count(*) FROM events")
        assert cur.fetchone()[0] == 1000  # only chunk 0 committed; the copy stopped after chunk 1
    dst.commit()
    assert ledger_counts(dst, "doomed")[:2] == (1, 3)
    source.close()
    target.close()


def test_task_process_killed_hard_then_run_again_resumes_without_loss_or_duplicates(
    airflow_db, pg_server, make_events, make_conn_id
):
    src_db, dst_db, src, dst = make_events(40_000)
    with dst.cursor() as cur:
        cur.execute(SLOW_TARGET, (0.05,))  # 80 chunks of 500 rows: at least 4 s of copying
    dst.commit()
    conf = {
        "source_conn_id": make_conn_id(src_db),
        "target_conn_id": make_conn_id(dst_db),
        "chunk_size": 500,
        "parallelism": 2,
        "copy_id": "killed-task",
    }
    first = DagTestProcess("copy_table_test", conf)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and first.process.poll() is None:
            if chunks_done(dst, "killed-task") >= 5:
                break
            time.sleep(0.05)
        assert first.process.poll() is None, "the first run ended before it could be killed"
        first.kill_group()
    finally:
        first.stop()
    time.sleep(0.5)
    done_before, planned, _ = ledger_counts(dst, "killed-task")
    assert 5 <= done_before < planned == 80
    with dst.cursor() as cur:
        cur.execute("SELECT count(*) FROM events")
        assert cur.fetchone()[0] == done_before * 500  # exactly the ledger's chunks are in the target
    dst.commit()

    second = DagTestProcess("copy_table_test", conf)
    try:
        assert second.wait(300) == 0, second.output[-6000:]
    finally:
        second.stop()
    assert table_digest(dst) == table_digest(src)  # no row lost or doubled
    assert ledger_counts(dst, "killed-task") == (80, 80, 40_000)
    assert "resumes" in second.output and "NEW snapshot" in second.output
