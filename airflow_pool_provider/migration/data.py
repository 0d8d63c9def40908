"""The data stage: every table's rows, with the chunked copy, through the migration's snapshot.

First every table is planned (its chunk plan stored in the copy ledger), then the pending chunks
are packed into batches: small tables share one, a big table is split over several. Each batch
is one mapped task instance, copying many chunks on its own pool. A partitioned table is copied
through its leaf partitions, each one copy. Tables are loaded before their indexes and keys exist
(the post-data stage builds those), so a chunk's target side is not checked per chunk (that
would scan the index-less table each time): the ledger keeps each chunk's source checksum, and
one pass over the loaded table checks them all.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

from airflow_pool_provider.copy import CopySpec, TableCopy
from airflow_pool_provider.copy.ledger import READ_INSTANT
from airflow_pool_provider.copy.names import TableName
from airflow_pool_provider.metrics import Metrics
from airflow_pool_provider.migration.request import MigrationRequest
from airflow_pool_provider.migration.selection import Selection
from airflow_pool_provider.migration.snapshots import MigrationSnapshots
from airflow_pool_provider.pool import ConnectionPool

#: Rows a batch aims at: enough to amortize a task's start, few enough to spread over workers.
DEFAULT_BATCH_ROWS = 1_000_000


@dataclass(frozen=True)
class BatchPart:
    table: str  # the leaf copied (a table, or a partition of one), as a quoted SQL name
    copy_id: str
    chunks: list[int]
    rows: int  # planned


@dataclass(frozen=True)
class Batch:
    number: int
    of: int
    parts: list[BatchPart] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return sum(p.rows for p in self.parts)

    @property
    def label(self) -> str:
        """What the UI shows for the mapped task instance."""
        first = self.parts[0]
        name = TableName.parse(first.table).name
        span = f" chunks {first.chunks[0] + 1}-{first.chunks[-1] + 1}" if len(first.chunks) > 1 else ""
        more = f" +{len(self.parts) - 1} more" if len(self.parts) > 1 else ""
        return f"batch {self.number}/{self.of}: {name}{span}{more}"

    def to_xcom(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "of": self.of,
            "label": self.label,
            "rows": self.rows,
            "parts": [asdict(p) for p in self.parts],
        }

    @classmethod
    def from_xcom(cls, value: dict[str, Any]) -> Batch:
        return cls(value["number"], value["of"], [BatchPart(**p) for p in value["parts"]])


def copy_id_prefix(migration_id: str) -> str:
    """What the copy ids of a migration's leaves, and no other migration's, start with, in the
    chunk ledger: its id, a colon and the leaf's name, which always starts with a double quote
    (:class:`TableName` quotes it). An id holds no double quote, so ``m1:"`` is never the start
    of ``m10:...`` or of ``m1:b:...``."""
    return f'{migration_id}:"'


def copy_id(migration_id: str, leaf: str) -> str:
    """``leaf``: a quoted name (``str(TableName)``), as the ids of earlier versions had it."""
    return f"{migration_id}:{leaf}"


def leaf_spec(leaf: str, request: MigrationRequest) -> CopySpec:
    """How one leaf is copied: into the fresh table pre-data made, checked per table."""
    return CopySpec(
        source_table=leaf,
        chunk_size=request.chunk_size,
        parallelism=request.parallelism,
        mode="append",
        verify_checksums=True,
        target_checksum="per_table",
        ledger_schema=request.ledger_schema,
        sync_sequences=False,
    )


@dataclass(frozen=True)
class CopyContext:
    """What every copy of the stage needs: the request, pools, the shared snapshot (the task's
    view of it, replaced for everyone when lost), budget, log, metrics."""

    request: MigrationRequest  # its migration_id resolved
    source_pool: ConnectionPool
    target_pool: ConnectionPool
    snapshots: MigrationSnapshots
    connection_limit: int | None
    log: logging.Logger | logging.LoggerAdapter
    metrics: Metrics | None = None

    def table_copy(self, leaf: str, only_chunks: list[int] | None = None) -> TableCopy:
        return TableCopy(
            self.source_pool,
            self.target_pool,
            leaf_spec(leaf, self.request),
            copy_id(self.request.id, leaf),
            self.log,
            metrics=self.metrics,
            connection_limit=self.connection_limit,
            ledger_retention_days=None,
            snapshot=self.snapshots.current().snapshot,
            replace_snapshot=self.snapshots.replace,
            only_chunks=only_chunks,
            read_instant=self.snapshots.epoch_of,
        )


def leaves(selection: Selection) -> list[str]:
    """Every relation whose rows are copied: the plain tables, and the partitioned ones' leaves."""
    return [str(leaf.name) for table in selection.tables for leaf in selection.data_sources(table)]


@dataclass(frozen=True)
class PendingChunks:
    """A leaf's chunks still to copy, with their planned rows."""

    table: str
    copy_id: str
    chunks: list[int]
    rows: list[int]


def plan_batches(selection: Selection, context: CopyContext, batch_rows: int = DEFAULT_BATCH_ROWS) -> list[Batch]:
    """Plan every leaf's chunks (stored in the ledger) and pack the pending ones into batches."""
    request = context.request
    pending = []
    unlabelled: set[str] = set()  # ledgers that cannot keep the epochs chunks read
    for leaf in leaves(selection):
        prepared = context.table_copy(leaf).plan()
        if not prepared.ledger.keeps_instants:
            unlabelled.add(str(prepared.ledger))
        todo = [c for c in prepared.chunks if c.no not in prepared.done]
        if todo:
            pending.append(
                PendingChunks(
                    leaf,
                    copy_id(request.id, leaf),
                    [c.no for c in todo],
                    [c.expected_rows or request.chunk_size for c in todo],
                )
            )
    for ledger in sorted(unlabelled):
        context.log.warning(
            "the copy ledger %s was made by an earlier version and this role may not add its %s column, so "
            "the chunks do not record the snapshot epoch they read: the report cannot tell whether the "
            "tables were read at one instant. Have its owner run: ALTER TABLE %s ADD COLUMN %s integer",
            ledger,
            READ_INSTANT,
            ledger,
            READ_INSTANT,
        )
    return pack(pending, max(batch_rows, request.chunk_size))


def pack(pending: list[PendingChunks], batch_rows: int) -> list[Batch]:
    """Batches of about ``batch_rows`` rows: big tables split by chunk, small ones put together.
    A chunk bigger than a batch gets a batch of its own."""
    groups: list[list[BatchPart]] = [[]]
    room = batch_rows
    for leaf in sorted(pending, key=lambda p: -sum(p.rows)):
        start = 0
        while start < len(leaf.chunks):
            end, taken = start, 0
            while end < len(leaf.chunks) and (taken + leaf.rows[end] <= room or (end == start and not groups[-1])):
                taken += leaf.rows[end]
                end += 1
            if end == start:  # no room left in this batch
                groups.append([])
                room = batch_rows
                continue
            groups[-1].append(BatchPart(leaf.table, leaf.copy_id, leaf.chunks[start:end], taken))
            room -= taken
            start = end
    groups = [g for g in groups if g]
    return [Batch(i + 1, len(groups), g) for i, g in enumerate(groups)]


@dataclass(frozen=True)
class BatchResult:
    rows: int
    chunks: int
    bytes: int
    seconds: float
    tables: list[str]  # leaves this batch worked on
