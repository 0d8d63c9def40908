"""The migration's source snapshot as the stages see it: recorded in the stage ledger, taken by
the snapshot stage, and taken anew, once for everyone, when it is lost.

A new snapshot means the tables read from then on are read as of another instant than those
read before: each chunk records, in its own transaction, the epoch of the snapshot its source
transaction imported (:meth:`MigrationSnapshots.epoch_of`), and the report says so plainly when
a migration's chunks were read at more than one.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from airflow_pool_provider.migration import snapshot_holder
from airflow_pool_provider.migration.ledger import WHOLE_STAGE, MigrationLedger, Stage
from airflow_pool_provider.migration.records import SnapshotRecord
from airflow_pool_provider.pool import ConnectionPool


class MigrationSnapshots:
    """The snapshot as one task sees it: read from the ledger once, then kept, and replaced (for
    everyone) when a read finds it gone."""

    def __init__(
        self,
        ledger: MigrationLedger,
        target_pool: ConnectionPool,
        source_pool: ConnectionPool,
        source_connect: Mapping[str, Any],
        max_seconds: float,
        log: logging.Logger | logging.LoggerAdapter,
    ) -> None:
        self.ledger = ledger
        self.target_pool = target_pool
        self.source_pool = source_pool
        self.source_connect = source_connect
        self.max_seconds = max_seconds
        self.log = log
        self._current: SnapshotRecord | None = None
        self._epochs: dict[str, int] = {}  # every snapshot this task used, to its epoch

    def current(self) -> SnapshotRecord:
        """The migration's snapshot: the recorded one (read once per task), else a new one."""
        if self._current is None:
            self._keep(self._recorded())
        if self._current is None:
            self.ensure()
        assert self._current is not None
        return self._current

    def epoch_of(self, snapshot: str) -> int | None:
        """The epoch of a snapshot this task used (a copy asks after it was replaced, too)."""
        return self._epochs.get(snapshot)

    def _keep(self, record: SnapshotRecord | None) -> None:
        if record is not None:
            self._epochs[record.snapshot] = record.epoch
            self._current = record

    def _recorded(self) -> SnapshotRecord | None:
        with self.target_pool.connection() as tconn, tconn.cursor() as tcur:
            exists = self.ledger.exists(tcur)
            recorded = self.ledger.read(tcur, Stage.SNAPSHOT, WHOLE_STAGE, SnapshotRecord) if exists else None
            tconn.rollback()
        return recorded

    def ensure(self) -> str:
        """The snapshot to use: the recorded one while its holder lives, else a new one."""
        with self.target_pool.connection() as tconn, tconn.cursor() as tcur:
            self.ledger.ensure(tcur)
            return self._current_or_new(tcur, lost=None, tconn=tconn)

    def replace(self, lost: str) -> str:
        """Called by any copy that found ``lost`` gone: one of them takes a new snapshot (the ledger
        row is locked meanwhile), the others get that one."""
        with self.target_pool.connection() as tconn, tconn.cursor() as tcur:
            return self._current_or_new(tcur, lost=lost, tconn=tconn)

    def _current_or_new(self, tcur, lost: str | None, tconn) -> str:
        tcur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"snapshot {self.ledger.migration_id}",))
        current = self.ledger.read(tcur, Stage.SNAPSHOT, WHOLE_STAGE, SnapshotRecord)
        if current and current.snapshot != lost and self._held(current):
            tconn.rollback()
            self._keep(current)
            return current.snapshot
        if current:  # a holder whose snapshot could not be joined: one holder per migration
            self._end(current)
        held = snapshot_holder.start(self.source_connect, self.ledger.migration_id, self.max_seconds)
        taken = SnapshotRecord(held.snapshot, held.pid, held.backend_pid, current.epoch + 1 if current else 1)
        try:
            self.ledger.record(tcur, Stage.SNAPSHOT, WHOLE_STAGE, taken)
            tconn.commit()
        except BaseException:  # unrecorded, nothing would ever release it
            self._end(taken)
            raise
        self._keep(taken)
        self._log_taken(taken, lost)
        return taken.snapshot

    def _log_taken(self, taken: SnapshotRecord, lost: str | None) -> None:
        if lost is not None:
            self.log.warning(
                "migration %s: its source snapshot %s is gone; tables read from now on are read as of a NEW "
                "instant (snapshot %s, epoch %d), and the report will say which",
                self.ledger.migration_id,
                lost,
                taken.snapshot,
                taken.epoch,
            )
        else:
            self.log.info(
                "migration %s: source snapshot %s (epoch %d) held by process %d (backend %d) until the migration "
                "ends; while it is held, vacuum on the source keeps rows deleted since%s",
                self.ledger.migration_id,
                taken.snapshot,
                taken.epoch,
                taken.pid,
                taken.backend_pid,
                "; the tables copied by an earlier run keep the epoch they were read at" if taken.epoch > 1 else "",
            )

    def _held(self, record: SnapshotRecord) -> bool:
        with self.source_pool.connection() as sconn:
            sconn.autocommit = True
            with sconn.cursor() as scur:
                return snapshot_holder.held(scur, self.ledger.migration_id, record.backend_pid)

    def _end(self, record: SnapshotRecord) -> int:
        with self.source_pool.connection() as sconn:
            sconn.autocommit = True
            with sconn.cursor() as scur:
                return snapshot_holder.release(scur, self.ledger.migration_id, record.backend_pid)

    def release(self) -> int:
        """End the recorded holder (the migration's only one); returns 1 if it was still there."""
        recorded = self._recorded()
        return self._end(recorded) if recorded is not None else 0
