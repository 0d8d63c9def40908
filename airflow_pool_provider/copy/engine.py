"""TableCopy: copy one table between two pools in verified, resumable chunks.

The run: export a snapshot on the source so every worker reads the same instant; prepare (read
and compare both tables, check the filter, find the ledger, plan or resume); fit the workers to
the connection budget; copy the pending chunks on those workers, each chunk in one target
transaction together with its ledger row, verified by counts and checksums before it commits;
then move the target's sequences on and make everything durable with one synchronous commit.

The run happens on a coordinator thread; the calling thread only waits for it. So an exception
delivered to the caller (Airflow's ``execution_timeout``, Ctrl-C) arrives while it waits, and
:meth:`TableCopy.stop` (the operator's ``on_kill``) can be called from a signal handler: either
way no new chunk starts, running statements are cancelled on both servers, and the workers are
joined within about a second.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection
from typing import Any

from airflow_pool_provider.copy import sequences
from airflow_pool_provider.copy.budget import ServerSlots, WorkerBudget, plan_workers
from airflow_pool_provider.copy.chunk import ChunkCopier
from airflow_pool_provider.copy.plan import KeysetKind
from airflow_pool_provider.copy.prepare import PreparedCopy, prepare
from airflow_pool_provider.copy.progress import Progress
from airflow_pool_provider.copy.row_security import explained
from airflow_pool_provider.copy.sessions import session_pools
from airflow_pool_provider.copy.snapshot import ExportedSnapshot, ReadInstant, SharedSnapshot, SourceSnapshot
from airflow_pool_provider.copy.spec import CopySpec
from airflow_pool_provider.copy.stopping import StopSignal
from airflow_pool_provider.copy.summary import CopySummary
from airflow_pool_provider.copy.workers import RECANCEL_EVERY, WorkOutcome, join_all, run_workers
from airflow_pool_provider.errors import CopyError, CopyMistake, CopyStopped, SnapshotLost, first_line, is_mistake
from airflow_pool_provider.metrics import Metrics, NoMetrics
from airflow_pool_provider.pool import ConnectionPool

#: Seconds the caller waits for a stopped copy's threads before it gives up on them.
STOP_GRACE = 10.0

DEFAULT_LEDGER_RETENTION_DAYS = 30.0


class TableCopy:
    """Copies ``spec`` from ``source_pool`` to ``target_pool``; ``copy_id`` names it in the ledger.

    Run it again with the same ``copy_id`` after a failure and it resumes: chunks the ledger
    records as done are skipped, the rest are copied. ``connection_limit`` caps the connections
    it holds in all (both pools); ``ledger_retention_days`` (None: keep all) prunes finished copies.
    ``read_instant`` labels the snapshots read (by id): each chunk's ledger row keeps the label of
    the one its source transaction read.
    """

    def __init__(
        self,
        source_pool: ConnectionPool,
        target_pool: ConnectionPool,
        spec: CopySpec,
        copy_id: str,
        log: logging.Logger | logging.LoggerAdapter | None = None,
        *,
        metrics: Metrics | None = None,
        connection_limit: int | None = None,
        ledger_retention_days: float | None = DEFAULT_LEDGER_RETENTION_DAYS,
        snapshot: str | None = None,
        replace_snapshot: Callable[[str], str] | None = None,
        only_chunks: Collection[int] | None = None,
        read_instant: ReadInstant | None = None,
    ) -> None:
        self.spec = spec
        self.copy_id = copy_id
        self.log = log or logging.getLogger(__name__)
        self.source_pool, self.target_pool = session_pools(source_pool, target_pool, self.log)
        self.metrics = metrics or NoMetrics()
        self.connection_limit = connection_limit
        if ledger_retention_days is not None and not ledger_retention_days > 0:
            raise CopyMistake(
                f"ledger_retention_days must be more than 0 (or None to keep all), got {ledger_retention_days!r}"
            )
        self.ledger_retention_days = ledger_retention_days
        self.shared_snapshot = snapshot
        self.replace_snapshot = replace_snapshot
        self.only_chunks = None if only_chunks is None else frozenset(only_chunks)
        self.read_instant = read_instant
        self.stopping = StopSignal()

    def _snapshot(self) -> SourceSnapshot:
        """The copy's own snapshot, or the migration's it was given (``snapshot``)."""
        if self.shared_snapshot is None:
            return ExportedSnapshot(self.source_pool, self.stopping, self.log, self.read_instant)
        return SharedSnapshot(
            self.source_pool,
            self.stopping,
            self.log,
            self.shared_snapshot,
            self.replace_snapshot or _cannot_replace,
            self.read_instant,
        )

    def stop(self, reason: str) -> None:
        """Stop the copy from any thread (or a signal handler); :meth:`run` then raises."""
        self.stopping.stop(reason)

    def run(self) -> CopySummary:
        """Copy the pending chunks (all, or ``only_chunks``); the summary."""
        return self._on_coordinator(self._run)

    def plan(self) -> PreparedCopy:
        """Prepare only: check both tables and store the chunk plan in the ledger (or load the one
        stored); nothing is copied. A migration plans every table first, then copies in batches."""
        return self._on_coordinator(self._plan)

    def _on_coordinator(self, work: Callable[[], Any]) -> Any:
        """Run ``work`` on a coordinator thread and wait: an exception delivered to this thread
        (a timeout, Ctrl-C) stops the copy, and a stop from a signal handler ends the wait."""
        outcome: list[Any] = []
        coordinator = threading.Thread(
            target=self._coordinate, args=(work, outcome), name="copy-coordinator", daemon=True
        )
        coordinator.start()
        try:
            # Not one join(): a stop from a signal handler (on_kill) returns here, and its cancels
            # are repeated until the coordinator ends, for a cancel that reaches a backend between
            # two statements is ignored.
            while coordinator.is_alive():
                coordinator.join(RECANCEL_EVERY)
                if self.stopping.stopped and coordinator.is_alive():
                    self.stopping.cancel_watched()
        except BaseException as exc:  # a timeout or Ctrl-C, delivered to the waiting thread
            self.stop(f"{type(exc).__name__}: {first_line(exc)}" if str(exc) else type(exc).__name__)
            if not join_all([coordinator], self.stopping, timeout=STOP_GRACE):
                self.log.error("copy %s: its threads did not end within %g s of the stop", self.copy_id, STOP_GRACE)
            raise
        result = outcome[0]
        if isinstance(result, BaseException):
            raise result
        return result

    def _coordinate(self, work: Callable[[], Any], outcome: list[Any]) -> None:
        try:
            outcome.append(work())
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
            exc = explained(exc, CopyMistake)
            if self.stopping.stopped and not self.stopping.by_failure and not isinstance(exc, CopyError):
                # Stopped while planning or finishing: the statement running then was cancelled.
                self.log.warning(
                    "copy %s stopped (%s) while planning or finishing; resume with copy_id %r",
                    self.copy_id,
                    self.stopping.reason,
                    self.copy_id,
                )
                stopped = CopyStopped(f"copy {self.copy_id} was stopped ({self.stopping.reason})")
                stopped.__cause__ = exc
                exc = stopped
            outcome.append(exc)

    def _plan(self) -> PreparedCopy:
        snapshot = self._snapshot()
        try:
            return self._prepare(snapshot)
        finally:
            snapshot.close()

    def _prepare(self, snapshot: SourceSnapshot) -> PreparedCopy:
        snapshot.open()
        with self.stopping.checkout(self.target_pool) as tconn, snapshot.conn.cursor() as scur:
            return prepare(scur, tconn, self.spec, self.copy_id, snapshot, self._budget, self.log)

    def _run(self) -> CopySummary:
        started = time.monotonic()
        snapshot = self._snapshot()
        try:
            prepared = self._prepare(snapshot)
            budget = prepared.budget
            pools = [self.source_pool] if self.source_pool is self.target_pool else [self.source_pool, self.target_pool]
            progress = Progress(
                self.log,
                prepared.chunks,
                prepared.done,
                pools,
                self.metrics,
                {"source": self.source_pool.name, "target": self.target_pool.name, "table": str(prepared.target.name)},
            )
            copier = ChunkCopier(
                prepared, self.spec, self.source_pool, self.target_pool, snapshot, self.stopping, progress, self.log
            )
            pending = [c for c in prepared.pending if self.only_chunks is None or c.no in self.only_chunks]
            work = run_workers(
                pending, budget.workers, copier.copy, self.stopping, describe=lambda chunk: f"chunk {chunk.no + 1}"
            )
            if work.failure is not None or self.stopping.stopped:
                self._log_stop(prepared, work)
                raise work.failure or CopyStopped(
                    f"copy {self.copy_id} was stopped ({self.stopping.reason}); resume it with copy_id {self.copy_id!r}"
                )
        finally:
            snapshot.close()
        return self._finish(prepared, progress, budget.workers, snapshot.renewals + 1, started)

    def _budget(self, source_slots: ServerSlots, target_slots: ServerSlots | None) -> WorkerBudget:
        budget = plan_workers(
            self.spec.parallelism,
            self.source_pool,
            self.target_pool,
            source_slots,
            target_slots,
            connection_limit=self.connection_limit,
        )
        if budget.limits:
            self.log.warning("copy %s runs %s", self.copy_id, budget.describe())
        return budget

    def _finish(
        self, prepared: PreparedCopy, progress: Progress, workers: int, snapshots: int, started: float
    ) -> CopySummary:
        """Move sequences on, prune old ledger rows, and make every chunk durable in one commit."""
        with self.stopping.checkout(self.target_pool) as tconn:
            with tconn.cursor() as tcur:
                totals = prepared.ledger.totals(tcur, self.copy_id)
                moves = self._sync_sequences(prepared, tcur)
                if self.ledger_retention_days is not None:
                    pruned = prepared.ledger.prune(tcur, self.ledger_retention_days)
                    if pruned:
                        self.log.info(
                            "ledger %s: pruned %d copy(ies) finished more than %g day(s) ago",
                            prepared.ledger,
                            pruned,
                            self.ledger_retention_days,
                        )
                tcur.execute("SET LOCAL synchronous_commit = on")
                tcur.execute("SELECT pg_current_xact_id()")  # a commit record, flushed with all before it
            tconn.commit()
        summary = CopySummary(
            copy_id=self.copy_id,
            source=str(prepared.source.name),
            target=str(prepared.target.name),
            mode=self.spec.mode.value,
            key=KeysetKind.CTID.value if prepared.keyset.kind is KeysetKind.CTID else list(prepared.keyset.columns),
            format="binary" if prepared.binary else "text",
            rows=progress.rows_this_run,
            chunks=progress.chunks_this_run,
            chunks_skipped=len(prepared.done),
            bytes=progress.bytes_this_run,
            seconds=time.monotonic() - started,
            total_rows=totals.rows,
            total_chunks=totals.chunks,
            checksum=prepared.checksum.value if self.spec.verify_checksums else None,
            workers=workers,
            snapshots=snapshots,
            sequences=tuple(moves),
            ledger=str(prepared.ledger),
        )
        if snapshots > 1:
            self.log.warning(
                "copy %s: the source was read through %d snapshots (lost and taken anew), not one instant",
                self.copy_id,
                snapshots,
            )
        self.log.info("copy finished:\n%s", summary.table())
        return summary

    def _sync_sequences(self, prepared: PreparedCopy, tcur) -> list[sequences.SequenceMove]:
        if not prepared.sequences:
            return []
        with self.stopping.checkout(self.source_pool) as sconn, sconn.cursor() as scur:
            moves = sequences.sync(scur, tcur, list(prepared.sequences))
            sconn.rollback()
        for move in moves:
            if move.moved:
                self.log.info(
                    "sequence %s (column %s) set to continue at %d, as on the source",
                    move.target,
                    move.column,
                    move.next_value,
                )
        return moves

    def _log_stop(self, prepared: PreparedCopy, work: WorkOutcome) -> None:
        done_before = len(prepared.done)
        then = (
            "fix its cause, then resume with"
            if work.failure is not None and is_mistake(work.failure)
            else "resume with"
        )
        self.log.warning(
            "copy %s stopped (%s): %d of %d chunk(s) done (%d in this run), %d failed, %d cancelled, %d not "
            "started; nothing of an unfinished chunk was committed. To finish it, %s copy_id %r",
            self.copy_id,
            self.stopping.reason,
            done_before + work.done,
            len(prepared.chunks),
            work.done,
            0 if work.failure is None else 1,
            work.cancelled,
            work.not_started,
            then,
            self.copy_id,
        )


def _cannot_replace(lost: str) -> str:
    raise SnapshotLost(f"the shared source snapshot {lost} is gone and nobody can take another", lost)
