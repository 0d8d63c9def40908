"""One source snapshot for a whole migration, held by a process of its own.

An exported snapshot lives only as long as the transaction that exported it, and every Airflow
task runs in a process of its own (Local and Celery executors) or one after another in one
process (``airflow dags test``). So neither a task nor a thread can hold it for the others. A
small detached process does, as ``pgcopydb snapshot`` does: it opens a REPEATABLE READ
transaction on the source, exports its snapshot, prints the id and waits, doing nothing, until
the migration releases it (its backend, recorded in the stage ledger, is terminated), its
connection is lost, or ``max_seconds`` pass. Tasks on any worker machine join that snapshot by id.

While it is held, the source's vacuum cannot remove rows deleted after it was taken: release it
when the migration ends (the migration's last task does, whatever happened before).
"""

from __future__ import annotations

import hashlib
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
_NAME_LIMIT = 63  # PostgreSQL keeps this much of an application_name
_NAME_HASH = 10
#: How often the holder checks that it may go on (its connection, its deadline).
POLL_SECONDS = 2.0


@dataclass(frozen=True, slots=True)
class HeldSnapshot:
    snapshot: str
    pid: int  # the holder process
    backend_pid: int  # its backend on the source


def application_name(migration_id: str) -> str:
    """Its backend's name (at most 63 characters): a longer id is cut and ends with a hash of its
    whole, so that ids equal in their first characters still get names of their own."""
    name = APP_PREFIX + migration_id
    if len(name) <= _NAME_LIMIT:
        return name
    digest = hashlib.sha256(migration_id.encode()).hexdigest()[:_NAME_HASH]
    return name[: _NAME_LIMIT - _NAME_HASH - 1] + "~" + digest


def _names(migration_id: str) -> list[str]:
    """Its name, and the one an earlier version gave a holder of a long id (cut at 63 characters)."""
    return sorted({application_name(migration_id), (APP_PREFIX + migration_id)[:_NAME_LIMIT]})


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


#: The migration's holder: the backend recorded for it, on this database, under its name (a pid
#: of a holder that ended may be another session's since). Never found by name alone: another
#: migration's holder may have the same name on another database.
_HOLDER = (
    "FROM pg_stat_activity WHERE pid = %(pid)s AND datname = current_database() AND application_name = ANY(%(names)s)"
)


def release(cur, migration_id: str, backend_pid: int) -> int:
    """End the migration's holder (backend ``backend_pid``, as recorded) by terminating its backend;
    returns 1 if it was still there, else 0."""
    cur.execute(
        "SELECT count(pg_terminate_backend(pid)) " + _HOLDER, {"pid": backend_pid, "names": _names(migration_id)}
    )
    return cur.fetchone()[0]


def held(cur, migration_id: str, backend_pid: int) -> bool:
    """Whether the migration's holder (backend ``backend_pid``, as recorded) is still there."""
    cur.execute("SELECT EXISTS (SELECT 1 " + _HOLDER + ")", {"pid": backend_pid, "names": _names(migration_id)})
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
