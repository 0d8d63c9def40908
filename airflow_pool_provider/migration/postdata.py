"""The post-data stage: what makes loaded tables whole again, built from the source's catalog.

Per table, as soon as its rows are in: its indexes (several at once), and its primary key and
unique constraints attached ``USING INDEX`` to the unique index just built (instant), as
pgcopydb does. A partitioned table in PostgreSQL 15 refuses ``USING INDEX``: its leaves get them,
then ``ALTER TABLE parent ADD PRIMARY KEY`` and ``CREATE INDEX`` on the parent reuse the leaves'
indexes. Then, across tables: foreign keys (``NOT VALID``, then ``VALIDATE``, which reads without
blocking writes; a partitioned table validates as it adds), triggers, rules and policies from the
schema dump, sequences from the source's ``last_value``/``is_called``, and ``ANALYZE``.

Each object is recorded done in the stage ledger in the transaction that built it, so a re-run
builds exactly what is missing; a foreign key, added in one transaction and validated in another,
is looked up in the target, so a re-run validates one a killed or failed run left unchecked.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import psycopg2.errors
from psycopg2 import sql

from airflow_pool_provider.copy import sequences
from airflow_pool_provider.copy.choices import Choice
from airflow_pool_provider.copy.names import TableName
from airflow_pool_provider.copy.stopping import StopSignal
from airflow_pool_provider.copy.workers import run_workers
from airflow_pool_provider.errors import MigrationError, first_line
from airflow_pool_provider.migration import locks
from airflow_pool_provider.migration.ledger import MigrationLedger, ObjectKey, ObjectKind, Stage, Status
from airflow_pool_provider.migration.locks import DEFAULT_WAITS, LockMode, LockWaits
from airflow_pool_provider.pool import ConnectionPool

# Read with an empty search_path, so every name in a definition comes schema-qualified.
# The cost of a build, roughly: comparing numerics or collated text is slower than integers.
_INDEXES = """
SELECT ic.relname, pg_get_indexdef(i.indexrelid), c.conname, c.contype::text, c.condeferrable, c.condeferred,
       pg_get_constraintdef(c.oid), ic.relkind::text,
       (SELECT coalesce(sum(CASE WHEN a.atttypid = 'numeric'::regtype THEN 6
                                 WHEN a.attcollation <> 0 THEN 4 WHEN a.attlen > 0 THEN 1 ELSE 3 END), 8)
          FROM unnest(i.indkey) AS k(attnum) JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum),
       i.indisclustered
  FROM pg_index i
  JOIN pg_class ic ON ic.oid = i.indexrelid
  LEFT JOIN pg_constraint c ON c.conindid = i.indexrelid AND c.conrelid = i.indrelid AND c.contype IN ('p', 'u', 'x')
 WHERE i.indrelid = %s
 ORDER BY c.contype IS NULL, ic.relname
"""
_FOREIGN_KEYS = """
SELECT c.conname, c.conrelid, c.confrelid, pg_get_constraintdef(c.oid), c.convalidated,
       r.relkind = 'p' OR f.relkind = 'p'
  FROM pg_constraint c JOIN pg_class r ON r.oid = c.conrelid JOIN pg_class f ON f.oid = c.confrelid
 WHERE c.contype = 'f' AND c.conrelid = ANY(%s) AND c.conparentid = 0
 ORDER BY c.conname
"""


class KeyKind(Choice):
    """``pg_constraint.contype`` of the constraints an index backs."""

    PRIMARY_KEY = "p"
    UNIQUE = "u"
    EXCLUSION = "x"


@dataclass(frozen=True)
class IndexDef:
    """An index of a source relation, and the constraint it backs, if any."""

    table: TableName
    name: str
    definition: str  # CREATE [UNIQUE] INDEX ... ON schema.table ...
    constraint: str | None
    kind: KeyKind | None
    deferrable: bool
    deferred: bool
    constraint_definition: str | None
    partitioned: bool  # an index of a partitioned table (built through its leaves)
    cost: int = 1  # relative: the costliest are built first, so that they do not end last
    clustered: bool = False  # the table's CLUSTER ON index

    @property
    def key(self) -> ObjectKey:
        return ObjectKey.on_table(ObjectKind.INDEX, self.table, self.name)

    @property
    def constraint_key(self) -> ObjectKey | None:
        return (
            None if self.constraint is None else ObjectKey.on_table(ObjectKind.CONSTRAINT, self.table, self.constraint)
        )


@dataclass(frozen=True)
class ForeignKey:
    name: str
    table: TableName
    references: TableName | None  # None: a table outside the selection
    definition: str
    validated: bool
    partitioned: bool  # from or to a partitioned table: its per-partition keys come with it

    @property
    def key(self) -> ObjectKey:
        return ObjectKey.on_table(ObjectKind.FOREIGN_KEY, self.table, self.name)


def read_indexes(scur, oid: int, table: TableName) -> list[IndexDef]:
    scur.execute("SET LOCAL search_path = ''")
    scur.execute(_INDEXES, (oid,))
    return [
        IndexDef(
            table,
            name,
            definition,
            conname,
            KeyKind(kind) if kind else None,
            bool(deferrable),
            bool(deferred),
            condef,
            relkind == "I",  # a partitioned index
            cost,
            clustered,
        )
        for name, definition, conname, kind, deferrable, deferred, condef, relkind, cost, clustered in scur.fetchall()
    ]


def read_foreign_keys(scur, oids: dict[int, TableName]) -> list[ForeignKey]:
    scur.execute("SET LOCAL search_path = ''")
    scur.execute(_FOREIGN_KEYS, (list(oids),))
    return [
        ForeignKey(name, oids[table], oids.get(ref), definition, validated, partitioned)
        for name, table, ref, definition, validated, partitioned in scur.fetchall()
    ]


def set_index_build_memory(tcur, memory: str | None) -> None:
    """The memory of this transaction's index builds (``maintenance_work_mem``): a sort that fits
    in it needs no temporary files, the biggest part of a build's time. None: the server's."""
    if memory is not None:
        tcur.execute("SELECT set_config('maintenance_work_mem', %s, true)", (memory,))


def build_indexes(
    target_pool: ConnectionPool,
    indexes: list[IndexDef],
    ledger: MigrationLedger,
    workers: int,
    stop: StopSignal,
    log: logging.Logger | logging.LoggerAdapter,
    alongside: Callable[[], None] | None = None,
    index_build_memory: str | None = None,
    waits: LockWaits = DEFAULT_WAITS,
) -> int:
    """Build ``indexes`` (of one table): the indexes on up to ``workers`` connections at once
    (``CREATE INDEX`` locks allow each other), then, one after another, the constraints on them
    (``ADD CONSTRAINT`` takes an exclusive lock, which two at once would deadlock on). Returns
    how many objects were built (the others were done already). ``alongside`` runs on a builder
    that has no index left to build, while the others still build (a read of the table).
    ``index_build_memory``: each build's ``maintenance_work_mem``. ``waits``: how each statement
    waits for its lock on the table."""
    built: list[ObjectKey] = []
    table = indexes[0].table

    def once(key: ObjectKey, statement: sql.Composable, mode: LockMode) -> None:
        with stop.checkout(target_pool) as tconn, tconn.cursor() as tcur:
            if ledger.is_done(tcur, Stage.POST_DATA, key):
                tconn.rollback()
                return
            set_index_build_memory(tcur, index_build_memory)
            locks.execute(tcur, statement, [table], mode, waits, log)
            ledger.record(tcur, Stage.POST_DATA, key)
            tconn.commit()
            built.append(key)

    # The costliest first: with fewer builders than indexes, the longest build starts at once.
    plain = sorted((i for i in indexes if _index_statement(i) is not None), key=lambda i: -i.cost)
    jobs: list[tuple[str, Callable[[], None]]] = [
        (i.key.describe(), lambda i=i: once(i.key, _index_statement(i), LockMode.SHARE)) for i in plain
    ]
    if alongside is not None:
        jobs.append(("the table's check", alongside))
    outcome = run_workers(
        jobs,
        max(workers, 2 if alongside else 1),
        lambda job: job[1](),
        stop,
        describe=lambda job: job[0],
        name="index-builder",
    )
    if outcome.failure is not None:
        raise MigrationError(
            f"building the indexes of {indexes[0].table} failed: {first_line(outcome.failure)}"
        ) from outcome.failure
    for index in indexes:
        statement = _constraint_statement(index)
        if statement is not None and index.constraint_key is not None:
            once(index.constraint_key, statement, LockMode.ACCESS_EXCLUSIVE)
        if index.clustered:  # the index a CLUSTER without an index name uses
            once(
                ObjectKey.on_table(ObjectKind.CLUSTER, index.table, index.name),
                sql.SQL("ALTER TABLE {} CLUSTER ON {}").format(index.table.identifier(), sql.Identifier(index.name)),
                LockMode.SHARE_UPDATE_EXCLUSIVE,
            )
    if built:
        log.info("post-data %s: built %s", indexes[0].table, ", ".join(f"{k.kind.value} {k.name}" for k in built))
    return len(built)


def _index_statement(index: IndexDef) -> sql.Composable | None:
    """The index on its own, or None where the constraint builds it (exclusion constraints, and
    the keys of a partitioned table, which reuse the leaves' indexes)."""
    if index.kind is KeyKind.EXCLUSION or (index.partitioned and index.kind is not None):
        return None
    # Not ON ONLY: on a partitioned table, the index reuses the leaves' matching indexes.
    return sql.SQL(index.definition.replace(" ON ONLY ", " ON ", 1) if index.partitioned else index.definition)


def _constraint_statement(index: IndexDef) -> sql.Composable | None:
    if index.kind is None:
        return None
    table, constraint = index.table.identifier(), sql.Identifier(index.constraint)
    if index.kind is KeyKind.EXCLUSION or index.partitioned:
        return sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(
            table, constraint, sql.SQL(index.constraint_definition)
        )
    key = "PRIMARY KEY" if index.kind is KeyKind.PRIMARY_KEY else "UNIQUE"
    timing = " DEFERRABLE" + (" INITIALLY DEFERRED" if index.deferred else "") if index.deferrable else ""
    return sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} " + key + " USING INDEX {}" + timing).format(
        table, constraint, sql.Identifier(index.name)
    )


@dataclass(frozen=True)
class ForeignKeysAdded:
    added: int
    left_out: tuple[ObjectKey, ...]  # to tables outside the migration


def add_foreign_keys(
    target_pool: ConnectionPool,
    keys: list[ForeignKey],
    ledger: MigrationLedger,
    log: logging.Logger | logging.LoggerAdapter,
    on_violation: Callable[[ForeignKey], None] | None = None,
    waits: LockWaits = DEFAULT_WAITS,
) -> ForeignKeysAdded:
    """Add and validate the foreign keys between selected tables (those not done yet).
    ``on_violation``: called with a key whose rows do not hold, before its error is raised (it may
    raise one that says why); ``waits``: how each statement waits for its locks."""
    left_out = tuple(k.key for k in keys if k.references is None)
    added = 0
    for key in (k for k in keys if k.references is not None):
        try:
            added += _add_foreign_key(target_pool, key, ledger, waits, log)
        except psycopg2.errors.ForeignKeyViolation:
            if on_violation is not None:
                on_violation(key)
            raise
    if left_out:
        log.warning(
            "post-data: foreign keys to tables outside the migration were left out: %s",
            [k.describe() for k in left_out],
        )
    return ForeignKeysAdded(added, left_out)


def _add_foreign_key(
    target_pool: ConnectionPool,
    key: ForeignKey,
    ledger: MigrationLedger,
    waits: LockWaits,
    log: logging.Logger | logging.LoggerAdapter,
) -> int:
    """Each step on its own, found done or not in the target itself: ``ADD ... NOT VALID`` commits
    before ``VALIDATE`` (which reads without blocking writes), so a run killed during the check, or a
    check that failed, leaves the key there unchecked; the next run checks it (recorded pending,
    then done). Returns 1 if the key was added or checked now."""
    table, name = key.table.identifier(), sql.Identifier(key.name)
    with target_pool.connection() as tconn, tconn.cursor() as tcur:
        if ledger.is_done(tcur, Stage.POST_DATA, key.key):
            tconn.rollback()
            return 0
        # PostgreSQL 15 has no NOT VALID foreign keys on a partitioned table, and VALIDATE of one
        # to a partitioned table leaves its per-partition keys NOT VALID: validated as added.
        deferred_check = key.validated and not key.partitioned and not key.definition.endswith("NOT VALID")
        if _foreign_key_validated(tcur, key) is None:
            add = sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}" + (" NOT VALID" if deferred_check else "")).format(
                table, name, sql.SQL(key.definition)
            )
            locks.execute(tcur, add, [key.table, key.references], LockMode.SHARE_ROW_EXCLUSIVE, waits, log)
            if deferred_check:  # the key holds for new rows from now on
                ledger.record(tcur, Stage.POST_DATA, key.key, status=Status.PENDING)
                tconn.commit()
        if key.validated and not _foreign_key_validated(tcur, key):
            validate = sql.SQL("ALTER TABLE {} VALIDATE CONSTRAINT {}").format(table, name)
            locks.execute(tcur, validate, [key.table], LockMode.SHARE_UPDATE_EXCLUSIVE, waits, log)
        ledger.record(tcur, Stage.POST_DATA, key.key)
        tconn.commit()
    return 1


def _foreign_key_validated(tcur, key: ForeignKey) -> bool | None:
    """Whether the target's key of that name on that table is validated; None: there is none."""
    tcur.execute(
        "SELECT convalidated FROM pg_constraint WHERE conrelid = to_regclass(%s) AND conname = %s AND contype = 'f'",
        (str(key.table), key.name),
    )
    row = tcur.fetchone()
    return None if row is None else bool(row[0])


def move_sequence(scur, tcur, schema: str, name: str) -> int:
    """Set a target sequence from the source's position, never backwards; its next value."""
    ident = sql.Identifier(schema, name)
    return sequences.move(scur, tcur, ident, ident, sequences.increment(tcur, ident)).next_value


def is_populated(cur, view: TableName) -> bool:
    """Whether a materialized view holds rows it was refreshed with (False where it does not exist)."""
    cur.execute("SELECT relispopulated FROM pg_class WHERE oid = to_regclass(%s)", (str(view),))
    row = cur.fetchone()
    return bool(row and row[0])


def analyze(tcur, tables: list[TableName]) -> None:
    for table in tables:
        tcur.execute(sql.SQL("ANALYZE {}").format(table.identifier()))
