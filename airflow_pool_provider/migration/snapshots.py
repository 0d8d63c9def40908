"""The migration's source snapshot as the stages see it: recorded in the stage ledger, taken by
the snapshot stage, and taken anew, once for everyone, when it is lost.

A new snapshot means the tables read from then on are read as of another instant than those
read before: each table's data stage records the snapshot epoch it read, and the report says so
plainly when they differ.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from airflow_pool_provider.migration import snapshot_holder
from airflow_pool_provider.migration.ledger import STAGE, MigrationLedger
from airflow_pool_provider.pool import ConnectionPool

STAGE_NAME = "snapshot"


class MigrationSnapshots:
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

    def recorded(self) -> dict[str, Any] | None:
        """Snapshot id, holder and epoch, as the ledger has them."""
        with self.target_pool.connection() as tconn, tconn.cursor() as tcur:
            records = self.ledger.records(tcur, STAGE_NAME) if self.ledger.exists(tcur) else []
            tconn.rollback()
        return records[0].detail if records else None

    def epoch(self) -> int:
        return (self.recorded() or {}).get("epoch", 1)

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
        records = self.ledger.records(tcur, STAGE_NAME)
        current = records[0].detail if records else None
        if current and current["snapshot"] != lost and self._held():
            tconn.rollback()
            return current["snapshot"]
        held = snapshot_holder.start(self.source_connect, self.ledger.migration_id, self.max_seconds)
        epoch = current.get("epoch", 1) + 1 if current else 1
        self.ledger.record(tcur, STAGE_NAME, STAGE, detail={**held.to_detail(), "epoch": epoch})
        tconn.commit()
        if lost is not None:
            self.log.warning(
                "migration %s: its source snapshot %s is gone; tables read from now on are read as of a NEW "
                "instant (snapshot %s, epoch %d), and the report will say which",
                self.ledger.migration_id,
                lost,
                held.snapshot,
                epoch,
            )
        else:
            self.log.info(
                "migration %s: source snapshot %s (epoch %d) held by process %d (backend %d) until the migration "
                "ends; while it is held, vacuum on the source keeps rows deleted since%s",
                self.ledger.migration_id,
                held.snapshot,
                epoch,
                held.pid,
                held.backend_pid,
                "; the tables copied by an earlier run keep the epoch they were read at" if epoch > 1 else "",
            )
        return held.snapshot

    def _held(self) -> bool:
        with self.source_pool.connection() as sconn:
            sconn.autocommit = True
            with sconn.cursor() as scur:
                return snapshot_holder.held(scur, self.ledger.migration_id)

    def release(self) -> int:
        with self.source_pool.connection() as sconn:
            sconn.autocommit = True
            with sconn.cursor() as scur:
                return snapshot_holder.release(scur, self.ledger.migration_id)
