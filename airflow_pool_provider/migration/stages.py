"""A migration's stages, in the order they run (:class:`Step`), each a function of
:class:`Migration` (what every stage needs), so that the operators stay thin and each stage can
run, and be retried, in a task of its own."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from psycopg2 import sql

from airflow_pool_provider.copy import snapshot as copy_snapshot
from airflow_pool_provider.copy.choices import Choice
from airflow_pool_provider.copy.ledger import Ledger
from airflow_pool_provider.copy.names import TableName
from airflow_pool_provider.copy.server import server_identity
from airflow_pool_provider.copy.sessions import session_pools
from airflow_pool_provider.copy.stopping import StopSignal
from airflow_pool_provider.errors import MigrationMistake, ToolRefused
from airflow_pool_provider.metrics import Metrics
from airflow_pool_provider.migration import (
    catalog,
    comments,
    data,
    locks,
    postdata,
    predata,
    privileges,
    schema,
    scratch,
    toc,
    verify,
)
from airflow_pool_provider.migration.catalog import Relation, RelKind
from airflow_pool_provider.migration.ledger import (
    RESTORE,
    WHOLE_STAGE,
    MigrationLedger,
    ObjectKey,
    ObjectKind,
    Stage,
)
from airflow_pool_provider.migration.locks import LockMode
from airflow_pool_provider.migration.plan import MigrationPlan, make_plan, refuse_onto_itself, tools_for
from airflow_pool_provider.migration.records import (
    CheckRecord,
    PostDataRecord,
    RestoreRecord,
    previous_run,
)
from airflow_pool_provider.migration.request import MigrationRequest
from airflow_pool_provider.migration.selection import Selection, select
from airflow_pool_provider.migration.snapshots import MigrationSnapshots
from airflow_pool_provider.pool import ConnectionPool


class Step(Choice):
    """The migration's tasks, in the order they run (their values are the task ids)."""

    PLAN = "plan"
    SNAPSHOT = "snapshot"
    PRE_DATA = "pre_data"
    PLAN_DATA = "plan_data"
    COPY_DATA = "copy_data"
    POST_DATA = "post_data"
    VERIFY = "verify"
    RELEASE_SNAPSHOT = "release_snapshot"


@dataclass(frozen=True)
class Migration:
    """What every stage needs, made once per task. ``request`` has its id resolved; the snapshot
    is read from the ledger once and kept (:class:`MigrationSnapshots`)."""

    request: MigrationRequest
    source_pool: ConnectionPool
    target_pool: ConnectionPool
    source_connect: Mapping[str, Any]  # libpq keywords for pg_dump and the snapshot holder
    log: logging.Logger | logging.LoggerAdapter
    snapshot_max_seconds: float
    metrics: Metrics | None = None
    connection_limit: int | None = None

    def __post_init__(self) -> None:
        # Every session of the migration runs with the timeouts it needs (copy.sessions).
        source, target = session_pools(self.source_pool, self.target_pool, self.log)
        object.__setattr__(self, "source_pool", source)
        object.__setattr__(self, "target_pool", target)

    @property
    def migration_id(self) -> str:
        return self.request.id

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
        that one is gone: the snapshot stage's retry, or an earlier loss)."""
        with self.source_pool.connection() as conn, conn.cursor() as cur:
            snapshot = self.snapshots.current().snapshot
            try:
                copy_snapshot.join(cur, snapshot)
            except Exception:  # noqa: BLE001 - the holder is gone: take a new one, and say so
                conn.rollback()
                copy_snapshot.join(cur, self.snapshots.replace(snapshot))
            try:
                yield cur
            finally:
                conn.rollback()

    def selection(self, scur) -> Selection:
        return select(catalog.load(scur, self.request.schemas), self.request.tables, self.request.exclude_tables)

    def copy_context(self) -> data.CopyContext:
        return data.CopyContext(
            self.request,
            self.source_pool,
            self.target_pool,
            self.snapshots,
            self.connection_limit,
            self.log,
            self.metrics,
        )


def resolve(
    request: MigrationRequest,
    conn_ids: tuple[str, str],
    source_pool: ConnectionPool,
    target_pool: ConnectionPool,
    log: logging.Logger | logging.LoggerAdapter,
) -> MigrationRequest:
    """The request with its id: the given one; else the one derived from the databases and the
    selection, unless the target keeps records only under the id an earlier version derived from
    the connection ids (``conn_ids``): a migration it started resumes under that one."""
    if request.migration_id:
        return request
    with reading(source_pool) as scur, reading(target_pool) as tcur:
        derived = request.derived_id(server_identity(scur), server_identity(tcur))
        earlier = request.earlier_derived_id(*conn_ids)
        ledgers = (MigrationLedger(request.ledger_schema, i) for i in (derived, earlier))
        found = [ledger.has_records(tcur) for ledger in ledgers]
    if found == [False, True]:
        log.info(
            "migration %s: the target keeps its records under this id, derived by an earlier version from the "
            "connection ids; it goes on under it (a new migration of these databases would be %s)",
            earlier,
            derived,
        )
        return request.resolved(earlier)
    return request.resolved(derived)


@contextmanager
def reading(pool: ConnectionPool) -> Iterator[Any]:
    """A cursor in a read-only REPEATABLE READ transaction of its own (that reads every row or fails)."""
    with pool.connection() as conn, conn.cursor() as cur:
        copy_snapshot.begin(cur)
        try:
            yield cur
        finally:
            conn.rollback()


def plan(m: Migration, copy_tasks: int) -> MigrationPlan:
    with reading(m.source_pool) as scur, reading(m.target_pool) as tcur:
        return make_plan(scur, tcur, m.request, copy_tasks)


@contextmanager
def naming_grants(m: Migration) -> Iterator[None]:
    """A dump refused a privilege: the GRANTs the source role lacks, as the plan names them."""
    try:
        yield
    except ToolRefused as refused:
        with reading(m.source_pool) as scur:
            grants = privileges.source_grants(scur, m.request.schemas)
        if not grants:
            raise
        raise ToolRefused("\n  ".join([str(refused).rsplit("\n", 1)[0], "Grant it:", *grants])) from refused


def pre_data(m: Migration) -> predata.PreDataResult:
    scratch.remove_leftovers(m.log)  # a killed run's dump and password file
    with naming_grants(m), m.source_reading() as scur, m.target_pool.connection() as tconn:
        chosen = m.selection(scur)
        with tconn.cursor() as tcur:
            refuse_onto_itself(scur, tcur)  # the plan did, unless this task runs alone
            tools = tools_for(scur, tcur, m.request)
        tconn.rollback()
        snapshot = m.snapshots.current().snapshot
        restricted = privileges.restricted(privileges.functions(scur, m.request.schemas))
        return predata.run(tconn, chosen, m.request, m.ledger, tools, m.source_connect, snapshot, m.log, restricted)


def plan_data(m: Migration, batch_rows: int = data.DEFAULT_BATCH_ROWS) -> list[data.Batch]:
    with m.source_reading() as scur:
        chosen = m.selection(scur)
    batches = data.plan_batches(chosen, m.copy_context(), batch_rows)
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
    """Copy one batch, part by part; a table whose last chunk it copied gets its indexes and keys
    right away. Each chunk records the snapshot epoch it read in its own transaction (the report
    reads them there), so a task lost mid-part loses none."""
    with m.source_reading() as scur:
        chosen = m.selection(scur)
    context = m.copy_context()
    summaries = []
    for part in batch.parts:
        summaries.append(context.table_copy(part.table, only_chunks=part.chunks).run())
        _check_not_rewritten(m, part.table)
        if _loaded(m, part.table):
            _finish_loaded(m, chosen, part.table)
    return data.BatchResult(
        rows=sum(s.rows for s in summaries),
        chunks=sum(s.chunks for s in summaries),
        bytes=sum(s.bytes for s in summaries),
        seconds=round(sum(s.seconds for s in summaries), 3),
        tables=[p.table for p in batch.parts],
    )


def _check_not_rewritten(m: Migration, leaf: str) -> None:
    """TRUNCATE and the ALTER TABLE forms that rewrite a table are not MVCC-safe: committed after
    the snapshot, they leave the snapshot an empty table. The snapshot still sees the table's old
    file, the catalog cache its new one: if they differ, what was read may be short, and the copy
    is refused rather than verified (a VACUUM FULL or CLUSTER, which keep the rows, changes the
    file too: refused all the same, on the safe side)."""
    with m.source_reading() as scur:
        scur.execute(_FILE_NODES, (leaf,))
        row = scur.fetchone()
    if row is not None and row[0] != row[1]:
        raise MigrationMistake(
            f"table {leaf} was truncated or rewritten on the source after the migration's snapshot was taken "
            "(TRUNCATE, ALTER TABLE ... that rewrites it, VACUUM FULL or CLUSTER), so the snapshot may no longer "
            "see its rows: "
            "run the migration again with mode='replace' once such changes have stopped (a new run takes a "
            "new snapshot)"
        )


#: The table's file as the snapshot sees it, and as the catalog has it now.
_FILE_NODES = "SELECT relfilenode, pg_relation_filenode(oid) FROM pg_class WHERE oid = to_regclass(%s)"


def _loaded(m: Migration, leaf: str) -> bool:
    with m.target_pool.connection() as tconn, tconn.cursor() as tcur:
        totals = Ledger(m.request.ledger_schema).totals(tcur, data.copy_id(m.migration_id, leaf))
        tconn.rollback()
    return totals.chunks > 0 and totals.chunks_done == totals.chunks


def _finish_loaded(m: Migration, chosen: Selection, leaf: str) -> None:
    """A leaf's rows are all in: its indexes now; its partitioned table's once all its leaves are."""
    relation = chosen.catalog.by_name()[TableName.parse(leaf)]
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
        m.target_pool,
        indexes,
        m.ledger,
        workers,
        StopSignal(),
        m.log,
        alongside,
        m.request.index_build_memory,
        m.request.lock_waits,
    )


def check_loaded(m: Migration, leaf: Relation) -> None:
    """Check a loaded table against what was read (one pass), and record the result for the
    verify stage: done here, it reads the table while its slowest index still builds."""
    with m.source_reading() as scur, m.target_pool.connection() as tconn, tconn.cursor() as tcur:
        result = verify.check_leaf(scur, tcur, leaf, m.request)
        m.ledger.record(tcur, Stage.VERIFY, ObjectKey.of_table(leaf.name), CheckRecord(result, m.request.run_id))
        tconn.commit()


@dataclass(frozen=True)
class PostDataResult:
    indexes_built: int
    foreign_keys: int
    foreign_keys_left_out: list[str]
    restored: int  # triggers, rules, policies
    sequences: dict[str, int]  # next value of each


def post_data(m: Migration) -> PostDataResult:
    scratch.remove_leftovers(m.log)  # a killed run's dump and password file
    with m.source_reading() as scur:
        chosen = m.selection(scur)
        restored_tables = {
            oid: r.name for oid, r in chosen.catalog.relations.items() if oid in chosen.restored and r.is_table
        }
        keys = postdata.read_foreign_keys(scur, restored_tables)
    built = sum(build_table(m, r) for r in _tables_leaves_first(chosen))
    foreign = postdata.add_foreign_keys(
        m.target_pool,
        keys,
        m.ledger,
        m.log,
        on_violation=lambda key: _explain_violation(m, chosen, key),
        waits=m.request.lock_waits,
    )
    restored = _restore_post_data(m, chosen)
    refreshed = sum(_populate(m, view) for view in chosen.views if view.kind is RelKind.MATERIALIZED_VIEW)
    moved = _move_sequences(m, chosen)
    with m.source_reading() as scur, m.target_pool.connection() as tconn, tconn.cursor() as tcur:
        commented = comments.restore(
            scur, tcur, [chosen.catalog.relations[oid].name for oid in sorted(chosen.restored)]
        ) + comments.restore_schema_level(scur, tcur, chosen.catalog.schemas)
        postdata.analyze(tcur, [t.name for t in chosen.tables])
        m.ledger.record(tcur, Stage.POST_DATA, WHOLE_STAGE, PostDataRecord(foreign.left_out, moved))
        tconn.commit()
    m.log.info(
        "post-data: %d index(es) and key(s) built now, %d foreign key(s) added and validated, %d "
        "trigger(s)/rule(s)/polic(ies) restored, %d materialized view(s) refreshed, %d sequence(s) set, "
        "%d comment(s) written, tables analyzed",
        built,
        foreign.added,
        restored,
        refreshed,
        len(moved),
        commented,
    )
    return PostDataResult(built, foreign.added, [k.describe() for k in foreign.left_out], restored, moved)


def _explain_violation(m: Migration, chosen: Selection, key: postdata.ForeignKey) -> None:
    """A key that does not hold when the tables were read at different instants (the snapshot
    was lost and taken anew) is no fault of the data: say what happened and what to do."""
    with m.target_pool.connection() as tconn, tconn.cursor() as tcur:
        epochs = verify.epochs_read(
            tcur, Ledger(m.request.ledger_schema), chosen, m.request, previous_run(m.ledger, tcur)
        )
        tconn.rollback()
    if len({e for read in epochs.values() for e in read}) <= 1:
        return
    read_at = {str(leaf): sorted(read) for leaf, read in epochs.items()}
    raise MigrationMistake(
        f"foreign key {key.name} on {key.table} (to {key.references}) does not hold in the target because the "
        "migration's source snapshot was lost (the session holding it was ended, e.g. by a job that ends "
        "sessions idle in transaction) and taken anew: its tables were read at different instants (snapshot "
        f"epochs per table: {read_at}), and rows written on the source in between are in one table and not in "
        "the other. Run the migration again with mode='replace' (in a new run, it drops the tables and reads "
        "them all through one new snapshot), and keep the 'pool-provider snapshot' session on the source from "
        "being ended while it runs"
    )


def _tables_leaves_first(chosen: Selection) -> list[Relation]:
    """Every table, its partitions before it (a partitioned table's keys reuse its leaves')."""
    return [r for table in chosen.tables for r in (*chosen.catalog.descendants(table.oid), table)]


def _populate(m: Migration, view: Relation) -> int:
    """A materialized view arrives empty (the dump makes it WITH NO DATA): one populated on the
    source is refreshed from the migrated tables (as pg_restore does; views over views come after
    those they read), then gets its indexes. Returns 1 if it was refreshed now."""
    with m.source_reading() as scur:
        populated = postdata.is_populated(scur, view.name)
    refreshed = 0
    key = ObjectKey(ObjectKind.REFRESH, view.name.schema, view.name.name)
    with m.target_pool.connection() as tconn, tconn.cursor() as tcur:
        if populated and not m.ledger.is_done(tcur, Stage.POST_DATA, key):
            refresh = sql.SQL("REFRESH MATERIALIZED VIEW {}").format(view.name.identifier())
            locks.execute(tcur, refresh, [view.name], LockMode.ACCESS_EXCLUSIVE, m.request.lock_waits, m.log)
            m.ledger.record(tcur, Stage.POST_DATA, key)
            refreshed = 1
        tconn.commit()
    build_table(m, view)
    return refreshed


def _restore_post_data(m: Migration, chosen: Selection) -> int:
    """Triggers, rules, policies: from a dump of the schema, in one transaction with its record."""
    with m.target_pool.connection() as tconn, tconn.cursor() as tcur:
        if m.ledger.is_done(tcur, Stage.POST_DATA, RESTORE):
            tconn.rollback()
            return 0
        with m.source_reading() as scur:
            tools = tools_for(scur, tcur, m.request)
        with naming_grants(m), scratch.folder("schema") as folder:
            snapshot = m.snapshots.current().snapshot
            archive = schema.dump(tools, m.source_connect, chosen.catalog, snapshot, folder)
            entries = toc.post_data(list(archive.entries), chosen)
            script = schema.script(tools, archive, entries)
            locks.run(
                tcur,
                lambda: schema.apply(tcur, script),
                "the restore of triggers, rules and policies",
                [chosen.catalog.relations[oid].name for oid in sorted(chosen.restored)],
                LockMode.ACCESS_EXCLUSIVE,  # rules and policies take it
                m.request.lock_waits,
                m.log,
            )
        m.ledger.record(tcur, Stage.POST_DATA, RESTORE, RestoreRecord(len(entries)))
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
        report = verify.verify(scur, tcur, chosen, m.request, previous_run(m.ledger, tcur))
        tconn.rollback()
    return report
