"""The verification stage and the end-of-run report.

Per table (through its leaves): rows and checksums of the target against what the data stage
read (the ledger's per-chunk source sums), and the indexes, constraints and triggers present in
the source present in the target too. One table in the log, the same as XCom; a failed check
fails the task. When the source's snapshot had to be taken anew during the migration, the
tables read at different instants are named: foreign keys between them may then not hold. A
table's instants are those its chunks recorded in the copy ledger, each in the transaction that
committed its rows, so a task lost mid-table loses none of them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from psycopg2 import sql

from airflow_pool_provider.copy import catalog as copy_catalog
from airflow_pool_provider.copy import checksum
from airflow_pool_provider.copy.catalog import Side
from airflow_pool_provider.copy.ledger import Ledger
from airflow_pool_provider.copy.names import TableName
from airflow_pool_provider.copy.verify import TableCheck, check_table
from airflow_pool_provider.migration import comments, postdata
from airflow_pool_provider.migration.catalog import Relation, RelKind
from airflow_pool_provider.migration.data import copy_id
from airflow_pool_provider.migration.ledger import ObjectKey, ObjectKind
from airflow_pool_provider.migration.records import PreviousRunState
from airflow_pool_provider.migration.report import render
from airflow_pool_provider.migration.request import MigrationRequest
from airflow_pool_provider.migration.selection import Selection

# Each object as its ledger kind, its name and its definition (read with an empty search_path,
# so that every name in it is schema-qualified on both sides).
_OBJECTS = """
SELECT 'index', c.relname, pg_get_indexdef(i.indexrelid) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
 WHERE i.indrelid = to_regclass(%(t)s)
UNION ALL
SELECT CASE contype WHEN 'f' THEN 'foreign key' ELSE 'constraint' END, conname, pg_get_constraintdef(oid)
  FROM pg_constraint WHERE conrelid = to_regclass(%(t)s) AND contype NOT IN ('t', 'n')
UNION ALL
-- NOT NULL as the column's property: PostgreSQL 18 also makes it a constraint, 15 does not
SELECT 'not null', attname, '' FROM pg_attribute
 WHERE attrelid = to_regclass(%(t)s) AND attnum > 0 AND NOT attisdropped AND attnotnull
UNION ALL
SELECT 'trigger', tgname, pg_get_triggerdef(oid) FROM pg_trigger WHERE tgrelid = to_regclass(%(t)s) AND NOT tgisinternal
UNION ALL
SELECT 'cluster', c.relname, '' FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
 WHERE i.indrelid = to_regclass(%(t)s) AND i.indisclustered
"""
# The schema-level objects of the schemas, each with what defines it (read with an empty
# search_path): enums by their labels in order, domains by base type and checks, functions and
# procedures by pg_get_functiondef. Those of extensions are the extensions' business.
_SCHEMA_OBJECTS = """
WITH own AS (
    SELECT t.oid, t.oid::regtype::text AS name, t.typtype
      FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
     WHERE n.nspname = ANY(%(schemas)s) AND t.typtype IN ('e', 'd')
       AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = t.oid AND d.deptype = 'e')
)
SELECT 'enum', name, (SELECT string_agg(quote_literal(e.enumlabel), ', ' ORDER BY e.enumsortorder)
                        FROM pg_enum e WHERE e.enumtypid = own.oid)
  FROM own WHERE typtype = 'e'
UNION ALL
SELECT 'domain', name, format_type(t.typbasetype, t.typtypmod) || CASE WHEN t.typnotnull THEN ' NOT NULL' ELSE '' END
       || coalesce(' ' || (SELECT string_agg(pg_get_constraintdef(c.oid), ' ' ORDER BY c.conname)
                            FROM pg_constraint c WHERE c.contypid = t.oid), '')
  FROM own JOIN pg_type t ON t.oid = own.oid WHERE own.typtype = 'd'
UNION ALL
SELECT CASE p.prokind WHEN 'p' THEN 'procedure' ELSE 'function' END, p.oid::regprocedure::text,
       pg_get_functiondef(p.oid)
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE n.nspname = ANY(%(schemas)s) AND p.prokind IN ('f', 'p')
   AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = p.oid AND d.deptype = 'e')
"""
_TIMING = """
SELECT coalesce(sum(bytes_copied), 0),
       coalesce(extract(epoch FROM max(finished_at) - min(finished_at - seconds * interval '1 second')), 0)
  FROM {} WHERE copy_id = ANY(%s)
"""


#: When a table's target rows were read for its check: in the verify stage, or right after its load
#: in the same DAG run (reused).
CHECKED_NOW = "now"
CHECKED_AT_LOAD = "at load"


@dataclass(frozen=True)
class TableReport:
    table: str
    rows: int
    megabytes: float
    seconds: float  # from its first chunk's start to its last chunk's end
    checksums_match: bool
    missing: list[str] = field(default_factory=list)  # objects of the source the target lacks
    snapshot_epochs: list[int] = field(default_factory=list)
    checked: str = CHECKED_NOW  # when its rows and checksums were read in the target

    @property
    def rows_per_second(self) -> int:
        return round(self.rows / self.seconds) if self.seconds > 0 else 0

    @property
    def verified(self) -> bool:
        return self.checksums_match and not self.missing


@dataclass(frozen=True)
class MigrationReport:
    migration_id: str
    tables: list[TableReport]
    one_instant: bool  # every table read through the same snapshot
    foreign_keys_left_out: list[str] = field(default_factory=list)
    other_differences: list[str] = field(default_factory=list)  # of the objects that are not tables

    @property
    def verified(self) -> bool:
        return all(t.verified for t in self.tables) and not self.other_differences

    def to_xcom(self) -> dict[str, Any]:
        out = asdict(self)
        out["verified"] = self.verified
        for row, table in zip(out["tables"], self.tables, strict=True):
            row["verified"], row["rows_per_second"] = table.verified, table.rows_per_second
        return out

    def table(self) -> str:
        rows = [
            (
                t.table,
                t.rows,
                round(t.megabytes, 1),
                round(t.seconds, 2),
                t.rows_per_second,
                t.checked,
                "yes"
                if t.verified
                else "NO: " + ("checksums differ; " if not t.checksums_match else "") + ", ".join(t.missing),
            )
            for t in self.tables
        ]
        total = sum(t.rows for t in self.tables)
        lines = [
            f"migration {self.migration_id}: {len(self.tables)} table(s), {total:,} rows, "
            + ("verified" if self.verified else "NOT verified"),
            render(("table", "rows", "MB", "seconds", "rows/s", "target read", "verified"), rows),
            "rows and checksums: each table's target rows against the sums of the source rows as the ledger kept "
            "them when they were read (the source is not read again); indexes, constraints and triggers: both "
            "sides read now",
        ]
        if not self.one_instant:
            epochs = {t.table: t.snapshot_epochs for t in self.tables}
            lines.append(
                "NOT one instant: the source's snapshot was lost and taken anew, so these tables were read "
                f"at different instants (snapshot epochs per table: {epochs}); foreign keys between them "
                "may not hold if the source was written to meanwhile"
            )
        if self.other_differences:
            lines.append(f"NOT verified besides the tables: {', '.join(self.other_differences)}")
        if self.foreign_keys_left_out:
            lines.append(f"foreign keys to tables outside the migration, left out: {self.foreign_keys_left_out}")
        return "\n".join(lines)


def check_leaf(scur, tcur, leaf: Relation, request: MigrationRequest) -> TableCheck:
    """One pass over a loaded leaf in the target, against the ledger's sums of what was read."""
    source = copy_catalog.load_table(scur, leaf.name, Side.SOURCE)
    target = copy_catalog.load_table(tcur, leaf.name, Side.TARGET)
    columns = source.copyable_columns()
    return check_table(
        tcur,
        target,
        columns,
        checksum.method(source, target, columns),
        Ledger(request.ledger_schema),
        [copy_id(request.id, str(leaf.name))],
    )


def verify(scur, tcur, selection: Selection, request: MigrationRequest, earlier: PreviousRunState) -> MigrationReport:
    """``scur``: a source transaction (the catalog); ``earlier``: the ledger's records, with each
    leaf's snapshot epochs and the leaves checked right after their load."""
    ledger = Ledger(request.ledger_schema)
    left_out = earlier.post_data.foreign_keys_left_out if earlier.post_data else ()
    epochs = _epochs_read(tcur, ledger, selection, request, earlier)
    reports = []
    for table in selection.tables:
        leaves = selection.data_sources(table)
        checks = [_leaf_check(scur, tcur, leaf, request, earlier) for leaf in leaves]
        ids = [copy_id(request.id, str(leaf.name)) for leaf in leaves]
        tcur.execute(sql.SQL(_TIMING).format(ledger.table), (ids,))
        nbytes, seconds = tcur.fetchone()
        relations = [table, *selection.catalog.descendants(table.oid)]
        missing = _missing_objects(scur, tcur, relations, left_out)
        missing += [d for r in relations for d in comments.differences(scur, tcur, r.name)]
        reports.append(
            TableReport(
                str(table.name),
                sum(check.target_rows for check, _ in checks),
                int(nbytes) / 1e6,
                float(seconds),
                all(check.matches for check, _ in checks),
                missing,
                sorted({e for leaf in leaves for e in epochs.get(leaf.name, ())}),
                ", ".join(sorted({when for _, when in checks})),
            )
        )
    all_epochs = {e for r in reports for e in r.snapshot_epochs}
    return MigrationReport(
        request.id,
        reports,
        len(all_epochs) <= 1,
        [k.describe() for k in left_out],
        _materialized_view_differences(scur, tcur, selection) + _schema_object_differences(scur, tcur, selection),
    )


def _epochs_read(
    tcur, ledger: Ledger, selection: Selection, request: MigrationRequest, earlier: PreviousRunState
) -> dict[TableName, set[int]]:
    """Each leaf's snapshot epochs, as its chunks recorded them in their own transactions (one
    query), with those that earlier versions recorded in the stage ledger after each part."""
    leaves = [leaf.name for table in selection.tables for leaf in selection.data_sources(table)]
    by_copy = ledger.read_instants(tcur, [copy_id(request.id, str(leaf)) for leaf in leaves])
    return {
        leaf: set(by_copy.get(copy_id(request.id, str(leaf)), ())) | set(earlier.epochs.get(leaf, ()))
        for leaf in leaves
    }


def _schema_object_differences(scur, tcur, selection: Selection) -> list[str]:
    """Types, domains and functions of the schemas that the target lacks or defines otherwise:
    pre-data reuses those that exist already, so one made otherwise in the target is found here."""
    source, target = (_schema_objects(cur, selection.catalog.schemas) for cur in (scur, tcur))
    differences = []
    for (kind, name), definition in sorted(source.items()):
        if (kind, name) not in target:
            differences.append(f"{kind} {name} is missing")
        elif target[(kind, name)] != definition:
            differences.append(f"{kind} {name} is defined otherwise in the target")
    return differences


def _schema_objects(cur, schemas: tuple[str, ...]) -> dict[tuple[str, str], str]:
    with _qualified(cur):
        cur.execute(_SCHEMA_OBJECTS, {"schemas": list(schemas)})
        return {(kind, name): definition for kind, name, definition in cur.fetchall()}


def _materialized_view_differences(scur, tcur, selection: Selection) -> list[str]:
    """A materialized view populated on the source must be on the target, with its indexes."""
    differences = []
    for view in (v for v in selection.views if v.kind is RelKind.MATERIALIZED_VIEW):
        if postdata.is_populated(scur, view.name) and not postdata.is_populated(tcur, view.name):
            differences.append(f"materialized view {view.name} is not populated")
        differences += _missing_objects(scur, tcur, [view], ())
    return differences


def _leaf_check(
    scur, tcur, leaf: Relation, request: MigrationRequest, earlier: PreviousRunState
) -> tuple[TableCheck, str]:
    """The leaf's check made right after its load in this DAG run, else a pass over it now: a
    check of an earlier run says nothing of the target as it is (it may have changed since)."""
    at_load = earlier.checked.get(leaf.name)
    if at_load is not None and at_load.run is not None and at_load.run == request.run_id:
        return at_load.check, CHECKED_AT_LOAD
    return check_leaf(scur, tcur, leaf, request), CHECKED_NOW


def _missing_objects(scur, tcur, relations: list[Relation], left_out: tuple[ObjectKey, ...]) -> list[str]:
    """The source's indexes, constraints, NOT NULLs, triggers and CLUSTER markers of ``relations``
    that the target lacks or defines otherwise (an object of the same name is not enough), but
    the foreign keys left out on purpose."""
    differences = []
    for relation in relations:
        source, target = (_objects(cur, relation.name) for cur in (scur, tcur))
        for key in sorted(set(source) - set(left_out)):
            if key not in target:
                differences.append(key.describe())
            elif target[key] != source[key]:
                differences.append(f"{key.describe()} defined otherwise ({target[key]!r}, not {source[key]!r})")
    return differences


def _objects(cur, table: TableName) -> dict[ObjectKey, str]:
    with _qualified(cur):
        cur.execute(_OBJECTS, {"t": str(table)})
        return {ObjectKey.on_table(ObjectKind(kind), table, n): definition for kind, n, definition in cur.fetchall()}


@contextmanager
def _qualified(cur) -> Iterator[None]:
    """An empty search_path, so that definitions name everything with its schema on both sides;
    put back after (the rows' checks print reg* values as the copy did)."""
    cur.execute("SELECT current_setting('search_path'), set_config('search_path', '', true)")
    search_path = cur.fetchone()[0]
    try:
        yield
    finally:
        cur.execute("SELECT set_config('search_path', %s, true)", (search_path,))
