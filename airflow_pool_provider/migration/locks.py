"""DDL that waits for its locks a bounded time, and says who holds it off.

``ADD PRIMARY KEY USING INDEX``, ``DROP TABLE`` or ``REFRESH MATERIALIZED VIEW`` need an ACCESS
EXCLUSIVE lock: a session idle in transaction that read the table holds them off for ever, and
every later query on the table queues behind the waiting DDL. So each DDL statement of the
migration waits at most ``timeout`` seconds for its locks (``lock_timeout``, in a savepoint, so
the transaction and the ledger rows it will hold go on), lets the queue behind it go, logs the
sessions holding it off (pid, state, query) and tries again after a backoff, up to ``limit``
seconds in all. Then it fails naming them: a fault, so the task's retries apply, and the stage
resumes from its ledger.

The sessions holding it off are read from ``pg_locks`` between tries (``pg_blocking_pids`` only
answers while the statement waits, which would take a second connection): those holding, or
queued for, a lock on the statement's relations in a mode that conflicts with the one it needs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import psycopg2.errors
from psycopg2 import sql

from airflow_pool_provider.backoff import Backoff
from airflow_pool_provider.copy.choices import Choice
from airflow_pool_provider.copy.names import TableName
from airflow_pool_provider.errors import MigrationError, MigrationMistake

#: Seconds one try of a DDL statement waits for its locks (``[pooled_postgres] ddl_lock_timeout``).
DEFAULT_LOCK_TIMEOUT = 3.0
#: Seconds a DDL statement waits for its locks in all, over its tries (``ddl_lock_wait``).
DEFAULT_LOCK_WAIT = 300.0
#: Pauses between tries: the queue behind the statement drains meanwhile.
LOCK_BACKOFF = Backoff(first=0.5, cap=10.0)

_QUERY_SHOWN = 200  # characters of a blocker's query in the log


class LockMode(Choice):
    """The table lock a statement needs, as ``pg_locks.mode`` names it."""

    SHARE_UPDATE_EXCLUSIVE = "ShareUpdateExclusiveLock"  # VALIDATE CONSTRAINT, CLUSTER ON
    SHARE = "ShareLock"  # CREATE INDEX
    SHARE_ROW_EXCLUSIVE = "ShareRowExclusiveLock"  # ADD FOREIGN KEY, CREATE TRIGGER
    ACCESS_EXCLUSIVE = "AccessExclusiveLock"  # most ALTER TABLE, DROP, REFRESH, rules, policies

    @property
    def conflicts(self) -> tuple[str, ...]:
        """The modes that hold it off (PostgreSQL's table of conflicting lock modes)."""
        return _CONFLICTS[self]


_STRONG = ("ShareRowExclusiveLock", "ExclusiveLock", "AccessExclusiveLock")
_CONFLICTS = {
    LockMode.SHARE_UPDATE_EXCLUSIVE: ("ShareUpdateExclusiveLock", "ShareLock", *_STRONG),
    LockMode.SHARE: ("RowExclusiveLock", "ShareUpdateExclusiveLock", *_STRONG),
    LockMode.SHARE_ROW_EXCLUSIVE: ("RowExclusiveLock", "ShareUpdateExclusiveLock", "ShareLock", *_STRONG),
    LockMode.ACCESS_EXCLUSIVE: ("AccessShareLock", "RowShareLock", "RowExclusiveLock", "ShareUpdateExclusiveLock")
    + ("ShareLock", *_STRONG),
}


@dataclass(frozen=True)
class LockWaits:
    """How long DDL waits for its locks: each try ``timeout`` seconds, ``limit`` seconds in all."""

    timeout: float = DEFAULT_LOCK_TIMEOUT
    limit: float = DEFAULT_LOCK_WAIT

    def __post_init__(self) -> None:
        for name, value in (("ddl_lock_timeout", self.timeout), ("ddl_lock_wait", self.limit)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise MigrationMistake(f"{name} must be a positive number of seconds, got {value!r}")


#: The waits of a migration that does not name its own.
DEFAULT_WAITS = LockWaits()


@dataclass(frozen=True)
class Blocker:
    """A session holding a DDL statement off."""

    pid: int
    state: str
    user: str
    application: str
    seconds: int  # since its transaction (or, outside one, its session) began
    query: str  # its current or last statement
    relation: str
    mode: str
    granted: bool  # holds the lock (else waits for it, ahead in the queue)

    def describe(self) -> str:
        holds = "holds" if self.granted else "is queued for"
        return (
            f"pid {self.pid} ({self.state or 'unknown state'} for {self.seconds} s, user {self.user}, application "
            f"{self.application!r}) {holds} {self.mode} on {self.relation}; its query: {self.query}"
        )


class LockWaitExceeded(MigrationError):
    """A DDL statement waited its whole ``ddl_lock_wait`` for its locks (a fault: the task's retries apply)."""


#: Sessions with a lock on the relations (names as to_regclass reads them) in one of the modes.
_BLOCKERS = """
SELECT DISTINCT ON (a.pid) a.pid, coalesce(a.state, ''), coalesce(a.usename::text, ''), a.application_name,
       extract(epoch FROM now() - coalesce(a.xact_start, a.backend_start))::int,
       left(regexp_replace(a.query, '\\s+', ' ', 'g'), %(shown)s), l.relation::regclass::text, l.mode, l.granted
  FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
 WHERE l.locktype = 'relation' AND l.pid <> pg_backend_pid() AND l.mode = ANY(%(modes)s)
   AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
   AND l.relation IN (SELECT to_regclass(n)::oid FROM unnest(%(relations)s::text[]) AS n)
 ORDER BY a.pid, l.granted DESC
"""


def blockers(cur, relations: Sequence[TableName], mode: LockMode) -> list[Blocker]:
    """The sessions holding (or queued for) a lock on ``relations`` that conflicts with ``mode``."""
    cur.execute("SELECT pg_stat_clear_snapshot()")  # pg_stat_activity is read once per transaction otherwise
    cur.execute(
        _BLOCKERS, {"shown": _QUERY_SHOWN, "modes": list(mode.conflicts), "relations": [str(r) for r in relations]}
    )
    return [Blocker(*row) for row in cur.fetchall()]


def execute(
    cur,
    statement: sql.Composable,
    relations: Sequence[TableName],
    mode: LockMode,
    waits: LockWaits,
    log: logging.Logger | logging.LoggerAdapter,
) -> None:
    """Run a DDL statement that locks ``relations`` in ``mode``, waiting for its locks as
    :class:`LockWaits` says (see the module); ``cur`` is in the caller's transaction."""
    run(cur, lambda: cur.execute(statement), _shown(statement, cur), relations, mode, waits, log)


def run(
    cur,
    ddl: Callable[[], None],
    what: str,
    relations: Sequence[TableName],
    mode: LockMode,
    waits: LockWaits,
    log: logging.Logger | logging.LoggerAdapter,
) -> None:
    """:func:`execute` for ``ddl``, which runs its statements on ``cur`` (``what`` names them)."""
    deadline = time.monotonic() + waits.limit
    attempt = 0
    while True:
        attempt += 1
        cur.execute(
            "SAVEPOINT pool_provider_ddl; SELECT current_setting('lock_timeout'), set_config('lock_timeout', %s, true)",
            (f"{round(waits.timeout * 1000)}ms",),
        )
        before = cur.fetchone()[0]
        try:
            ddl()
        except psycopg2.errors.LockNotAvailable:
            cur.execute("ROLLBACK TO SAVEPOINT pool_provider_ddl")  # lets the queue behind it go
            _wait_or_give_up(cur, what, relations, mode, waits, log, attempt, deadline)
            continue
        cur.execute("RELEASE SAVEPOINT pool_provider_ddl; SELECT set_config('lock_timeout', %s, true)", (before,))
        return


def _wait_or_give_up(
    cur,
    what: str,
    relations: Sequence[TableName],
    mode: LockMode,
    waits: LockWaits,
    log: logging.Logger | logging.LoggerAdapter,
    attempt: int,
    deadline: float,
) -> None:
    """Name the sessions holding the statement off, and pause before its next try; or give up."""
    found = blockers(cur, relations, mode)
    held_off_by = "; ".join(b.describe() for b in found) or (
        "no session holds a conflicting lock on them now (it ended, or it locks another object the statement needs)"
    )
    names = ", ".join(str(r) for r in relations)
    left = deadline - time.monotonic()
    if left <= 0:
        ends = "; ".join(f"SELECT pg_terminate_backend({b.pid})" for b in found) or "pg_terminate_backend(pid)"
        raise LockWaitExceeded(
            f"{what} waited {waits.limit:g} s for its lock on {names} and gave up. Held off by: {held_off_by}. "
            f"Have that session commit or roll back, or end it ({ends}), then retry the task: it resumes. "
            "[pooled_postgres] ddl_lock_wait sets how long DDL waits in all"
        )
    delay = min(LOCK_BACKOFF.delay(attempt), left)
    log.warning(
        "%s waits for its lock on %s (try %d, %g s each): held off by %s; trying again in %.1f s, "
        "for up to %.0f s more",
        what,
        names,
        attempt,
        waits.timeout,
        held_off_by,
        delay,
        left,
    )
    time.sleep(delay)


def _shown(statement: sql.Composable, cur) -> str:
    text = statement.as_string(cur)
    return text if len(text) <= 160 else text[:157] + "..."
