"""Stopping a copy: no new chunk starts, and what runs is cancelled on both servers.

Every connection the copy uses is watched while it is checked out. ``stop()`` sets the flag and
sends each watched connection's server a cancel request (``connection.cancel()``, safe from any
thread). A cancel that reaches a backend between two statements is ignored by PostgreSQL, so
whoever waits for the workers calls :meth:`cancel_watched` again until they are gone.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from airflow_pool_provider.errors import CopyStopped
from airflow_pool_provider.pool import ConnectionPool, PooledConnection


class StopSignal:
    """Set once, by whoever stops the copy first; the first reason is kept."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.RLock()  # stop() may run in a signal handler while this thread holds it
        self._watched: dict[int, Any] = {}
        self.reason: str | None = None
        self.by_failure = False  # stopped because a part of the copy failed, not from outside

    @property
    def stopped(self) -> bool:
        return self._event.is_set()

    def stop(self, reason: str, failure: bool = False) -> None:
        with self._lock:
            if self.reason is None:
                self.reason = reason
                self.by_failure = failure
            self._event.set()
        self.cancel_watched()

    def cancel_watched(self) -> None:
        with self._lock:
            watched = list(self._watched.values())
        for conn in watched:
            try:
                conn.cancel()
            except Exception:  # noqa: BLE001 - a connection already gone has nothing to cancel
                pass

    def raise_if_stopped(self) -> None:
        if self._event.is_set():
            raise CopyStopped(f"the copy was stopped: {self.reason}")

    def watch(self, conn: Any) -> None:
        """Cancel ``conn``'s statements when stopped; refuse to start once stopped."""
        self.raise_if_stopped()
        raw = getattr(conn, "raw", conn)
        with self._lock:
            self._watched[id(conn)] = raw

    def unwatch(self, conn: Any) -> None:
        with self._lock:
            self._watched.pop(id(conn), None)

    @contextmanager
    def watching(self, conn: Any) -> Iterator[Any]:
        """Watch ``conn`` (a psycopg2 or pooled connection) for the block."""
        self.watch(conn)
        try:
            yield conn
        finally:
            self.unwatch(conn)

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds`` (a retry's backoff), waking at once when stopped."""
        return self._event.wait(seconds)

    @contextmanager
    def checkout(self, pool: ConnectionPool) -> Iterator[PooledConnection]:
        """A connection of ``pool``, watched for the block, then given back."""
        with pool.connection(cancel=self._event) as conn, self.watching(conn):
            yield conn
