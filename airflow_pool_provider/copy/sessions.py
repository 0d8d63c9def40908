"""The sessions a copy or a migration works in run with the timeouts it needs, not the server's.

A ``statement_timeout`` set on a role or a database (``ALTER ROLE ... SET statement_timeout``)
would cancel a chunk's COPY, an index build or a VALIDATE that runs longer, every time it is
retried; an ``idle_in_transaction_session_timeout`` would end a transaction that stays open on
one side while the other works. So every checkout of a copy or a migration gets
:data:`SESSION_SETTINGS` (kept on the pooled session while it is idle, and undone for a checkout
that does not ask for them), and the log says once per pool which ones the server had otherwise.
Waits for locks are bounded where DDL takes them (the migration's ``locks``), not here.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from airflow_pool_provider.pool import ConnectionPool, PooledConnection

#: What every session of a copy or a migration runs with: no statement is cancelled for its
#: duration, and no open transaction for being idle.
SESSION_SETTINGS: Mapping[str, str] = {"statement_timeout": "0", "idle_in_transaction_session_timeout": "0"}


class SessionPool:
    """A pool whose checkouts run with :data:`SESSION_SETTINGS`; otherwise the pool itself."""

    def __init__(self, pool: ConnectionPool, log: logging.Logger | logging.LoggerAdapter) -> None:
        self.pool = pool
        self.log = log
        self._told: set[str] = set()
        self._lock = threading.Lock()

    def getconn(self, timeout: float | None = None, cancel: threading.Event | None = None) -> PooledConnection:
        conn = self.pool.getconn(timeout, cancel, SESSION_SETTINGS)
        self._tell_overridden(conn.settings_before)
        return conn

    @contextmanager
    def connection(self, timeout: float | None = None, cancel: threading.Event | None = None) -> Iterator[Any]:
        conn = self.getconn(timeout, cancel)
        try:
            yield conn
        finally:
            conn.close()

    def _tell_overridden(self, before: Mapping[str, str]) -> None:
        """Log, once per setting, where the server (or role, database, connection) set it otherwise."""
        with self._lock:
            news = {k: v for k, v in before.items() if v != SESSION_SETTINGS[k] and k not in self._told}
            self._told.update(news)
        for name, value in news.items():
            self.log.warning(
                "pool %r: the server sets %s = %s for this session (ALTER ROLE/DATABASE ... SET, the "
                "connection's options or postgresql.conf); the sessions of this copy or migration run with %s = %s "
                "instead, so that long COPYs, index builds and validations are not cancelled",
                self.pool.name,
                name,
                value,
                name,
                SESSION_SETTINGS[name],
            )

    def __getattr__(self, name: str) -> Any:
        return getattr(self.pool, name)

    def __repr__(self) -> str:
        return f"<SessionPool of {self.pool!r}>"


def session_pools(
    source: ConnectionPool | SessionPool,
    target: ConnectionPool | SessionPool,
    log: logging.Logger | logging.LoggerAdapter,
) -> tuple[SessionPool, SessionPool]:
    """The source and target pools with the session settings (kept as they are when they have
    them already); one pool for both sides stays one."""
    wrapped = source if isinstance(source, SessionPool) else SessionPool(source, log)
    if _bare(target) is wrapped.pool:
        return wrapped, wrapped
    return wrapped, target if isinstance(target, SessionPool) else SessionPool(target, log)


def _bare(pool: ConnectionPool | SessionPool) -> ConnectionPool:
    return pool.pool if isinstance(pool, SessionPool) else pool
