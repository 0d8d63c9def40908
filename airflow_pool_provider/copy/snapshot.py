"""The source snapshot every worker reads through, and taking a new one when it is lost.

``pg_export_snapshot()`` names the snapshot of an open REPEATABLE READ transaction; workers join
it with ``SET TRANSACTION SNAPSHOT``. It lives only as long as that transaction: when the source
restarts or the holding connection drops, every join fails with SQLSTATE 22023. The copy then
takes a new snapshot and says so, as a resume does; rows changed between the two are copied as
they are in the new one. ``renewals`` counts how often that happened, for the summary.
"""

from __future__ import annotations

import logging
import threading

import psycopg2

from airflow_pool_provider.copy.stopping import StopSignal
from airflow_pool_provider.errors import SnapshotLost, first_line
from airflow_pool_provider.pool import ConnectionPool, PooledConnection

#: Identifies a database on a server: the same values mean the same database.
WHERE_AM_I = "current_database(), pg_postmaster_start_time(), current_setting('port')"


class SourceSnapshot:
    """Holds the exporting transaction on a connection of its own."""

    def __init__(self, pool: ConnectionPool, stop: StopSignal,
                 log: logging.Logger | logging.LoggerAdapter) -> None:
        self.pool = pool
        self.stop = stop
        self.log = log
        self.renewals = 0
        self.id: str | None = None
        self.conn: PooledConnection | None = None
        self._lock = threading.Lock()

    def open(self) -> str:
        """Begin the exporting transaction; its cursor also serves planning (same snapshot)."""
        conn = self.pool.getconn()
        try:
            self.stop.watch(conn)
            with conn.cursor() as cur:
                cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                cur.execute("SELECT pg_export_snapshot()")
                self.id = cur.fetchone()[0]
        except BaseException:
            self.stop.unwatch(conn)
            conn.close()
            raise
        self.conn = conn
        return self.id

    def join(self, cur) -> str:
        """Start ``cur``'s transaction on the snapshot; SnapshotLost if it is gone."""
        snapshot = self.id
        cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        try:
            cur.execute("SET TRANSACTION SNAPSHOT %s", (snapshot,))
        except psycopg2.errors.InvalidParameterValue as exc:  # 22023, here: the exporter is gone
            raise SnapshotLost(f"snapshot {snapshot} of the source is gone ({first_line(exc)})", snapshot) from exc
        return snapshot

    def renew(self, lost: str) -> str:
        """Take a new snapshot unless another worker already did since ``lost`` was seen."""
        with self._lock:
            if self.id != lost:
                return self.id
            self.close()
            self.open()
            self.renewals += 1
            self.log.warning(
                "the source snapshot %s was lost (the source restarted or its connection dropped); "
                "reading on from a NEW snapshot %s: rows changed since are copied as they are now",
                lost, self.id,
            )
            return self.id

    def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is None:
            return
        self.stop.unwatch(conn)
        try:
            conn.rollback()
        except psycopg2.Error:
            pass  # a lost connection: the pool discards it
        conn.close()
