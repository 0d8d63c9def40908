"""What a source's schemas hold, read once: relations and the objects that hang off them.

The schema dump is filtered by object OID (each TOC entry names its catalog and OID), so the
catalog records which table every default, constraint, trigger, rule and owned sequence
belongs to, and which relations each view reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from airflow_pool_provider.copy.choices import Choice
from airflow_pool_provider.copy.names import TableName, quote_ident

_RELATIONS = """
SELECT c.oid, n.nspname, c.relname, c.relkind::text, p.inhparent, c.relispartition,
       greatest(c.reltuples, 0)::bigint, pg_total_relation_size(c.oid)
  FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace
  LEFT JOIN pg_inherits p ON p.inhrelid = c.oid AND c.relispartition
 WHERE n.nspname = ANY(%(schemas)s) AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
 ORDER BY n.nspname, c.relname
"""

# Objects that belong to one table: (catalog, oid, table oid).
_OWNED = """
SELECT 'pg_attrdef'::regclass::oid, d.oid, d.adrelid FROM pg_attrdef d WHERE d.adrelid = ANY(%(oids)s)
UNION ALL
SELECT 'pg_constraint'::regclass::oid, k.oid, k.conrelid FROM pg_constraint k WHERE k.conrelid = ANY(%(oids)s)
UNION ALL
SELECT 'pg_trigger'::regclass::oid, t.oid, t.tgrelid FROM pg_trigger t
 WHERE t.tgrelid = ANY(%(oids)s) AND NOT t.tgisinternal
UNION ALL
SELECT 'pg_rewrite'::regclass::oid, r.oid, r.ev_class FROM pg_rewrite r WHERE r.ev_class = ANY(%(oids)s)
UNION ALL
SELECT 'pg_class'::regclass::oid, d.objid, d.refobjid FROM pg_depend d
 WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
   AND d.refobjid = ANY(%(oids)s) AND d.deptype IN ('a', 'i') AND d.objsubid = 0
   AND (SELECT relkind FROM pg_class WHERE oid = d.objid) = 'S'
"""

# Relations each view (or materialized view) reads.
_VIEW_READS = """
SELECT DISTINCT r.ev_class, d.refobjid
  FROM pg_rewrite r JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid
 WHERE r.ev_class = ANY(%(views)s) AND d.refclassid = 'pg_class'::regclass AND d.refobjid <> r.ev_class
"""

# Extensions the relations depend on: column types, index operator classes, default functions, and
# the functions and types views use.
_EXTENSIONS = """
WITH objects AS (
    SELECT unnest(%(oids)s::oid[]) AS oid
    UNION SELECT i.indexrelid FROM pg_index i WHERE i.indrelid = ANY(%(oids)s)
    UNION SELECT d.oid FROM pg_attrdef d WHERE d.adrelid = ANY(%(oids)s)
    UNION SELECT r.oid FROM pg_rewrite r WHERE r.ev_class = ANY(%(oids)s)  -- what views call and read
    -- the schemas' own objects, which pre-data restores whatever the selection: types, domains,
    -- functions, text search configurations and dictionaries (an unaccent dictionary), collations
    UNION SELECT t.oid FROM pg_type t WHERE t.typnamespace = ANY(%(schemas)s::regnamespace[])
    UNION SELECT p.oid FROM pg_proc p WHERE p.pronamespace = ANY(%(schemas)s::regnamespace[])
    UNION SELECT c.oid FROM pg_ts_config c WHERE c.cfgnamespace = ANY(%(schemas)s::regnamespace[])
    UNION SELECT t.oid FROM pg_ts_dict t WHERE t.dictnamespace = ANY(%(schemas)s::regnamespace[])
    UNION SELECT c.oid FROM pg_collation c WHERE c.collnamespace = ANY(%(schemas)s::regnamespace[])
)
SELECT DISTINCT e.extname
  FROM objects o
  JOIN pg_depend d ON d.objid = o.oid
   AND NOT EXISTS (SELECT 1 FROM pg_depend x WHERE x.objid = o.oid AND x.deptype = 'e')  -- not a member
  JOIN pg_depend m ON m.classid = d.refclassid AND m.objid = d.refobjid AND m.deptype = 'e'
  JOIN pg_extension e ON e.oid = m.refobjid
 ORDER BY 1
"""


class RelKind(Choice):
    """``pg_class.relkind`` of the relations a migration reads."""

    TABLE = "r"
    PARTITIONED = "p"
    VIEW = "v"
    MATERIALIZED_VIEW = "m"
    SEQUENCE = "S"
    FOREIGN_TABLE = "f"


@dataclass(frozen=True, slots=True)
class Relation:
    oid: int
    name: TableName
    kind: RelKind
    parent: int | None  # the partitioned table of a partition
    estimated_rows: int
    bytes: int

    @property
    def is_table(self) -> bool:
        return self.kind in (RelKind.TABLE, RelKind.PARTITIONED)

    @property
    def is_partitioned(self) -> bool:
        return self.kind is RelKind.PARTITIONED

    @property
    def is_view(self) -> bool:
        return self.kind in (RelKind.VIEW, RelKind.MATERIALIZED_VIEW)


@dataclass(frozen=True)
class SourceCatalog:
    """The relations of some schemas and the objects owned by their tables."""

    schemas: tuple[str, ...]
    relations: dict[int, Relation]
    owner: dict[tuple[int, int], int]  # (catalog oid, object oid) -> table oid
    view_reads: dict[int, frozenset[int]] = field(default_factory=dict)
    roles: frozenset[str] = frozenset()  # every role of the source: the owners a schema dump names

    def by_name(self) -> dict[TableName, Relation]:
        return {r.name: r for r in self.relations.values()}

    def partitions_of(self, oid: int) -> list[Relation]:
        return [r for r in self.relations.values() if r.parent == oid]

    def descendants(self, oid: int) -> list[Relation]:
        """Every partition under a table, at any depth, each after its own partitions (a
        partitioned table's keys reuse its leaves', so they are built first)."""
        return [d for child in self.partitions_of(oid) for d in (*self.descendants(child.oid), child)]

    def leaves(self, oid: int) -> list[Relation]:
        """Where a table's rows are: itself, or the leaf partitions under it."""
        relation = self.relations[oid]
        if not relation.is_partitioned:
            return [relation]
        return [r for r in self.descendants(oid) if not r.is_partitioned]


def load(cur, schemas: tuple[str, ...]) -> SourceCatalog:
    cur.execute(_RELATIONS, {"schemas": list(schemas)})
    relations = {
        oid: Relation(oid, TableName(schema, name), RelKind(kind), parent if is_partition else None, rows, size)
        for oid, schema, name, kind, parent, is_partition, rows, size in cur.fetchall()
    }
    tables = [r.oid for r in relations.values() if r.is_table]
    cur.execute(_OWNED, {"oids": tables})
    owner = {(catalog, oid): table for catalog, oid, table in cur.fetchall()}
    views = [r.oid for r in relations.values() if r.is_view]
    cur.execute(_VIEW_READS, {"views": views})
    reads: dict[int, set[int]] = {}
    for view, relation in cur.fetchall():
        reads.setdefault(view, set()).add(relation)
    cur.execute("SELECT rolname FROM pg_roles")
    roles = frozenset(row[0] for row in cur.fetchall())
    return SourceCatalog(tuple(schemas), relations, owner, {v: frozenset(r) for v, r in reads.items()}, roles)


def extensions_used(cur, table_oids: list[int], schemas: tuple[str, ...]) -> list[str]:
    """Extensions whose types, operator classes, functions or text search templates the tables,
    or the schemas' own types, functions and text search objects, use."""
    cur.execute(_EXTENSIONS, {"oids": table_oids, "schemas": [quote_ident(s) for s in schemas]})
    return [row[0] for row in cur.fetchall()]


def installed_extensions(cur) -> set[str]:
    cur.execute("SELECT extname FROM pg_extension")
    return {row[0] for row in cur.fetchall()}


def existing_schemas(cur, schemas: tuple[str, ...]) -> set[str]:
    cur.execute("SELECT nspname FROM pg_namespace WHERE nspname = ANY(%s)", (list(schemas),))
    return {row[0] for row in cur.fetchall()}
