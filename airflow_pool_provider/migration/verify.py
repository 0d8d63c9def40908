"""The verification stage and the end-of-run report.

Per table (through its leaves): rows and checksums of the target against what the data stage
read (the ledger's per-chunk source sums), and every object the migration moves compared by its
definition, both sides read now (:mod:`~airflow_pool_provider.migration.definitions`). One
table in the log, the same as XCom; a failed check fails the task. When the source's snapshot had
to be taken anew during the migration, the tables read at different instants are named: foreign
keys between them may then not hold. A table's instants are those its chunks recorded in the copy
ledger, each in the transaction that committed its rows, so a task lost mid-table loses none.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from psycopg2 import sql

from airflow_pool_provider.copy import catalog as copy_catalog
from airflow_pool_provider.copy import checksum
from airflow_pool_provider.copy.catalog import Side
from airflow_pool_provider.copy.ledger import Ledger
from airflow_pool_provider.copy.names import TableName
from airflow_pool_provider.copy.verify import TableCheck, check_table
from airflow_pool_provider.migration import comments, definitions, postdata
from airflow_pool_provider.migration.catalog import Relation, RelKind
from airflow_pool_provider.migration.data import copy_id
from airflow_pool_provider.migration.ledger import ObjectKey
from airflow_pool_provider.migration.records import PreviousRunState
from airflow_pool_provider.migration.report import render
from airflow_pool_provider.migration.request import MigrationRequest
from airflow_pool_provider.migration.selection import Selection

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
            "them when they were read (the source is not read again); the objects' definitions: both sides read "
            f"now: {definitions.COMPARED}; not compared: {definitions.NOT_COMPARED}",
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
    epochs = epochs_read(tcur, ledger, selection, request, earlier)
    reports = []
    for table in selection.tables:
        leaves = selection.data_sources(table)
        checks = [_leaf_check(scur, tcur, leaf, request, earlier) for leaf in leaves]
        ids = [copy_id(request.id, str(leaf.name)) for leaf in leaves]
        tcur.execute(sql.SQL(_TIMING).format(ledger.table), (ids,))
        nbytes, seconds = tcur.fetchone()
        relations = [table, *selection.catalog.descendants(table.oid)]
        reports.append(
            TableReport(
                str(table.name),
                sum(check.target_rows for check, _ in checks),
                int(nbytes) / 1e6,
                float(seconds),
                all(check.matches for check, _ in checks),
                _relation_differences(scur, tcur, relations, request, left_out),
                sorted({e for leaf in leaves for e in epochs.get(leaf.name, ())}),
                ", ".join(sorted({when for _, when in checks})),
            )
        )
    all_epochs = {e for r in reports for e in r.snapshot_epochs}
    others = _view_differences(scur, tcur, selection, request) + _sequence_differences(scur, tcur, selection, earlier)
    others += [
        d.describe() for d in definitions.schema_differences(scur, tcur, selection.catalog.schemas, request.keep_owners)
    ]
    return MigrationReport(request.id, reports, len(all_epochs) <= 1, [k.describe() for k in left_out], others)


def epochs_read(
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


def _relation_differences(
    scur, tcur, relations: list[Relation], request: MigrationRequest, left_out: tuple[ObjectKey, ...] = ()
) -> list[str]:
    """Each relation's objects and comments that the target lacks or defines otherwise."""
    found = []
    for relation in relations:
        found += [
            d.describe()
            for d in definitions.relation_differences(scur, tcur, relation.name, left_out, request.keep_owners)
        ]
        found += comments.differences(scur, tcur, relation.name)
    return found


def _view_differences(scur, tcur, selection: Selection, request: MigrationRequest) -> list[str]:
    """Views by their definitions and objects; a materialized view populated on the source must
    be populated on the target."""
    differences = []
    for view in selection.views:
        if view.kind is RelKind.MATERIALIZED_VIEW and postdata.is_populated(scur, view.name):
            if not postdata.is_populated(tcur, view.name):
                differences.append(f"materialized view {view.name} is not populated")
        differences += [f"{d} (view {view.name})" for d in _relation_differences(scur, tcur, [view], request)]
    return differences


def _sequence_differences(scur, tcur, selection: Selection, earlier: PreviousRunState) -> list[str]:
    """Each sequence's definition, and its position at or past where post-data set it (the
    source's position then; the source's now if no record says)."""
    set_at = earlier.post_data.sequences if earlier.post_data else {}
    return [
        d.describe()
        for s in selection.sequences
        for d in definitions.sequence_differences(scur, tcur, s.name, set_at.get(str(s.name)))
    ]


def _leaf_check(
    scur, tcur, leaf: Relation, request: MigrationRequest, earlier: PreviousRunState
) -> tuple[TableCheck, str]:
    """The leaf's check made right after its load in this DAG run, else a pass over it now: a
    check of an earlier run says nothing of the target as it is (it may have changed since)."""
    at_load = earlier.checked.get(leaf.name)
    if at_load is not None and at_load.run is not None and at_load.run == request.run_id:
        return at_load.check, CHECKED_AT_LOAD
    return check_leaf(scur, tcur, leaf, request), CHECKED_NOW
