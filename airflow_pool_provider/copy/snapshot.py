"""The source snapshot every worker reads through, and taking a new one when it is lost.

``pg_export_snapshot()`` names the snapshot of an open REPEATABLE READ transaction; workers join
it with ``SET TRANSACTION SNAPSHOT``. It lives only as long as that transaction: when the source
restarts or the holding connection drops, every join fails with SQLSTATE 22023. The copy then
takes a new snapshot and says so, as a resume does; rows changed between the two are copied as
they are in the new one. ``renewals`` counts how often that happened, for the summary.

Two kinds: a copy on its own exports a snapshot of its own (:class:`ExportedSnapshot`); a copy
that is part of a migration joins the migration's (:class:`SharedSnapshot`), held elsewhere,
and asks the migration for a new one when it is lost, so that every table of the migration
knows which instant it was read at.

A caller may label the instants (``read_instant``: a snapshot's id to a number of its choosing,
e.g. a migration's snapshot epoch): each chunk records, with its rows, the label of the snapshot
its own source transaction imported.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import psycopg2

from airflow_pool_provider.copy.row_security import read_every_row
from airflow_pool_provider.copy.stopping import StopSignal
from airflow_pool_provider.errors import SnapshotLost, first_line
from airflow_pool_provider.pool import ConnectionPool, PooledConnection

#: A snapshot's id to the caller's label of the instant it reads (None: unknown).
ReadInstant = Callable[[str], "int | None"]


def begin(cur) -> None:
    """Start a read-only REPEATABLE READ transaction on the source. Every source read of a copy or
    a migration starts here, so each reads every row of a table or fails (``row_security`` off)."""
    cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
    read_every_row(cur)


def join(cur, snapshot: str) -> None:
    """Start ``cur``'s transaction on ``snapshot``; SnapshotLost if it is gone."""
    begin(cur)
    try:
        cur.execute("SET TRANSACTION SNAPSHOT %s", (snapshot,))
    except psycopg2.errors.InvalidParameterValue as exc:  # 22023, here: the exporter is gone
        raise SnapshotLost(f"snapshot {snapshot} of the source is gone ({first_line(exc)})", snapshot) from exc


class SourceSnapshot:
    """A transaction on the snapshot, on a connection of its own; planning reads through it too."""

    #: Whether the snapshot was taken for this copy (so a resumed copy reads a new instant).
    taken_now = True

    def __init__(
        self,
        pool: ConnectionPool,
        stop: StopSignal,
        log: logging.Logger | logging.LoggerAdapter,
        read_instant: ReadInstant | None = None,
    ) -> None:
        self.pool = pool
        self.stop = stop
        self.log = log
        self._read_instant = read_instant
        self.renewals = 0
        self.id: str | None = None
        self.conn: PooledConnection | None = None
        self._lock = threading.Lock()

    def open(self) -> str:
        conn = self.pool.getconn()
        try:
            self.stop.watch(conn)
            with conn.cursor() as cur:
                self.id = self._begin(cur)
                # This transaction stays idle for the whole copy: the server must not end it.
                cur.execute("SET LOCAL idle_in_transaction_session_timeout = 0")
        except BaseException:
            self.stop.unwatch(conn)
            conn.close()
            raise
        self.conn = conn
        return self.id

    def _begin(self, cur) -> str:
        raise NotImplementedError

    def join(self, cur) -> str:
        """Start ``cur``'s transaction on the current snapshot; returns that snapshot's id."""
        snapshot = self.id
        join(cur, snapshot)
        return snapshot

    def instant(self, snapshot: str) -> int | None:
        """The caller's label of the instant ``snapshot`` reads, if it gave labels."""
        return None if self._read_instant is None else self._read_instant(snapshot)

    def renew(self, lost: str) -> str:
        """A new snapshot, unless another worker already took one since ``lost`` was seen."""
        with self._lock:
            if self.id != lost:
                return self.id
            self.close()
            self.open()  # counts the renewal
            self.log.warning(
                "the source snapshot %s was lost (its connection ended: a restart, a network cut, an "
                "administrator); "
                "reading on from a NEW snapshot %s: rows changed since are copied as they are now",
                lost,
                self.id,
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


class ExportedSnapshot(SourceSnapshot):
    """The copy's own: exported by its transaction."""

    def _begin(self, cur) -> str:
        begin(cur)
        cur.execute("SELECT pg_export_snapshot()")
        if self.id is not None:
            self.renewals += 1
        return cur.fetchone()[0]


class SharedSnapshot(SourceSnapshot):
    """A snapshot held elsewhere (a migration's); ``replace(lost)`` returns the one to use once it
    is gone."""

    taken_now = False

    def __init__(
        self,
        pool: ConnectionPool,
        stop: StopSignal,
        log: logging.Logger | logging.LoggerAdapter,
        snapshot: str,
        replace: Callable[[str], str],
        read_instant: ReadInstant | None = None,
    ) -> None:
        super().__init__(pool, stop, log, read_instant)
        self.id = snapshot
        self._replace = replace

    def _begin(self, cur) -> str:
        snapshot = self.id
        try:
            join(cur, snapshot)
        except SnapshotLost:
            cur.connection.rollback()
            snapshot = self._replace(snapshot)
            self.renewals += 1
            join(cur, snapshot)
        return snapshot
