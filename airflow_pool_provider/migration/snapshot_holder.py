"""One source snapshot for a whole migration, held by a process of its own.

An exported snapshot lives only as long as the transaction that exported it, and every Airflow
task runs in a process of its own (Local and Celery executors) or one after another in one
process (``airflow dags test``). So neither a task nor a thread can hold it for the others. A
small detached process does, as ``pgcopydb snapshot`` does: it opens a REPEATABLE READ
transaction on the source, exports its snapshot, prints the id and waits, doing nothing, until
the migration releases it (its backend is terminated, by application_name), its connection is
lost, or ``max_seconds`` pass. Tasks on any worker machine join that snapshot by id.

While it is held, the source's vacuum cannot remove rows deleted after it was taken: release it
when the migration ends (the migration's last task does, whatever happened before).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import psycopg2

from airflow_pool_provider.errors import MigrationError

APP_PREFIX = "pool-provider snapshot "
#: How often the holder checks that it may go on (its connection, its deadline).
POLL_SECONDS = 2.0


@dataclass(frozen=True, slots=True)
class HeldSnapshot:
    snapshot: str
    pid: int  # the holder process
    backend_pid: int  # its backend on the source


def application_name(migration_id: str) -> str:
    return (APP_PREFIX + migration_id)[:63]


def start(connect_kwargs: Mapping[str, Any], migration_id: str, max_seconds: float) -> HeldSnapshot:
    """Start a holder; returns once it has exported its snapshot. The connection parameters
    (password included) reach it on its standard input, never its command line."""
    params = {k: v for k, v in connect_kwargs.items() if isinstance(v, (str, int, float))}  # libpq keywords
    params["application_name"] = application_name(migration_id)
    # The server must not end the idle transaction that holds the snapshot.
    params["options"] = (str(params.get("options", "")) + " -c idle_in_transaction_session_timeout=0").strip()
    process = subprocess.Popen(
        [sys.executable, "-m", "airflow_pool_provider.migration.snapshot_holder", str(max_seconds)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # not stopped with the task that started it
    )
    try:
        process.stdin.write(json.dumps(params))
        process.stdin.close()
        line = process.stdout.readline()
    except BaseException:
        process.kill()
        raise
    if not line:
        error = process.stderr.read().strip()
        process.wait(10)
        raise MigrationError(f"the snapshot holder could not start: {error[-2000:] or 'no output'}")
    process.stdout.close()
    process.stderr.close()
    process.wait(30)  # the launcher exits at once; the holder it forked lives on, reaped by init
    held = json.loads(line)
    return HeldSnapshot(held["snapshot"], held["pid"], held["backend_pid"])


def release(cur, migration_id: str) -> int:
    """End the migration's holders by terminating their backends; returns how many there were."""
    cur.execute(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = %s",
        (application_name(migration_id),),
    )
    return cur.fetchone()[0]


def held(cur, migration_id: str) -> bool:
    cur.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE application_name = %s)", (application_name(migration_id),)
    )
    return cur.fetchone()[0]


def _launch(max_seconds: float) -> int:
    """Fork the holder and exit, so that it is nobody's child to be reaped (no zombie in a task)."""
    params = json.loads(sys.stdin.read())
    if os.fork():
        os._exit(0)
    os.setsid()
    return _hold(params, max_seconds)


def _hold(params: dict[str, Any], max_seconds: float) -> int:
    """The holder process: export, report, wait."""
    conn = psycopg2.connect(**params)
    with conn.cursor() as cur:
        cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        cur.execute("SELECT pg_export_snapshot(), pg_backend_pid()")
        snapshot, backend_pid = cur.fetchone()
    sys.stdout.write(json.dumps({"snapshot": snapshot, "backend_pid": backend_pid, "pid": os.getpid()}) + "\n")
    sys.stdout.flush()
    quiet = os.open(os.devnull, os.O_WRONLY)  # nobody reads our output any more
    os.dup2(quiet, sys.stdout.fileno())
    os.dup2(quiet, sys.stderr.fileno())
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    deadline = time.monotonic() + max_seconds
    try:
        while time.monotonic() < deadline:
            time.sleep(POLL_SECONDS)
            with conn.cursor() as cur:
                cur.execute("SELECT 1")  # raises once the backend is terminated: released
    except psycopg2.Error:
        return 0
    finally:
        try:
            conn.close()
        except psycopg2.Error:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(_launch(float(sys.argv[1])))
