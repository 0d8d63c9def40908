"""What the engine needs to know about a table: its columns, its keys, how to name its types."""

from __future__ import annotations

from dataclasses import dataclass, field

from psycopg2 import sql

from airflow_pool_provider.copy.choices import Choice
from airflow_pool_provider.copy.names import TableName
from airflow_pool_provider.errors import CatalogError

FIRST_USER_OID = 16384

#: Types whose values are OIDs of catalog objects: binary COPY and binary hashes would carry the
#: source's OIDs, which mean other objects (or nothing) in the target. Copied as text (names).
OID_ALIAS_TYPES = (
    "regclass",
    "regcollation",
    "regconfig",
    "regdictionary",
    "regnamespace",
    "regoper",
    "regoperator",
    "regproc",
    "regprocedure",
    "regrole",
    "regtype",
)

_RELKINDS = {
    "v": "a view",
    "m": "a materialized view",
    "f": "a foreign table",
    "S": "a sequence",
    "c": "a composite type",
    "i": "an index",
    "I": "a partitioned index",
}


class Side(Choice):
    """Which end of a copy: rows are read from the source and written to the target."""

    SOURCE = "source"
    TARGET = "target"


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type: str  # format_type(): "numeric(12,2)", "my_enum[]", ...
    not_null: bool
    generated: bool
    identity: str  # "" | "a" (always) | "d" (by default)
    has_default: bool
    builtin: bool  # the type (and its element type) is built into PostgreSQL
    hashable: bool  # has a default hash operator class (arrays: their element type)
    collation: str | None  # effective collation ("default:<db collate>" for the default), if collatable
    oid_alias: bool = False  # regclass, regtype, ... (or an array of one): values are catalog OIDs

    @property
    def ident(self) -> sql.Identifier:
        return sql.Identifier(self.name)

    @property
    def portable_binary(self) -> bool:
        """Its binary form means the same in another database (built in, and not an OID)."""
        return self.builtin and not self.oid_alias


@dataclass(frozen=True, slots=True)
class Table:
    name: TableName  # schema-qualified, as found in the catalog
    oid: int
    columns: tuple[Column, ...]
    unique_keys: tuple[tuple[str, ...], ...]  # primary key first, then usable unique btree indexes
    primary_key: tuple[str, ...] | None
    estimated_rows: int
    pages: int
    partitioned: bool = False
    by_name: dict[str, Column] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        self.by_name.update({c.name: c for c in self.columns})

    @property
    def ident(self) -> sql.Identifier:
        return self.name.identifier()

    @property
    def own_rows(self) -> sql.Composable:
        """The table to read, count or truncate: ``ONLY`` it, as pg_dump does, so rows of tables that
        inherit from it stay theirs; a partitioned table holds no rows of its own, so all of it."""
        return self.ident if self.partitioned else sql.SQL("ONLY {}").format(self.ident)

    def copyable_columns(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns if not c.generated)


_FIND = """
SELECT c.oid, n.nspname, c.relname, c.relkind::text
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relname = ANY(%(names)s)
   AND CASE WHEN %(schemas)s::text[] IS NULL THEN pg_table_is_visible(c.oid)
            ELSE n.nspname = ANY(%(schemas)s) END
 ORDER BY c.relkind IN ('r', 'p') DESC, c.relname = %(exact)s DESC, n.nspname = %(exact_schema)s DESC
 LIMIT 1
"""

_COLUMNS = """
SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull, a.attgenerated <> '',
       a.attidentity::text, a.atthasdef,
       a.atttypid < %(first_user_oid)s
       AND (t.typelem = 0 OR t.typelem < %(first_user_oid)s),
       EXISTS (SELECT 1 FROM pg_opclass o JOIN pg_am m ON m.oid = o.opcmethod AND m.amname = 'hash'
                WHERE o.opcdefault
                  AND o.opcintype = CASE WHEN t.typelem <> 0 AND t.typlen = -1
                                         THEN t.typelem ELSE a.atttypid END),
       CASE WHEN a.attcollation = 0 THEN NULL
            WHEN co.collname = 'default'
            THEN 'default:' || (SELECT datcollate FROM pg_database WHERE datname = current_database())
            ELSE co.collname END,
       (SELECT e.typname FROM pg_type e
         WHERE e.oid = CASE WHEN t.typelem <> 0 AND t.typlen = -1 THEN t.typelem ELSE t.oid END)
       = ANY(%(oid_aliases)s)
  FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
  LEFT JOIN pg_collation co ON co.oid = a.attcollation
 WHERE a.attrelid = %(oid)s AND a.attnum > 0 AND NOT a.attisdropped
 ORDER BY a.attnum
"""

# Unique btree indexes on plain, NOT NULL columns, valid and not partial: usable as a keyset.
_KEYS = """
SELECT i.indisprimary,
       array_agg(a.attname ORDER BY k.ord) AS cols
  FROM pg_index i
  JOIN pg_class ic ON ic.oid = i.indexrelid
  JOIN pg_am am ON am.oid = ic.relam AND am.amname = 'btree'
  CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
  JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
 WHERE i.indrelid = %(oid)s AND i.indisunique AND i.indisvalid AND i.indpred IS NULL
   AND i.indexprs IS NULL
 GROUP BY i.indexrelid, i.indisprimary
HAVING bool_and(a.attnotnull)
 ORDER BY i.indisprimary DESC, count(*), min(ic.relname)
"""


def load_table(cur, name: TableName, side: Side) -> Table:
    """Read a table's definition; ``side`` only shapes the error message."""
    schemas, names = name.candidates()
    cur.execute(_FIND, {"names": names, "schemas": schemas, "exact": name.name, "exact_schema": name.schema})
    row = cur.fetchone()
    if row is None:
        where = f"schema {name.schema!r}" if name.schema else "the search_path"
        advice = "create it first, or check the name" if side == Side.TARGET else "check the name and the connection"
        raise CatalogError(
            f'{side} table {name} does not exist in {where}: {advice} (quote mixed-case names as "Name")'
        )
    oid, schema, relname, relkind = row
    if relkind not in ("r", "p"):
        raise CatalogError(_not_a_table(side, TableName(schema, relname), relkind))
    cur.execute(_COLUMNS, {"oid": oid, "first_user_oid": FIRST_USER_OID, "oid_aliases": list(OID_ALIAS_TYPES)})
    columns = tuple(Column(*r) for r in cur.fetchall())
    cur.execute(_KEYS, {"oid": oid})
    keys = [(primary, tuple(cols)) for primary, cols in cur.fetchall()]
    cur.execute(
        "SELECT greatest(c.reltuples, 0)::bigint, "
        "pg_relation_size(c.oid) / current_setting('block_size')::int FROM pg_class c WHERE c.oid = %s",
        (oid,),
    )
    estimated_rows, pages = cur.fetchone()
    return Table(
        name=TableName(schema, relname),  # as found: quoted, exact
        oid=oid,
        columns=columns,
        unique_keys=tuple(cols for _, cols in keys),
        primary_key=next((cols for primary, cols in keys if primary), None),
        estimated_rows=estimated_rows,
        pages=pages,
        partitioned=relkind == "p",
    )


def _not_a_table(side: Side, name: TableName, relkind: str) -> str:
    what = _RELKINDS.get(relkind, f"a relation of kind {relkind!r}")
    if side == Side.TARGET:
        return (
            f"target {name} is {what}, not a table: COPY can only load tables. Name the table to load as target_table"
        )
    advice = (
        "copy the table(s) it reads from instead (with where=... for a subset), or "
        f"materialize it first (CREATE TABLE ... AS SELECT * FROM {name}) and copy that table"
    )
    return (
        f"source {name} is {what}, not a table: the copy splits tables into chunks by key or "
        f"by page, which {what} does not have. To copy its rows, {advice}"
    )


@dataclass(frozen=True, slots=True)
class ColumnDifference:
    """One way the two tables differ in a column that the copy needs alike."""

    column: str
    problem: str  # a sentence naming the column, for messages and plans

    def __str__(self) -> str:
        return self.problem


class TableMismatch(CatalogError):
    """Source and target differ where the copy needs them alike; ``differences`` lists how."""

    def __init__(self, message: str, differences: tuple[ColumnDifference, ...] = ()) -> None:
        super().__init__(message)
        self.differences = differences


def check_compatible(source: Table, target: Table, columns: tuple[str, ...]) -> None:
    """Raise one TableMismatch listing every difference that would make the copy wrong."""
    differences = tuple(differences_between(source, target, columns))
    if differences:
        raise TableMismatch(
            f"source {source.name} and target {target.name} do not match:\n  - "
            + "\n  - ".join(map(str, differences))
            + "\nAlign the target's columns and types with the source, or pass columns=[...].",
            differences,
        )


def differences_between(source: Table, target: Table, columns: tuple[str, ...]) -> list[ColumnDifference]:
    """How the copied ``columns`` and the target's other columns keep the copy from being right."""
    found = [d for col in columns for d in _column_differences(col, source, target)]
    return found + _required_left_out(target, columns)


def _column_differences(col: str, source: Table, target: Table) -> list[ColumnDifference]:
    """What keeps one copied column from being copied as it is."""
    src, dst = source.by_name.get(col), target.by_name.get(col)
    problems = []
    if src is None:
        problems.append(f"column {col!r} is not in source table {source.name}")
    elif src.generated:
        problems.append(f"column {col!r} is generated in the source; leave it out of columns")
    if dst is None:
        problems.append(f"column {col!r} is not in target table {target.name}")
    elif dst.generated:
        problems.append(f"column {col!r} is generated in the target (it computes it); leave it out")
    if src is not None and dst is not None and src.type != dst.type:
        problems.append(f"column {col!r} is {src.type} in the source but {dst.type} in the target")
    return [ColumnDifference(col, p) for p in problems]


def _required_left_out(target: Table, columns: tuple[str, ...]) -> list[ColumnDifference]:
    """Target columns not copied that a row cannot do without (NOT NULL, no default)."""
    return [
        ColumnDifference(dst.name, f"target column {dst.name!r} is NOT NULL, has no default and is not copied")
        for dst in target.columns
        if dst.name not in columns and dst.not_null and not (dst.generated or dst.identity or dst.has_default)
    ]
