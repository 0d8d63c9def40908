"""A migration's stages, each a function of :class:`Migration` (what every stage needs), so that
the operators stay thin and each stage can run, and be retried, in a task of its own."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from airflow_pool_provider.copy import snapshot as copy_snapshot
from airflow_pool_provider.copy.ledger import Ledger
from airflow_pool_provider.copy.stopping import StopSignal
from airflow_pool_provider.metrics import Metrics
from airflow_pool_provider.migration import catalog, data, postdata, predata, schema, toc, verify
from airflow_pool_provider.migration.catalog import Relation
from airflow_pool_provider.migration.ledger import STAGE, MigrationLedger
from airflow_pool_provider.migration.plan import tools_for
from airflow_pool_provider.migration.request import MigrationRequest
from airflow_pool_provider.migration.selection import Selection, select
from airflow_pool_provider.migration.snapshots import MigrationSnapshots
from airflow_pool_provider.pool import ConnectionPool


@dataclass(frozen=True)
class Migration:
    request: MigrationRequest
    migration_id: str
    source_pool: ConnectionPool
    target_pool: ConnectionPool
    source_connect: Mapping[str, Any]  # libpq keywords for pg_dump and the snapshot holder
    log: logging.Logger | logging.LoggerAdapter
    snapshot_max_seconds: float
    metrics: Metrics | None = None
    connection_limit: int | None = None

    @cached_property
    def ledger(self) -> MigrationLedger:
        return MigrationLedger(self.request.ledger_schema, self.migration_id)

    @cached_property
    def snapshots(self) -> MigrationSnapshots:
        return MigrationSnapshots(
            self.ledger, self.target_pool, self.source_pool, self.source_connect, self.snapshot_max_seconds, self.log
        )

    @contextmanager
    def source_reading(self) -> Iterator[Any]:
        """A source cursor in a read-only transaction on the migration's snapshot (a new one if
        the recorded one is gone: the snapshot stage's retry, or an earlier loss)."""
        with self.source_pool.connection() as conn, conn.cursor() as cur:
            snapshot = self.current_snapshot()
            try:
                copy_snapshot.join(cur, snapshot)
            except Exception:  # noqa: BLE001 - the holder is gone: take a new one, and say so
                conn.rollback()
                copy_snapshot.join(cur, self.snapshots.replace(snapshot))
            try:
                yield cur
            finally:
                conn.rollback()

    def current_snapshot(self) -> str:
        recorded = self.snapshots.recorded()
        return recorded["snapshot"] if recorded else self.snapshots.ensure()

    def selection(self, scur) -> Selection:
        return select(catalog.load(scur, self.request.schemas), self.request.tables, self.request.exclude_tables)

    def copy_context(self) -> data.CopyContext:
        return data.CopyContext(
            self.source_pool,
            self.target_pool,
            self.current_snapshot(),
            self.snapshots.replace,
            self.connection_limit,
            self.log,
            self.metrics,
        )


def pre_data(m: Migration) -> predata.PreDataResult:
    with m.source_reading() as scur, m.target_pool.connection() as tconn:
        chosen = m.selection(scur)
        with tconn.cursor() as tcur:
            tools = tools_for(scur, tcur, m.request)
        tconn.rollback()
        return predata.run(tconn, chosen, m.request, m.ledger, tools, m.source_connect, m.current_snapshot(), m.log)


def plan_data(m: Migration, batch_rows: int = data.DEFAULT_BATCH_ROWS) -> list[data.Batch]:
    with m.source_reading() as scur:
        chosen = m.selection(scur)
    batches = data.plan_batches(chosen, m.request, m.migration_id, m.copy_context(), batch_rows)
    rows = sum(b.rows for b in batches)
    m.log.info(
        "data: %d batch(es), %d chunk(s), about %s rows to copy%s",
        len(batches),
        sum(len(p.chunks) for b in batches for p in b.parts),
        f"{rows:,}",
        "" if batches else " (every chunk is done already)",
    )
    return batches


def copy_data(m: Migration, batch: data.Batch) -> data.BatchResult:
    """Copy one batch; a table whose last chunk it copied gets its indexes and keys right away."""
    with m.source_reading() as scur:
        chosen = m.selection(scur)
    context = m.copy_context()
    rows = chunks = nbytes = 0
    seconds = 0.0
    for part in batch.parts:
        epoch_before = m.snapshots.epoch()
        summary = context.table_copy(part.table, m.request, m.migration_id, only_chunks=part.chunks).run()
        rows, chunks, nbytes, seconds = (
            rows + summary.rows,
            chunks + summary.chunks,
            nbytes + summary.bytes,
            seconds + summary.seconds,
        )
        _record_epochs(m, part.table, {epoch_before, m.snapshots.epoch()})
        if _loaded(m, part.table):
            _finish_loaded(m, chosen, part.table)
    return data.BatchResult(rows, chunks, nbytes, round(seconds, 3), [p.table for p in batch.parts], 1)


def _record_epochs(m: Migration, leaf: str, epochs: set[int]) -> None:
    with m.target_pool.connection() as tconn, tconn.cursor() as tcur:
        tcur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"{m.migration_id} data {leaf}",))
        known = next(
            (r.detail.get("epochs", []) for r in m.ledger.records(tcur, data.STAGE_NAME) if r.object == leaf), []
        )
        m.ledger.record(tcur, data.STAGE_NAME, leaf, status="pending", detail={"epochs": sorted(set(known) | epochs)})
        tconn.commit()


def _loaded(m: Migration, leaf: str) -> bool:
    with m.target_pool.connection() as tconn, tconn.cursor() as tcur:
        totals = Ledger(m.request.ledger_schema).totals(tcur, data.copy_id(m.migration_id, leaf))
        tconn.rollback()
    return totals.chunks > 0 and totals.chunks_done == totals.chunks


def _finish_loaded(m: Migration, chosen: Selection, leaf: str) -> None:
    """A leaf's rows are all in: its indexes now; its partitioned table's once all its leaves are."""
    by_name = {str(r.name): r for r in chosen.catalog.relations.values()}
    relation = by_name[leaf]
    build_table(m, relation, alongside=lambda: check_loaded(m, relation))
    parent = chosen.catalog.relations.get(relation.parent) if relation.parent else None
    while parent is not None:
        if not all(_loaded(m, str(x.name)) for x in chosen.catalog.leaves(parent.oid)):
            return
        build_table(m, parent)
        parent = chosen.catalog.relations.get(parent.parent) if parent.parent else None


def build_table(m: Migration, relation: Relation, alongside: Callable[[], None] | None = None) -> int:
    """Build a table's indexes and keys (the missing ones); ``alongside`` while they build."""
    with m.source_reading() as scur:
        indexes = postdata.read_indexes(scur, relation.oid, relation.name)
    if not indexes:
        if alongside is not None:
            alongside()
        return 0
    workers = max(1, min(len(indexes), m.request.parallelism))
    return postdata.build_indexes(
        m.target_pool, indexes, m.ledger, workers, StopSignal(), m.log, alongside, m.request.index_build_memory
    )


def check_loaded(m: Migration, leaf: Relation) -> None:
    """Check a loaded table against what was read (one pass), and record the result for the
    verify stage: done here, it reads the table while its slowest index still builds."""
    with m.source_reading() as scur, m.target_pool.connection() as tconn, tconn.cursor() as tcur:
        result = verify.check_leaf(scur, tcur, leaf, m.migration_id, m.request.ledger_schema)
        m.ledger.record(tcur, verify.STAGE_NAME, str(leaf.name), detail=asdict(result))
        tconn.commit()


@dataclass(frozen=True)
class PostDataResult:
    indexes_built: int
    foreign_keys: int
    foreign_keys_left_out: list[str]
    restored: int  # triggers, rules, policies
    sequences: dict[str, int]  # next value of each


def post_data(m: Migration) -> PostDataResult:
    with m.source_reading() as scur:
        chosen = m.selection(scur)
        restored_tables = {
            oid: r.name for oid, r in chosen.catalog.relations.items() if oid in chosen.restored and r.is_table
        }
        keys = postdata.read_foreign_keys(scur, restored_tables)
    built = sum(build_table(m, r) for r in _tables_leaves_first(chosen))
    foreign = postdata.add_foreign_keys(m.target_pool, keys, m.ledger, m.log)
    restored = _restore_post_data(m, chosen)
    moved = _move_sequences(m, chosen)
    with m.target_pool.connection() as tconn, tconn.cursor() as tcur:
        postdata.analyze(tcur, [t.name for t in chosen.tables])
        m.ledger.record(tcur, postdata.STAGE_NAME, STAGE, detail={"left_out": foreign.left_out})
        tconn.commit()
    m.log.info(
        "post-data: %d index(es) and key(s) built now, %d foreign key(s) added and validated, %d "
        "trigger(s)/rule(s)/polic(ies) restored, %d sequence(s) set, tables analyzed",
        built,
        foreign.added,
        restored,
        len(moved),
    )
    return PostDataResult(built, foreign.added, foreign.left_out, restored, moved)


def _tables_leaves_first(chosen: Selection) -> list[Relation]:
    """Every table, its partitions before it (a partitioned table's keys reuse its leaves')."""
    return [r for table in chosen.tables for r in (*_descendants(chosen, table), table)]


def _descendants(chosen: Selection, table: Relation) -> list[Relation]:
    out = []
    for child in chosen.catalog.partitions_of(table.oid):
        out += _descendants(chosen, child)
        out.append(child)
    return out


def _restore_post_data(m: Migration, chosen: Selection) -> int:
    """Triggers, rules, policies: from a dump of the schema, in one transaction with its record."""
    with m.target_pool.connection() as tconn, tconn.cursor() as tcur:
        if m.ledger.done(tcur, postdata.STAGE_NAME, "restore"):
            tconn.rollback()
            return 0
        with m.source_reading() as scur:
            tools = tools_for(scur, tcur, m.request)
        with tempfile.TemporaryDirectory(prefix="pool-provider-schema-") as folder:
            archive = schema.dump(tools, m.source_connect, m.request.schemas, m.current_snapshot(), Path(folder))
            entries = toc.post_data(list(archive.entries), chosen)
            schema.apply(tcur, schema.script(tools, archive, entries))
        m.ledger.record(tcur, postdata.STAGE_NAME, "restore", detail={"entries": len(entries)})
        tconn.commit()
    return len(entries)


def _move_sequences(m: Migration, chosen: Selection) -> dict[str, int]:
    moved = {}
    with m.source_reading() as scur, m.target_pool.connection() as tconn, tconn.cursor() as tcur:
        for sequence in chosen.sequences:
            # Read live, not through the snapshot: never behind what the source has handed out.
            # A sequence is not transactional: read in the snapshot's transaction, it gives its value now.
            moved[str(sequence.name)] = postdata.move_sequence(scur, tcur, sequence.name.schema, sequence.name.name)
        tconn.commit()
    return moved


def verify_and_report(m: Migration) -> verify.MigrationReport:
    with m.source_reading() as scur, m.target_pool.connection() as tconn, tconn.cursor() as tcur:
        chosen = m.selection(scur)
        records = m.ledger.records(tcur, data.STAGE_NAME)
        epochs = {r.object: r.detail.get("epochs", []) for r in records}
        checked = {
            r.object: verify.TableCheck(**r.detail)
            for r in m.ledger.records(tcur, verify.STAGE_NAME)
            if r.object != STAGE
        }
        left_out = next(
            (r.detail.get("left_out", []) for r in m.ledger.records(tcur, postdata.STAGE_NAME) if r.object == STAGE), []
        )
        report = verify.verify(scur, tcur, chosen, m.migration_id, m.request.ledger_schema, epochs, left_out, checked)
        tconn.rollback()
    return report
