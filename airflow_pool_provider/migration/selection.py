"""Which tables a migration moves: whole schemas, or named tables of them, minus exclusions.

Tables are named as users write them (``orders``, ``public.orders``, ``"Odd"."T"``); a bare name
names the table of that name in every selected schema (``exclude_tables: ["audit_log"]`` leaves
out each schema's ``audit_log``). A partitioned table brings its partitions (its rows are
copied through the leaves); a partition cannot be chosen alone. Views come along when every
relation they read comes along; sequences when they stand alone or their table is selected.
"""

from __future__ import annotations

from dataclasses import dataclass

from airflow_pool_provider.copy.names import TableName
from airflow_pool_provider.errors import MigrationMistake
from airflow_pool_provider.migration.catalog import Relation, RelKind, SourceCatalog

PG_CLASS = 1259  # pg_class's OID: the catalog of tables, views, sequences and indexes


@dataclass(frozen=True)
class Selection:
    catalog: SourceCatalog
    tables: tuple[Relation, ...]  # top level: plain and partitioned tables, not partitions
    views: tuple[Relation, ...]
    sequences: tuple[Relation, ...]
    restored: frozenset[int]  # every relation whose definition is restored (partitions included)

    def data_sources(self, table: Relation) -> list[Relation]:
        """The relations a table's rows are copied through: itself, or its leaf partitions."""
        return self.catalog.leaves(table.oid)

    def owns(self, catalog_oid: int, object_oid: int) -> bool | None:
        """Whether an object that belongs to a table (a default, constraint, trigger, rule, owned
        sequence) belongs to a selected one; None if it belongs to no table."""
        table = self.catalog.owner.get((catalog_oid, object_oid))
        return None if table is None else table in self.restored


def select(catalog: SourceCatalog, tables: tuple[str, ...] = (), exclude: tuple[str, ...] = ()) -> Selection:
    """The selection of ``catalog``'s schemas; MigrationMistake naming what does not exist."""
    chosen = (
        _resolve(catalog, tables, "tables")
        if tables
        else [r for r in catalog.relations.values() if r.is_table and r.parent is None]
    )
    excluded = {r.oid for r in _resolve(catalog, exclude, "exclude_tables")}
    picked = sorted((r for r in chosen if r.oid not in excluded), key=lambda r: str(r.name))
    if not picked:
        raise MigrationMistake(
            f"no table selected in schemas {list(catalog.schemas)}: check schemas, tables and exclude_tables"
        )
    restored = {r.oid for t in picked for r in (t, *catalog.descendants(t.oid))}
    sequences = [
        r
        for r in catalog.relations.values()
        if r.kind is RelKind.SEQUENCE and _sequence_comes_along(catalog, r, restored)
    ]
    restored |= {s.oid for s in sequences}
    views = _views_reading_only(catalog, restored)
    restored |= {v.oid for v in views}
    return Selection(
        catalog, tuple(picked), tuple(views), tuple(sorted(sequences, key=lambda r: str(r.name))), frozenset(restored)
    )


def _sequence_comes_along(catalog: SourceCatalog, sequence: Relation, restored: set[int]) -> bool:
    """A standalone sequence always; one owned by a column only with its table."""
    owner = catalog.owner.get((PG_CLASS, sequence.oid))
    return owner is None or owner in restored


def _views_reading_only(catalog: SourceCatalog, relations: set[int]) -> list[Relation]:
    """Views whose every read relation is restored, views over such views included."""
    readable, views = set(relations), []
    pending = sorted((r for r in catalog.relations.values() if r.is_view), key=lambda r: str(r.name))
    progress = True
    while progress:
        progress = False
        for view in list(pending):
            if catalog.view_reads.get(view.oid, frozenset()) <= readable:
                readable.add(view.oid)
                views.append(view)
                pending.remove(view)
                progress = True
    return views


def _resolve(catalog: SourceCatalog, names: tuple[str, ...], field: str) -> list[Relation]:
    """The tables ``names`` name: a bare name names the table of that name in every selected schema."""
    by_name = catalog.by_name()
    found, missing, partitions = [], [], []
    for text in names:
        tables = [r for r in _lookup(by_name, TableName.parse(text), catalog.schemas) if r.is_table]
        if not tables:
            missing.append(text)
        partitions += [text for r in tables if r.parent is not None]
        found += [r for r in tables if r.parent is None]
    if missing:
        raise MigrationMistake(
            f"{field}: {missing} not found as tables in schemas {list(catalog.schemas)}; "
            "name them as table or schema.table, within the migration's schemas"
        )
    if partitions:
        raise MigrationMistake(f"{field}: {partitions} are partitions; name their partitioned table instead")
    return list({r.oid: r for r in found}.values())


def _lookup(by_name: dict[TableName, Relation], name: TableName, schemas: tuple[str, ...]) -> list[Relation]:
    """The relation in the schema the name gives, or in each selected schema for a bare name; in
    each, as written first, then folded to lower case where the parts were not quoted."""
    schema_spellings, name_spellings = name.candidates()
    if schema_spellings is not None:
        return _spelled(by_name, schema_spellings, name_spellings)[:1]
    return [r for schema in schemas for r in _spelled(by_name, [schema], name_spellings)[:1]]


def _spelled(by_name: dict[TableName, Relation], schemas: list[str], names: list[str]) -> list[Relation]:
    """The relations found under each spelling, the first spelling first."""
    return [by_name[TableName(s, n)] for s in schemas for n in names if TableName(s, n) in by_name]
