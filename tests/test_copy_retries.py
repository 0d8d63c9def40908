"""Mistakes fail once; faults are retried. A chunk is tried again only for transient faults; a
lost source snapshot is taken anew (and reported); the operator tells Airflow not to retry
mistakes."""

from __future__ import annotations

import threading
import time

import psycopg2
import pytest
from copy_helpers import CopyEnv, chunks_done
from observe import wait_until

from airflow_pool_provider.copy import CopySpec, TableCopy
from airflow_pool_provider.errors import ChunkFailed, CopyError, CopyMistake, Kind, classify
from airflow_pool_provider.pool import ConnectionPool
from airflow_pool_provider.testing.data import table_digest

# The chunk holding id 250 fails the first time it arrives with SQLSTATE {code} (sequences
# ignore rollbacks, so the attempts are counted in fail_once).
FAIL_ONCE = """
CREATE SEQUENCE fail_once;
CREATE FUNCTION fail_once() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.id = 250 AND nextval('fail_once') <= {times} THEN
        RAISE EXCEPTION 'injected failure' USING ERRCODE = '{code}';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER fail_once BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION fail_once();
"""


@pytest.fixture
def env(env: CopyEnv) -> CopyEnv:
    env.note_table(500)
    return env


def _attempts(env: CopyEnv) -> int:
    return env.one("dst", "SELECT last_value FROM fail_once")


@pytest.mark.parametrize("code", ["40001", "40P01", "53300", "57P01"])
def test_a_transient_error_is_retried_and_the_copy_ends_exactly_once(env, code, caplog):
    env.sql("dst", FAIL_ONCE.format(code=code, times=1))
    with caplog.at_level("WARNING"):
        summary = env.copy(CopySpec("t", chunk_size=100, parallelism=1))
    assert summary["rows"] == 500
    assert _attempts(env) == 2  # failed once, then went through
    assert env.digest("dst", order="id") == env.digest("src", order="id")
    assert "retry 1/3" in caplog.text


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        ("53100", Kind.FAULT),
        ("53200", Kind.FAULT),
        ("57014", Kind.FAULT),
        ("42501", Kind.MISTAKE),
        ("23514", Kind.MISTAKE),
    ],
)
def test_a_non_transient_error_fails_the_copy_on_the_first_attempt(env, code, kind, caplog):
    env.sql("dst", FAIL_ONCE.format(code=code, times=1))
    with caplog.at_level("WARNING"), pytest.raises(CopyError, match="chunk 3 .*failed: injected failure") as caught:
        env.copy(CopySpec("t", chunk_size=100, parallelism=1))
    assert _attempts(env) == 1  # not tried again
    assert classify(caught.value) is kind
    assert caught.value.__cause__.pgcode == code
    assert "retry" not in caplog.text and "connection was lost" not in caplog.text
    assert env.count("dst") == 200  # chunks 1 and 2 committed, nothing of chunk 3


def test_a_statement_timeout_is_not_retried(env, caplog):
    env.sql(
        "dst",
        """
        CREATE FUNCTION canceled() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
            RAISE EXCEPTION 'canceling statement due to statement timeout' USING ERRCODE = 'query_canceled';
        END $$;
        CREATE TRIGGER canceled AFTER INSERT ON t FOR EACH STATEMENT EXECUTE FUNCTION canceled();
    """,
    )
    # Canceled as a timeout or a DBA's pg_cancel_backend would (the copy's sessions turn
    # statement_timeout off themselves): a fault, not retried chunk by chunk.
    dsn = env.server.dsn(env.db["dst"])
    source, target = env.pool("src"), ConnectionPool(lambda: psycopg2.connect(dsn), name="target")
    try:
        started = time.monotonic()
        with (
            caplog.at_level("WARNING"),
            pytest.raises(ChunkFailed, match="canceling statement due to statement timeout") as caught,
        ):
            TableCopy(source, target, CopySpec("t", chunk_size=100, parallelism=1), copy_id="timeout").run()
        assert time.monotonic() - started < 1.5  # one attempt, no retries
    finally:
        source.close()
        target.close()
    assert caught.value.__cause__.pgcode == "57014" and classify(caught.value) is Kind.FAULT
    assert "retry" not in caplog.text


def test_a_unique_violation_in_append_mode_is_a_mistake_with_advice(env):
    env.sql("dst", "INSERT INTO t VALUES (250, 'already here')")
    with pytest.raises(CopyError, match="duplicate key value.*use mode='upsert'") as caught:
        env.copy(CopySpec("t", chunk_size=100, parallelism=1))
    assert classify(caught.value) is Kind.MISTAKE


# -- a source that restarts mid-copy: the snapshot is lost and taken anew ------------------------

SLOW_TARGET = """
CREATE FUNCTION slow_statement() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_sleep(0.2); RETURN NULL; END $$;
CREATE TRIGGER slow_statement AFTER INSERT ON events FOR EACH STATEMENT EXECUTE FUNCTION slow_statement();
"""


def _restart_source_mid_copy(own_server, pg_server, make_events, key: bool, caplog):
    """Copy 20 chunks from a private server that restarts after the third chunk."""
    src_db, dst_db, src, dst = make_events(10_000, source_server=own_server.server)
    if not key:
        with src.cursor() as cur:
            cur.execute("ALTER TABLE events DROP CONSTRAINT events_pkey")
        src.commit()
    src.close()
    with dst.cursor() as cur:
        cur.execute(SLOW_TARGET)
    dst.commit()
    source = ConnectionPool(lambda: psycopg2.connect(own_server.server.dsn(src_db)), name="source", timeout=30)
    target = ConnectionPool(lambda: psycopg2.connect(pg_server.dsn(dst_db)), name="target")
    spec = CopySpec("events", chunk_size=500, parallelism=2, mode="replace")
    copy = TableCopy(source, target, spec, copy_id="restarted")

    def restart() -> None:
        wait_until(lambda: chunks_done(dst) >= 3, timeout=60, what="three chunks done")
        own_server.restart()

    restarter = threading.Thread(target=restart, daemon=True)
    restarter.start()
    try:
        with caplog.at_level("WARNING"):
            outcome = copy.run()
        return outcome, dst, own_server.server.dsn(src_db)
    except Exception as exc:  # noqa: BLE001 - returned for the test to assert on
        return exc, dst, own_server.server.dsn(src_db)
    finally:
        restarter.join(60)
        source.close()
        target.close()


def test_a_source_restart_takes_a_new_snapshot_and_the_copy_goes_on(own_server, pg_server, make_events, caplog):
    summary, dst, src_dsn = _restart_source_mid_copy(own_server, pg_server, make_events, True, caplog)
    assert not isinstance(summary, BaseException), summary
    assert summary.snapshots == 2  # reported, not hidden
    assert "was lost" in caplog.text and "NEW snapshot" in caplog.text
    assert "read through 2 snapshots" in caplog.text
    src = psycopg2.connect(src_dsn)
    try:
        assert table_digest(dst) == table_digest(src)  # exactly once
    finally:
        src.close()
        dst.close()


def test_a_keyless_table_fails_with_the_reason_when_its_snapshot_is_lost(own_server, pg_server, make_events, caplog):
    outcome, dst, _ = _restart_source_mid_copy(own_server, pg_server, make_events, False, caplog)
    dst.close()
    assert isinstance(outcome, CopyError), outcome
    assert "page (ctid) ranges that only hold within one snapshot" in str(outcome)
    assert "mode='replace'" in str(outcome)


def test_an_idle_in_transaction_timeout_does_not_end_the_copys_snapshot(pg_server, make_events, caplog):
    src_db, dst_db, src, dst = make_events(6000)
    pg_server.execute(f"ALTER DATABASE {src_db} SET idle_in_transaction_session_timeout = '1s'")
    with dst.cursor() as cur:
        cur.execute(SLOW_TARGET.replace("0.2", "0.4"))  # 12 chunks of 0.4 s: the snapshot idles 2 s
    dst.commit()
    source = ConnectionPool(lambda: psycopg2.connect(pg_server.dsn(src_db)), name="source")
    target = ConnectionPool(lambda: psycopg2.connect(pg_server.dsn(dst_db)), name="target")
    try:
        with caplog.at_level("WARNING"):
            summary = TableCopy(source, target, CopySpec("events", chunk_size=500, parallelism=1), copy_id="idle").run()
    finally:
        source.close()
        target.close()
    assert summary.snapshots == 1 and "was lost" not in caplog.text  # one instant, as promised
    assert table_digest(dst) == table_digest(src)
    src.close()
    dst.close()


def test_a_shared_snapshot_that_cannot_be_replaced_fails_with_its_own_error(pg_server, make_events):
    # A migration's copy joins a snapshot held elsewhere. When that is lost and no new one can be
    # had, the copy fails with that error (a mistake here), not as "stopped".
    src_db, dst_db, src, dst = make_events(6000)
    with dst.cursor() as cur:
        cur.execute(SLOW_TARGET)
    dst.commit()
    holder = psycopg2.connect(pg_server.dsn(src_db))
    with holder.cursor() as cur:
        cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        cur.execute("SELECT pg_export_snapshot()")
        snapshot = cur.fetchone()[0]

    def no_new_snapshot(lost: str) -> str:
        raise CopyMistake(f"no new snapshot for {lost}: the migration was released")

    source = ConnectionPool(lambda: psycopg2.connect(pg_server.dsn(src_db)), name="source")
    target = ConnectionPool(lambda: psycopg2.connect(pg_server.dsn(dst_db)), name="target")
    copy = TableCopy(
        source,
        target,
        CopySpec("events", chunk_size=500, parallelism=1),
        copy_id="shared",
        snapshot=snapshot,
        replace_snapshot=no_new_snapshot,
    )
    ender = threading.Thread(
        target=lambda: (wait_until(lambda: chunks_done(dst) >= 2, timeout=30, what="2 chunks"), holder.close())
    )
    ender.start()
    try:
        with pytest.raises(CopyMistake, match="no new snapshot") as caught:
            copy.run()
    finally:
        ender.join(30)
        source.close()
        target.close()
    assert classify(caught.value) is Kind.MISTAKE
    src.close()
    dst.close()
