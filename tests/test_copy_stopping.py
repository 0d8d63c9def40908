"""A copy stops when told: on Airflow's execution_timeout, on SIGTERM (on_kill), on Ctrl-C, on
stop() from another thread, and when one chunk fails. In every case no new chunk starts, running
statements are cancelled on both servers, the copy ends within about two seconds, nothing
commits afterwards, and a resume with the same copy_id finishes the table exactly once.

The target is slowed down by a statement trigger that sleeps, so that chunks are always running
when the stop comes.
"""

from __future__ import annotations

import signal
import threading
import time

import psycopg2
import pytest
from copy_helpers import chunks_done
from dag_process import DagTestProcess
from observe import wait_until

from airflow_pool_provider.copy import CopySpec, CopyStopped, TableCopy
from airflow_pool_provider.copy.ledger import CHUNK_LEDGER_TABLE
from airflow_pool_provider.errors import ChunkFailed
from airflow_pool_provider.pool import ConnectionPool
from airflow_pool_provider.testing.data import table_digest

ROWS, CHUNK = 15_000, 500  # 30 chunks
SLOW_TARGET = """
CREATE FUNCTION slow_statement() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_sleep(%s); RETURN NULL; END $$;
CREATE TRIGGER slow_statement AFTER INSERT ON events FOR EACH STATEMENT EXECUTE FUNCTION slow_statement();
"""
#: A stopped copy's task must end within this many seconds of the stop.
STOP_WITHIN = 2.0


@pytest.fixture
def tables(make_events):
    """A source of 30 chunks and an empty target whose every COPY takes at least 0.5 s."""
    src_db, dst_db, src, dst = make_events(ROWS)
    dst.autocommit = True
    with dst.cursor() as cur:
        cur.execute(SLOW_TARGET, (0.5,))
    return src_db, dst_db, src, dst


def _target_rows(dst) -> int:
    with dst.cursor() as cur:
        cur.execute("SELECT count(*) FROM events")
        return cur.fetchone()[0]


def _busy_backends(pg_server, *apps: str) -> int:
    """Backends of ``apps`` that are running a statement (or are in a transaction)."""
    rows = pg_server.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = ANY(%s) AND state <> 'idle'",
        (list(apps),),
    )
    return rows[0][0]


def _assert_stopped_for_good(pg_server, dst, copy_id: str, apps: list[str]) -> int:
    """Nothing of the copy runs or commits any more; returns the chunks it finished."""
    done = chunks_done(dst, copy_id)
    assert 0 < done < ROWS // CHUNK, f"{done} chunks done: the stop came too late or too early to show anything"
    assert _target_rows(dst) == done * CHUNK  # exactly the ledger's chunks are in the target
    wait_until(lambda: _busy_backends(pg_server, *apps) == 0, timeout=STOP_WITHIN, what="no busy backends")
    time.sleep(1.0)
    assert chunks_done(dst, copy_id) == done, "chunks committed after the copy was stopped"
    return done


def _resume_and_check(pg_server, src_db, dst_db, src, dst, copy_id: str, done_before: int) -> None:
    with dst.cursor() as cur:
        cur.execute("DROP TRIGGER slow_statement ON events")
    source = ConnectionPool(lambda: psycopg2.connect(pg_server.dsn(src_db)), name="source")
    target = ConnectionPool(lambda: psycopg2.connect(pg_server.dsn(dst_db)), name="target")
    try:
        summary = TableCopy(source, target, CopySpec("events", chunk_size=CHUNK), copy_id=copy_id).run()
    finally:
        source.close()
        target.close()
    assert summary.chunks_skipped == done_before and summary.total_rows == ROWS
    dst.autocommit = False
    assert table_digest(dst) == table_digest(src)  # exactly once: nothing lost, nothing doubled


def _run_copy_dag(make_conn_id, src_db, dst_db, copy_id: str) -> tuple[DagTestProcess, list[str]]:
    src_id, dst_id = make_conn_id(src_db), make_conn_id(dst_db)
    conf = {"source_conn_id": src_id, "target_conn_id": dst_id, "copy_id": copy_id}
    return DagTestProcess("copy_with_timeout", conf), [f"test-{src_id}", f"test-{dst_id}"]


def test_execution_timeout_stops_the_copy_within_two_seconds(airflow_db, pg_server, tables, make_conn_id):
    src_db, dst_db, src, dst = tables
    run, apps = _run_copy_dag(make_conn_id, src_db, dst_db, "timed-out")
    try:
        code = run.wait(120)
        timed_out = run.seen(r"Process timed out")
        ended = run.seen(r"Task instance state updated.*new_state=failed")
        assert code != 0 and timed_out is not None and ended is not None, run.output[-4000:]
        assert ended - timed_out < STOP_WITHIN, f"the task ended {ended - timed_out:.1f} s after the timeout"
        assert "stopped (AirflowTaskTimeout" in run.output and "resume with copy_id 'timed-out'" in run.output
    finally:
        run.stop()
    done = _assert_stopped_for_good(pg_server, dst, "timed-out", apps)
    _resume_and_check(pg_server, src_db, dst_db, src, dst, "timed-out", done)


def test_sigterm_runs_on_kill_and_stops_the_copy_within_two_seconds(airflow_db, pg_server, tables, make_conn_id):
    src_db, dst_db, src, dst = tables
    run, apps = _run_copy_dag(make_conn_id, src_db, dst_db, "terminated")
    try:
        wait_until(lambda: chunks_done(dst, "terminated") >= 2, timeout=60, what="two chunks done")
        sent = run.signal(signal.SIGTERM)  # what "mark failed" and the supervisor send
        code = run.wait(60)
        ended = run.seen(r"Task instance state updated.*new_state=failed")
        assert code != 0 and ended is not None, run.output[-4000:]
        assert ended - sent < STOP_WITHIN, f"the task ended {ended - sent:.1f} s after SIGTERM"
        assert "the task was told to stop (SIGTERM" in run.output and "CopyStopped" in run.output
    finally:
        run.stop()
    done = _assert_stopped_for_good(pg_server, dst, "terminated", apps)
    _resume_and_check(pg_server, src_db, dst_db, src, dst, "terminated", done)


# -- the engine on its own: stop(), Ctrl-C, a failing chunk -------------------------------------


def _pools(pg_server, src_db, dst_db, source_user=None):
    """Pools of both databases; the source's connect as ``source_user`` if given (a row filter's reader)."""
    user = {"user": source_user} if source_user else {}
    source = ConnectionPool(
        lambda: psycopg2.connect(pg_server.dsn(src_db, application_name="stop-source", **user)), name="source"
    )
    target = ConnectionPool(
        lambda: psycopg2.connect(pg_server.dsn(dst_db, application_name="stop-target")), name="target"
    )
    return source, target


def _copy_in_thread(copy: TableCopy) -> tuple[threading.Thread, dict]:
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["summary"] = copy.run()
        except BaseException as exc:  # noqa: BLE001 - asserted by the test
            outcome["error"] = exc
        outcome["ended"] = time.monotonic()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def test_stop_from_another_thread_cancels_both_sides(pg_server, tables, make_reader):
    src_db, dst_db, src, dst = tables
    source, target = _pools(pg_server, src_db, dst_db, make_reader(src_db))
    # The source is slow too: reading a chunk takes a second. (Only chunk reads set
    # extra_float_digits to 3, so planning, which reads every row, stays fast.)
    slow_read = "pg_sleep(CASE WHEN current_setting('extra_float_digits') = '3' THEN 0.002 ELSE 0 END) IS NOT NULL"
    spec = CopySpec("events", chunk_size=CHUNK, parallelism=2, where=slow_read)
    copy = TableCopy(source, target, spec, copy_id="stopped")
    thread, outcome = _copy_in_thread(copy)
    try:
        wait_until(lambda: _busy_backends(pg_server, "stop-source") >= 2, timeout=30, what="two source COPYs")
        stopped_at = time.monotonic()
        copy.stop("the test says stop")
        thread.join(30)
        assert not thread.is_alive()
        assert isinstance(outcome.get("error"), CopyStopped), outcome
        assert outcome["ended"] - stopped_at < STOP_WITHIN
        assert _busy_backends(pg_server, "stop-source", "stop-target") == 0
        assert source.stats()["in_use"] == target.stats()["in_use"] == 0
    finally:
        source.close()
        target.close()
    assert _target_rows(dst) == chunks_done(dst, "stopped") * CHUNK


def test_ctrl_c_stops_the_copy_and_raises_keyboard_interrupt(pg_server, tables):
    src_db, dst_db, src, dst = tables
    source, target = _pools(pg_server, src_db, dst_db)
    copy = TableCopy(source, target, CopySpec("events", chunk_size=CHUNK), copy_id="interrupted")
    main = threading.main_thread().ident
    pressed: list[float] = []

    def press_ctrl_c() -> None:
        wait_until(lambda: chunks_done(dst, "interrupted") >= 1, timeout=30, what="a chunk done")
        pressed.append(time.monotonic())
        signal.pthread_kill(main, signal.SIGINT)

    presser = threading.Thread(target=press_ctrl_c, daemon=True)
    presser.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            copy.run()
        ended = time.monotonic()
    finally:
        presser.join(10)
        source.close()
        target.close()
    assert ended - pressed[0] < STOP_WITHIN
    assert copy.stopping.reason == "KeyboardInterrupt"
    wait_until(
        lambda: _busy_backends(pg_server, "stop-source", "stop-target") == 0,
        timeout=STOP_WITHIN,
        what="no busy backends",
    )
    done = chunks_done(dst, "interrupted")
    assert done < ROWS // CHUNK and _target_rows(dst) == done * CHUNK


def test_a_failing_chunk_cancels_the_running_ones_at_once(pg_server, tables, make_reader):
    src_db, dst_db, src, dst = tables
    with dst.cursor() as cur:  # the chunk with id 5200 fails at once; every other COPY takes 3 s
        cur.execute("""
            CREATE OR REPLACE FUNCTION slow_statement() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN PERFORM pg_sleep(3); RETURN NULL; END $$;
            CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.id = 5200 THEN RAISE EXCEPTION 'refusing %', NEW.id USING ERRCODE = 'check_violation'; END IF;
                RETURN NEW;
            END $$;
            CREATE TRIGGER refuse BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION refuse();
        """)
    source, target = _pools(pg_server, src_db, dst_db, make_reader(src_db))
    spec = CopySpec("events", chunk_size=CHUNK, parallelism=3, key=["id"], where="id > 4500")
    started = time.monotonic()
    try:
        with pytest.raises(ChunkFailed, match="refusing 5200"):
            TableCopy(source, target, spec, copy_id="one-fails").run()
        took = time.monotonic() - started
    finally:
        source.close()
        target.close()
    # Chunk 1 (ids 4501-5000) and chunk 3 were sleeping in their 3 s trigger: cancelled, not waited for.
    assert took < 3.0, f"the copy took {took:.1f} s: it waited for the running chunks"
    assert chunks_done(dst, "one-fails") == 0 and _target_rows(dst) == 0


def test_a_stop_while_planning_cancels_the_planning_query(pg_server, tables, make_reader):
    src_db, dst_db, src, dst = tables
    source, target = _pools(pg_server, src_db, dst_db, make_reader(src_db))
    # Planning reads every row through the filter; here each row takes a millisecond (15 s in all).
    slow_plan = "pg_sleep(CASE WHEN current_setting('extra_float_digits') = '3' THEN 0 ELSE 0.001 END) IS NOT NULL"
    copy = TableCopy(source, target, CopySpec("events", chunk_size=CHUNK, where=slow_plan), copy_id="planning")
    thread, outcome = _copy_in_thread(copy)
    try:
        wait_until(lambda: _busy_backends(pg_server, "stop-source") >= 1, timeout=30, what="planning")
        time.sleep(0.5)
        stopped_at = time.monotonic()
        copy.stop("stopped while planning")
        thread.join(30)
        assert isinstance(outcome.get("error"), CopyStopped), outcome
        assert outcome["ended"] - stopped_at < STOP_WITHIN
        assert _busy_backends(pg_server, "stop-source", "stop-target") == 0
    finally:
        source.close()
        target.close()
    assert chunks_done(dst, "planning") == 0 and _target_rows(dst) == 0


def test_a_stop_between_many_short_planning_queries_commits_no_truncate(pg_server, make_events):
    # Planning 200,000 rows in chunks of 10 is 20,000 short probes: a single cancel lands between
    # two of them and is ignored, so the stop must be repeated and checked between probes.
    src_db, dst_db, src, dst = make_events(200_000)
    with dst.cursor() as cur:
        cur.execute("INSERT INTO events SELECT * FROM events LIMIT 0")
        cur.execute("INSERT INTO events VALUES (-1, 1, 'keep', '{}', 1, now(), 'keep me')")
    dst.commit()
    source, target = _pools(pg_server, src_db, dst_db)
    copy = TableCopy(source, target, CopySpec("events", chunk_size=10, mode="replace"), copy_id="short-probes")
    thread, outcome = _copy_in_thread(copy)
    try:
        time.sleep(1.0)
        assert thread.is_alive(), "planning ended before the stop: the test proves nothing"
        stopped_at = time.monotonic()
        copy.stop("the task was told to stop")
        thread.join(30)
        assert isinstance(outcome.get("error"), CopyStopped), outcome
        assert outcome["ended"] - stopped_at < STOP_WITHIN
    finally:
        source.close()
        target.close()
    with dst.cursor() as cur:
        cur.execute("SELECT note FROM events")
        assert cur.fetchall() == [("keep me",)]  # replace's TRUNCATE was not committed
        cur.execute("SELECT to_regclass(%s)", (CHUNK_LEDGER_TABLE,))
        assert cur.fetchone()[0] is None or chunks_done(dst, "short-probes") == 0


def test_a_stop_ends_a_workers_wait_for_a_server_that_is_down(own_server, pg_server, make_events):
    src_db, dst_db, src, dst = make_events(20_000, source_server=own_server.server)
    src.close()
    dst.autocommit = True
    with dst.cursor() as cur:
        cur.execute(SLOW_TARGET, (0.3,))
    source = ConnectionPool(lambda: psycopg2.connect(own_server.server.dsn(src_db)), name="source", timeout=30)
    target = ConnectionPool(lambda: psycopg2.connect(pg_server.dsn(dst_db)), name="target")
    copy = TableCopy(source, target, CopySpec("events", chunk_size=CHUNK), copy_id="server-down")
    thread, outcome = _copy_in_thread(copy)
    try:
        wait_until(lambda: chunks_done(dst, "server-down") >= 1, timeout=30, what="a chunk done")
        own_server.stop("immediate")  # the workers now wait, with backoff, for the source to return
        time.sleep(1.0)
        stopped_at = time.monotonic()
        copy.stop("the task was told to stop")
        thread.join(30)
        assert isinstance(outcome.get("error"), CopyStopped), outcome
        assert outcome["ended"] - stopped_at < STOP_WITHIN, "the stop waited for the pool's 30 s timeout"
    finally:
        source.close()
        target.close()
