"""Comments on the migrated relations, their columns, indexes and constraints, and on the
schemas and their types, domains, functions and procedures.

The schema dump's ``COMMENT`` entries name their objects by text only, so they are not restored
from it: the post-data stage reads each relation's comments from the source's catalog and writes
them with ``COMMENT ON`` (names quoted, text as a literal), after the indexes and keys exist.
``COMMENT ON`` replaces what is there, so a re-run writes them again harmlessly. The verify stage
compares them, side against side, by the same read (those of schema-level objects with their
definitions, :mod:`~airflow_pool_provider.migration.definitions`).
"""

from __future__ import annotations

from dataclasses import dataclass

from psycopg2 import sql

from airflow_pool_provider.copy.names import TableName

# kind: the relation's COMMENT ON keyword, or COLUMN, INDEX, CONSTRAINT; name: of the column,
# index or constraint ('' for the relation itself).
_COMMENTS = """
SELECT CASE c.relkind WHEN 'r' THEN 'TABLE' WHEN 'p' THEN 'TABLE' WHEN 'v' THEN 'VIEW'
                      WHEN 'm' THEN 'MATERIALIZED VIEW' WHEN 'S' THEN 'SEQUENCE' WHEN 'f' THEN 'FOREIGN TABLE' END,
       '', d.description
  FROM pg_class c JOIN pg_description d ON d.objoid = c.oid AND d.classoid = 'pg_class'::regclass AND d.objsubid = 0
 WHERE c.oid = to_regclass(%(t)s)
UNION ALL
SELECT 'COLUMN', a.attname, d.description
  FROM pg_description d JOIN pg_attribute a ON a.attrelid = d.objoid AND a.attnum = d.objsubid
 WHERE d.objoid = to_regclass(%(t)s) AND d.classoid = 'pg_class'::regclass AND d.objsubid > 0
UNION ALL
SELECT 'INDEX', c.relname, d.description
  FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
  JOIN pg_description d ON d.objoid = c.oid AND d.classoid = 'pg_class'::regclass AND d.objsubid = 0
 WHERE i.indrelid = to_regclass(%(t)s)
UNION ALL
SELECT 'CONSTRAINT', k.conname, d.description
  FROM pg_constraint k JOIN pg_description d ON d.objoid = k.oid AND d.classoid = 'pg_constraint'::regclass
 WHERE k.conrelid = to_regclass(%(t)s)
"""

# Comments on the schemas and on their types, domains, functions and procedures (not those of
# extensions): kind, schema, name, the argument list of a function, text. Read with an empty
# search_path, so that the argument types are schema-qualified.
_SCHEMA_LEVEL_COMMENTS = """
SELECT 'SCHEMA', n.nspname, '', '', d.description
  FROM pg_namespace n JOIN pg_description d ON d.objoid = n.oid AND d.classoid = 'pg_namespace'::regclass
 WHERE n.nspname = ANY(%(schemas)s)
UNION ALL
SELECT CASE t.typtype WHEN 'd' THEN 'DOMAIN' ELSE 'TYPE' END, n.nspname, t.typname, '', d.description
  FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
  JOIN pg_description d ON d.objoid = t.oid AND d.classoid = 'pg_type'::regclass
 WHERE n.nspname = ANY(%(schemas)s) AND t.typtype IN ('e', 'd', 'c', 'r')
   AND (t.typtype <> 'c' OR (SELECT relkind FROM pg_class WHERE oid = t.typrelid) = 'c')
   AND NOT EXISTS (SELECT 1 FROM pg_depend e WHERE e.objid = t.oid AND e.deptype = 'e')
UNION ALL
SELECT CASE p.prokind WHEN 'p' THEN 'PROCEDURE' ELSE 'FUNCTION' END, n.nspname, p.proname,
       pg_get_function_identity_arguments(p.oid), d.description
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
  JOIN pg_description d ON d.objoid = p.oid AND d.classoid = 'pg_proc'::regclass
 WHERE n.nspname = ANY(%(schemas)s) AND p.prokind IN ('f', 'p')
   AND NOT EXISTS (SELECT 1 FROM pg_depend e WHERE e.objid = p.oid AND e.deptype = 'e')
"""


@dataclass(frozen=True, order=True)
class SchemaLevelComment:
    kind: str  # SCHEMA, TYPE, DOMAIN, FUNCTION or PROCEDURE
    schema: str
    name: str  # '' for the schema itself
    arguments: str  # of a function or procedure, as PostgreSQL prints them
    text: str

    def statement(self) -> sql.Composable:
        names = (self.schema, self.name) if self.name else (self.schema,)
        target = sql.SQL(self.kind + " {}").format(sql.Identifier(*names))
        if self.kind in ("FUNCTION", "PROCEDURE"):
            # The argument list is PostgreSQL's own rendering (its identifiers quoted by the server):
            # there is no composable form of a signature.
            target = sql.SQL("{}({})").format(target, sql.SQL(self.arguments))
        return sql.SQL("COMMENT ON {} IS {}").format(target, sql.Literal(self.text))


def restore_schema_level(scur, tcur, schemas: tuple[str, ...]) -> int:
    """Write the source's comments on the schemas and their types and functions in the target;
    how many (``COMMENT ON`` replaces, so a re-run writes them again harmlessly)."""
    scur.execute("SELECT current_setting('search_path'), set_config('search_path', '', true)")
    search_path = scur.fetchone()[0]
    try:
        scur.execute(_SCHEMA_LEVEL_COMMENTS, {"schemas": list(schemas)})
        found = sorted(SchemaLevelComment(*row) for row in scur.fetchall())
    finally:
        scur.execute("SELECT set_config('search_path', %s, true)", (search_path,))
    for comment in found:
        tcur.execute(comment.statement())
    return len(found)


@dataclass(frozen=True, order=True)
class Comment:
    relation: TableName
    kind: str  # TABLE, VIEW, MATERIALIZED VIEW, SEQUENCE, FOREIGN TABLE, COLUMN, INDEX or CONSTRAINT
    name: str  # of the column, index or constraint; '' for the relation
    text: str

    def statement(self) -> sql.Composable:
        if self.kind == "COLUMN":
            target = sql.SQL("COLUMN {}").format(sql.Identifier(self.relation.schema, self.relation.name, self.name))
        elif self.kind == "INDEX":
            target = sql.SQL("INDEX {}").format(sql.Identifier(self.relation.schema, self.name))
        elif self.kind == "CONSTRAINT":
            target = sql.SQL("CONSTRAINT {} ON {}").format(sql.Identifier(self.name), self.relation.identifier())
        else:
            target = sql.SQL(self.kind + " {}").format(self.relation.identifier())
        return sql.SQL("COMMENT ON {} IS {}").format(target, sql.Literal(self.text))

    def describe(self) -> str:
        what = f"{self.kind.lower()} {self.name} of " if self.name else ""
        return f"comment on {what}{self.relation.name}"


def read(cur, relation: TableName) -> set[Comment]:
    """The comments on a relation, its columns, indexes and constraints."""
    cur.execute(_COMMENTS, {"t": str(relation)})
    return {Comment(relation, kind, name, text) for kind, name, text in cur.fetchall()}


def restore(scur, tcur, relations: list[TableName]) -> int:
    """Write the source's comments on ``relations`` in the target; how many."""
    written = 0
    for relation in relations:
        for comment in sorted(read(scur, relation)):
            tcur.execute(comment.statement())
            written += 1
    return written


def differences(scur, tcur, relation: TableName) -> list[str]:
    """The source's comments the target lacks or holds with another text."""
    return [c.describe() for c in sorted(read(scur, relation) - read(tcur, relation))]
