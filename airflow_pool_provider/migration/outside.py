"""What the selection uses from outside the migration, checked in the plan.

The schema dump holds the selected schemas only: a type or function of another schema that a
selected table, view, default, constraint, trigger or the schemas' own types and functions use,
a relation a rule reads or writes, and the objects that ``regclass``, ``regtype``,
``regproc(edure)`` and ``regnamespace`` values name (copied as names), must exist in the target
already, or the restore or the copy fails half-way. Each is looked up in the target by schema,
name and (for a function) argument types; what is missing there is refused, with the choices.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from psycopg2 import sql

from airflow_pool_provider.migration.selection import Selection

_SHOWN = 5  # users named per missing object; the rest are counted

# A function's argument types, schema-qualified, as one text (search_path plays no part).
_SIGNATURE = """array_to_string(ARRAY(
    SELECT quote_ident(tn.nspname) || '.' || quote_ident(t.typname)
      FROM unnest(p.proargtypes::oid[]) WITH ORDINALITY AS a(type, i)
      JOIN pg_type t ON t.oid = a.type JOIN pg_namespace tn ON tn.oid = t.typnamespace
     ORDER BY a.i), ',')"""

# The uses ({uses}: refclassid, refobjid, user_label) of objects a migration does not bring:
# outside the selected schemas, or (relations) not selected. Each with its key and its label.
_OUTSIDE = (
    """
SELECT DISTINCT o.kind, n.nspname, o.name, o.signature, pg_describe_object(u.refclassid, u.refobjid, 0), u.user_label
  FROM ({uses}) AS u
 CROSS JOIN LATERAL (
    SELECT 'relation' AS kind, c.relnamespace AS ns, c.relname::text AS name, '' AS signature
      FROM pg_class c WHERE u.refclassid = 'pg_class'::regclass AND c.oid = u.refobjid
    UNION ALL
    SELECT 'type', t.typnamespace, t.typname::text, '' FROM pg_type t
     WHERE u.refclassid = 'pg_type'::regclass AND t.oid = u.refobjid
    UNION ALL
    SELECT 'function', p.pronamespace, p.proname::text, """
    + _SIGNATURE
    + """ FROM pg_proc p
     WHERE u.refclassid = 'pg_proc'::regclass AND p.oid = u.refobjid
    UNION ALL
    SELECT 'schema', s.oid, '', '' FROM pg_namespace s
     WHERE u.refclassid = 'pg_namespace'::regclass AND s.oid = u.refobjid
 ) AS o
  JOIN pg_namespace n ON n.oid = o.ns
 WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
   AND CASE o.kind
       WHEN 'relation' THEN u.refobjid <> ALL(%(restored)s) AND NOT EXISTS (
           SELECT 1 FROM pg_index i WHERE i.indexrelid = u.refobjid AND i.indrelid = ANY(%(restored)s))
       ELSE n.nspname <> ALL(%(schemas)s) END
 ORDER BY 2, 3, 4, 6
"""
)

# Types and functions used by the selected relations, their indexes, defaults, constraints,
# triggers, rules and policies, and by the selected schemas' own types, domains and functions
# (pre-data restores them all). An array type stands for its element type; extensions' objects
# are left out (the extension check names the extension).
_TYPES_AND_FUNCTIONS = """
WITH rels AS (SELECT unnest(%(restored)s::oid[]) AS oid),
own AS (SELECT oid FROM pg_namespace WHERE nspname = ANY(%(schemas)s)),
users(classid, objid) AS (
    SELECT 'pg_class'::regclass, oid FROM rels
    UNION ALL SELECT 'pg_class'::regclass, indexrelid FROM pg_index WHERE indrelid IN (SELECT oid FROM rels)
    UNION ALL SELECT 'pg_attrdef'::regclass, oid FROM pg_attrdef WHERE adrelid IN (SELECT oid FROM rels)
    UNION ALL SELECT 'pg_constraint'::regclass, oid FROM pg_constraint WHERE conrelid IN (SELECT oid FROM rels)
    UNION ALL SELECT 'pg_trigger'::regclass, oid FROM pg_trigger
     WHERE tgrelid IN (SELECT oid FROM rels) AND NOT tgisinternal
    UNION ALL SELECT 'pg_rewrite'::regclass, oid FROM pg_rewrite WHERE ev_class IN (SELECT oid FROM rels)
    UNION ALL SELECT 'pg_policy'::regclass, oid FROM pg_policy WHERE polrelid IN (SELECT oid FROM rels)
    UNION ALL SELECT 'pg_type'::regclass, oid FROM pg_type WHERE typnamespace IN (SELECT oid FROM own)
    UNION ALL SELECT 'pg_constraint'::regclass, k.oid FROM pg_constraint k JOIN pg_type t ON t.oid = k.contypid
     WHERE t.typnamespace IN (SELECT oid FROM own)
    UNION ALL SELECT 'pg_class'::regclass, oid FROM pg_class
     WHERE relkind = 'c' AND relnamespace IN (SELECT oid FROM own)
    UNION ALL SELECT 'pg_proc'::regclass, oid FROM pg_proc WHERE pronamespace IN (SELECT oid FROM own)
),
uses AS (
    SELECT d.refclassid,
           CASE WHEN d.refclassid = 'pg_type'::regclass THEN coalesce((
               SELECT t.typelem FROM pg_type t WHERE t.oid = d.refobjid AND t.typcategory = 'A' AND t.typelem <> 0
           ), d.refobjid) ELSE d.refobjid END AS refobjid,
           CASE WHEN w.ev_class IS NOT NULL THEN pg_describe_object('pg_class'::regclass, w.ev_class, 0)
                ELSE pg_describe_object(d.classid, d.objid, d.objsubid) END AS user_label
      FROM users s
      JOIN pg_depend d ON d.classid = s.classid AND d.objid = s.objid
      LEFT JOIN pg_rewrite w ON d.classid = 'pg_rewrite'::regclass AND w.oid = d.objid AND w.rulename = '_RETURN'
     WHERE d.refclassid IN ('pg_type'::regclass, 'pg_proc'::regclass)
       AND NOT EXISTS (SELECT 1 FROM pg_depend e WHERE e.classid = s.classid AND e.objid = s.objid AND e.deptype = 'e')
)
SELECT * FROM uses
 WHERE NOT EXISTS (SELECT 1 FROM pg_depend e WHERE e.classid = uses.refclassid AND e.objid = uses.refobjid
                     AND e.deptype = 'e')
"""

# Relations the rules of the selected relations (not a view's own _RETURN rule) read or write.
_RULE_READS = """
SELECT DISTINCT d.refclassid, d.refobjid, pg_describe_object(d.classid, d.objid, 0) AS user_label
  FROM pg_rewrite r
  JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid AND d.refclassid = 'pg_class'::regclass
 WHERE r.ev_class = ANY(%(restored)s) AND r.rulename <> '_RETURN' AND d.refobjid <> r.ev_class
"""

# Columns of the selected tables whose type, or a domain's base type at any depth, names catalog
# objects by OID (copied as names), with the catalog of the objects they name.
_NAMING_COLUMNS = """
WITH RECURSIVE chain(type, base) AS (
    SELECT DISTINCT a.atttypid, a.atttypid FROM pg_attribute a
     WHERE a.attrelid = ANY(%(tables)s) AND a.attnum > 0 AND NOT a.attisdropped
    UNION ALL
    SELECT c.type, t.typbasetype FROM chain c JOIN pg_type t ON t.oid = c.base WHERE t.typtype = 'd'
)
SELECT a.attrelid, a.attnum, a.attname,
       CASE c.base WHEN 'regclass'::regtype THEN 'pg_class'::regclass
                   WHEN 'regtype'::regtype THEN 'pg_type'::regclass
                   WHEN 'regnamespace'::regtype THEN 'pg_namespace'::regclass
                   ELSE 'pg_proc'::regclass END::oid
  FROM pg_attribute a JOIN chain c ON c.type = a.atttypid
 WHERE a.attrelid = ANY(%(tables)s) AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
   AND c.base IN ('regclass'::regtype, 'regtype'::regtype, 'regproc'::regtype, 'regprocedure'::regtype,
                  'regnamespace'::regtype)
 ORDER BY 1, 2
"""

# Which of the keys (kind, schema, name, signature) the target has.
_TARGET_HAS = (
    """
SELECT x.kind, x.schema, x.name, x.signature
  FROM unnest(%(kinds)s::text[], %(schemas)s::text[], %(names)s::text[], %(signatures)s::text[])
       AS x(kind, schema, name, signature)
 WHERE CASE x.kind
       WHEN 'relation' THEN EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                                     WHERE n.nspname = x.schema AND c.relname = x.name)
       WHEN 'type' THEN EXISTS (SELECT 1 FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
                                 WHERE n.nspname = x.schema AND t.typname = x.name)
       WHEN 'function' THEN EXISTS (SELECT 1 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                                     WHERE n.nspname = x.schema AND p.proname = x.name AND """
    + _SIGNATURE
    + """ = x.signature)
       ELSE EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = x.schema) END
"""
)


@dataclass(frozen=True, slots=True)
class ObjectKey:
    """How an object is found in another database: kind, schema, name, argument types."""

    kind: str  # relation, type, function or schema
    schema: str
    name: str
    signature: str  # a function's argument types, schema-qualified; empty for the others


@dataclass(frozen=True, slots=True)
class OutsideUse:
    """A selected object (``user``) that uses an object the migration does not bring."""

    key: ObjectKey
    label: str  # as the source describes it: "function util.slug(text)"
    user: str  # "default value for column slug of table items"


def check(scur, tcur, selection: Selection, problems: list[str]) -> None:
    """Add to ``problems`` every object outside the migration that the selection needs and the
    target lacks."""
    schemas = list(selection.catalog.schemas)
    params = {"restored": sorted(selection.restored), "schemas": schemas}
    types_and_functions = _outside(scur, sql.SQL(_TYPES_AND_FUNCTIONS), params)
    rule_reads = _outside(scur, sql.SQL(_RULE_READS), params)
    named = _named_by_values(scur, selection, params)
    missing = _missing_in_target(tcur, [*types_and_functions, *rule_reads, *named])
    problems += _missing_objects([u for u in types_and_functions if u.key in missing])
    problems += _missing_relations_of_rules([u for u in rule_reads if u.key in missing])
    problems += _missing_named_objects([u for u in named if u.key in missing])


def _outside(scur, uses: sql.Composable, params: dict) -> list[OutsideUse]:
    scur.execute(sql.SQL(_OUTSIDE).format(uses=uses), params)
    return [
        OutsideUse(ObjectKey(kind, schema, name, signature), label, user)
        for kind, schema, name, signature, label, user in scur.fetchall()
    ]


def _named_by_values(scur, selection: Selection, params: dict) -> list[OutsideUse]:
    """Objects named by the values of the selected tables' OID-alias columns: one pass over each
    table that has such columns (a partitioned table through its partitions). Only values that
    name existing objects outside the migration come back, so the answer is as small as the catalog."""
    tables = {t.oid: t for t in selection.tables}
    scur.execute(_NAMING_COLUMNS, {"tables": list(tables)})
    columns: dict[int, list[tuple[int, str, int]]] = {}
    for table, attnum, name, catalog in scur.fetchall():
        columns.setdefault(table, []).append((attnum, name, catalog))
    uses = []
    for table, named in columns.items():
        relation = tables[table]
        values = sql.SQL(", ").join(
            sql.SQL("({}, {}, {}::oid)").format(sql.Literal(catalog), sql.Literal(attnum), sql.Identifier(name))
            for attnum, name, catalog in named
        )
        query = sql.SQL(
            "SELECT v.catalog AS refclassid, v.value AS refobjid,"
            " pg_describe_object('pg_class'::regclass, {oid}, v.attnum) AS user_label"
            " FROM (SELECT DISTINCT x.catalog, x.attnum, x.value FROM {only} {table}"
            " CROSS JOIN LATERAL (VALUES {values}) AS x(catalog, attnum, value) WHERE x.value IS NOT NULL) AS v"
        ).format(
            oid=sql.Literal(table),
            only=sql.SQL("" if relation.is_partitioned else "ONLY"),
            table=relation.name.identifier(),
            values=values,
        )
        uses += _outside(scur, query, params)
    return uses


def _missing_in_target(tcur, uses: list[OutsideUse]) -> set[ObjectKey]:
    keys = sorted({u.key for u in uses}, key=lambda k: (k.kind, k.schema, k.name, k.signature))
    if not keys:
        return set()
    tcur.execute(
        _TARGET_HAS,
        {
            "kinds": [k.kind for k in keys],
            "schemas": [k.schema for k in keys],
            "names": [k.name for k in keys],
            "signatures": [k.signature for k in keys],
        },
    )
    return set(keys) - {ObjectKey(*row) for row in tcur.fetchall()}


def _by_object(uses: Iterable[OutsideUse]) -> dict[tuple[ObjectKey, str], list[str]]:
    grouped: dict[tuple[ObjectKey, str], list[str]] = {}
    for use in uses:
        grouped.setdefault((use.key, use.label), []).append(use.user)
    return grouped


def _some(users: list[str]) -> str:
    more = len(users) - _SHOWN
    return ", ".join(users[:_SHOWN]) + (f" and {more} more" if more > 0 else "")


def _missing_objects(uses: list[OutsideUse]) -> list[str]:
    return [
        f"{label}, in schema {key.schema!r} which is not migrated and missing in the target, is used by "
        f"{_some(users)}: add {key.schema!r} to schemas, or create it in the target first"
        for (key, label), users in _by_object(uses).items()
    ]


def _missing_relations_of_rules(uses: list[OutsideUse]) -> list[str]:
    return [
        f"{u.user} reads or writes {u.label}, which is not migrated and missing in the target: add it to the "
        f"selection (tables, or {u.key.schema!r} to schemas), create it in the target first, or drop the rule"
        for u in uses
    ]


def _missing_named_objects(uses: list[OutsideUse]) -> list[str]:
    by_column: dict[str, list[str]] = {}
    for use in uses:
        by_column.setdefault(use.user, []).append(use.label)
    return [
        f"{column} holds values naming {_some(labels)}, which are not migrated and missing in the target "
        "(the copy writes them as names: they would fail, or name other objects): add their schemas to "
        "schemas or create them in the target first, or leave the table out with exclude_tables"
        for column, labels in by_column.items()
    ]
