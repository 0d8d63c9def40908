"""A migration's temporary files (the source's password, the schema dump): gone when a stage ends,
however it ends; what a killed process left, removed by the next stage (only its own)."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import psycopg2
import pytest
from observe import wait_until

from airflow_pool_provider.migration import stages
from airflow_pool_provider.migration.request import MigrationRequest
from airflow_pool_provider.pool import ConnectionPool


def _folder_of(pid: int) -> Path:
    """A folder named as a process ``pid`` of this host names its password file's."""
    path = Path(tempfile.mkdtemp(prefix=f"pool-provider-pgpass-{pid}@{socket.gethostname()}."))
    (path / "pgpass").write_text("*:*:*:*:secret\n")
    return path


@pytest.fixture
def source(migration_databases):
    """The migration's databases, the source with one table."""
    src, dst = migration_databases
    with src.cursor() as cur:
        cur.execute("CREATE TABLE customers (id int PRIMARY KEY)")
    return src, dst


def test_the_next_stage_removes_what_a_killed_process_left_and_keeps_a_live_ones(source):
    src, dst = source
    ended = subprocess.Popen(["true"])
    ended.wait()
    living = subprocess.Popen(["sleep", "60"])
    left, kept = _folder_of(ended.pid), _folder_of(living.pid)
    source_pool = ConnectionPool(lambda: psycopg2.connect(src.dsn), max_size=2)
    target_pool = ConnectionPool(lambda: psycopg2.connect(dst.dsn), max_size=2)
    request = MigrationRequest(tables=("customers",), run_id="run-1").resolved("leftovers")
    connect = psycopg2.extensions.parse_dsn(src.dsn)
    m = stages.Migration(request, source_pool, target_pool, connect, logging.getLogger("test"), 600.0)
    try:
        stages.pre_data(m)
        assert not left.exists()  # its process is gone: removed
        assert (kept / "pgpass").exists()  # its process lives: kept
    finally:
        m.snapshots.release()
        source_pool.close()
        target_pool.close()
        living.kill()
        living.wait()
        for path in (left, kept):
            subprocess.run(["rm", "-rf", str(path)], check=True)


#: A stage's dump, in a process of its own; ``handler``: Airflow's way (a handler that returns) or none.
_DUMP = """
import signal, sys, tempfile
from pathlib import Path
import psycopg2
from airflow_pool_provider.migration import catalog, schema, tools
if sys.argv[2] == "airflow":
    signal.signal(signal.SIGTERM, lambda *_: print("on_kill", flush=True))
connect = dict(psycopg2.extensions.parse_dsn(sys.argv[1]), password="not needed")
with psycopg2.connect(sys.argv[1]) as conn, conn.cursor() as cur:
    found = tools.find_tools(tools.server_major(cur), tools.server_major(cur))
    source = catalog.load(cur, ("public",))
with tempfile.TemporaryDirectory(prefix="pool-provider-test-dump-") as folder:
    print(folder, flush=True)
    sys.stdin.readline()  # the catalog is read: the test takes its lock now
    schema.dump(found, connect, source, None, Path(folder))
"""


def _ours() -> set[Path]:
    return {p for p in Path(tempfile.gettempdir()).glob("pool-provider-*") if p.lstat().st_uid == os.getuid()}


@pytest.mark.parametrize("handler", ["none", "airflow"])
def test_a_dump_stopped_by_sigterm_leaves_no_password_file_nor_dump(source, pg_server, handler):
    src, _ = source
    locker = psycopg2.connect(pg_server.dsn(src.info.dbname))
    before = _ours()
    try:
        dump = subprocess.Popen(
            [sys.executable, "-c", _DUMP, pg_server.dsn(src.info.dbname), handler],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            dump_folder = Path(dump.stdout.readline().strip())
            with locker.cursor() as cur:  # pg_dump waits for this lock: it is stopped mid-dump
                cur.execute("LOCK TABLE customers IN ACCESS EXCLUSIVE MODE")
            dump.stdin.write("go\n")
            dump.stdin.flush()

            def waiting() -> bool:
                with src.cursor() as cur:  # not the locker's transaction: it sees one picture of the activity
                    cur.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND application_name = 'pg_dump' "
                        "AND wait_event_type = 'Lock'",
                        (src.info.dbname,),
                    )
                    return cur.fetchone()[0] > 0

            wait_until(waiting, timeout=30, what="pg_dump to wait for the lock")
            passfiles = [p / "pgpass" for p in _ours() - before if (p / "pgpass").exists()]
            assert passfiles, "the dump's password file"
            dump.send_signal(signal.SIGTERM)
            out, err = dump.communicate(timeout=30)
        finally:
            dump.kill()
            dump.wait()
        assert dump.returncode != 0
        if handler == "airflow":  # pg_dump was ended, then the task's own handler ran (on_kill)
            assert "on_kill" in out and "pg_dump: terminated" in err
        assert not [p for p in passfiles if p.exists()]  # the password is not left behind
        assert not dump_folder.exists()  # nor the dump
    finally:
        locker.close()
