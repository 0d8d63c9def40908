"""What a database holds, read from its catalogs, to compare a migration's source and target
independently of the migration's own checks: an inventory of its objects and a digest of every
table's rows.

Everything is read with ``search_path`` empty, so every name in a definition is schema-qualified
and both sides print alike. The migration's ledgers (``airflow_pool_provider_*``) are left out.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from psycopg2 import sql

_LEDGER = "airflow_pool_provider\\_%"

# The user's schemas: not the system's, not the ones extensions own.
_SCHEMAS = """
SELECT n.oid FROM pg_namespace n
 WHERE n.nspname !~ '^pg_' AND n.nspname <> 'information_schema'
"""
# Objects that belong to an extension (its functions, types, operators) come with CREATE EXTENSION.
_NOT_EXTENSION = (
    "NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = {catalog}::regclass AND d.objid = {oid} "
    "AND d.deptype = 'e')"
)

#: Each kind of object: a query of (identity, definition) rows, the identity unique in its kind.
QUERIES: dict[str, str] = {
    "schema": """
        SELECT nspname, '' FROM pg_namespace WHERE oid IN ({schemas})""",
    "extension": """
        SELECT extname, extversion || ' in ' || extnamespace::regnamespace FROM pg_extension""",
    "relation": """
        SELECT c.oid::regclass::text,
               c.relkind::text || ' ' || c.relpersistence::text
               || coalesce(' ' || pg_get_expr(c.relpartbound, c.oid), '')
               || coalesce(' partitioned by ' || pg_get_partkeydef(c.oid), '')
               || coalesce(' inherits ' || (SELECT string_agg(i.inhparent::regclass::text, ',' ORDER BY i.inhseqno)
                                              FROM pg_inherits i WHERE i.inhrelid = c.oid AND NOT c.relispartition), '')
               || coalesce(' options ' || array_to_string(c.reloptions, ','), '')
          FROM pg_class c
         WHERE c.relnamespace IN ({schemas}) AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f', 'c')
           AND c.relname NOT LIKE '{ledger}' AND {not_extension_class}""",
    "column": """
        SELECT c.oid::regclass::text || '.' || quote_ident(a.attname),
               format_type(a.atttypid, a.atttypmod)
               || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
               || coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), '')
               || CASE WHEN a.attidentity <> '' THEN ' identity ' || a.attidentity::text ELSE '' END
               || CASE WHEN a.attgenerated <> '' THEN ' generated' ELSE '' END
               || coalesce(' collate ' || (SELECT co.oid::regcollation::text FROM pg_collation co
                                          WHERE co.oid = a.attcollation AND a.attcollation <> t.typcollation), '')
               || ' storage ' || a.attstorage::text || ' stats ' || a.attstattarget
          FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_type t ON t.oid = a.atttypid
          LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
         WHERE c.relnamespace IN ({schemas}) AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'c')
           AND a.attnum > 0 AND NOT a.attisdropped AND c.relname NOT LIKE '{ledger}' AND {not_extension_class}""",
    "index": """
        SELECT i.indexrelid::regclass::text,
               pg_get_indexdef(i.indexrelid)
               || CASE WHEN i.indisclustered THEN ' clustered' ELSE '' END
               || CASE WHEN i.indisvalid THEN '' ELSE ' INVALID' END
          FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
         WHERE c.relnamespace IN ({schemas}) AND c.relname NOT LIKE '{ledger}'""",
    "constraint": """
        SELECT coalesce(co.conrelid::regclass::text, co.contypid::regtype::text) || ' ' || quote_ident(co.conname),
               pg_get_constraintdef(co.oid)
          FROM pg_constraint co
          LEFT JOIN pg_class c ON c.oid = co.conrelid
         WHERE co.connamespace IN ({schemas}) AND coalesce(c.relname, '') NOT LIKE '{ledger}'""",
    "constraint state": """
        SELECT coalesce(co.conrelid::regclass::text, co.contypid::regtype::text) || ' ' || quote_ident(co.conname),
               CASE WHEN co.convalidated THEN 'valid' ELSE 'NOT VALID' END
               || CASE WHEN co.condeferrable THEN ' deferrable' ELSE '' END
               || CASE WHEN co.condeferred THEN ' deferred' ELSE '' END
          FROM pg_constraint co
          LEFT JOIN pg_class c ON c.oid = co.conrelid
         WHERE co.connamespace IN ({schemas}) AND coalesce(c.relname, '') NOT LIKE '{ledger}'""",
    "view": """
        SELECT c.oid::regclass::text, pg_get_viewdef(c.oid)
          FROM pg_class c WHERE c.relnamespace IN ({schemas}) AND c.relkind IN ('v', 'm')""",
    "materialized view populated": """
        SELECT c.oid::regclass::text, c.relispopulated::text
          FROM pg_class c WHERE c.relnamespace IN ({schemas}) AND c.relkind = 'm'""",
    "sequence": """
        SELECT s.seqrelid::regclass::text,
               format_type(s.seqtypid, NULL) || ' start ' || s.seqstart || ' by ' || s.seqincrement
               || ' ' || s.seqmin || '..' || s.seqmax || ' cache ' || s.seqcache
               || CASE WHEN s.seqcycle THEN ' cycle' ELSE '' END
               || coalesce(' owned by ' || (SELECT d.refobjid::regclass::text || '.' || quote_ident(a.attname)
                                             FROM pg_depend d JOIN pg_attribute a
                                               ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
                                            WHERE d.classid = 'pg_class'::regclass AND d.objid = s.seqrelid
                                              AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')), '')
               || ' last ' || coalesce(q.last_value::text, 'null')
          FROM pg_sequence s JOIN pg_class c ON c.oid = s.seqrelid
          JOIN pg_sequences q ON q.schemaname = c.relnamespace::regnamespace::text AND q.sequencename = c.relname
         WHERE c.relnamespace IN ({schemas}) AND c.relname NOT LIKE '{ledger}'""",
    "type": """
        SELECT t.oid::regtype::text,
               t.typtype::text || coalesce(' over ' || nullif(t.typbasetype, 0)::regtype::text, '')
               || CASE WHEN t.typnotnull THEN ' not null' ELSE '' END
               || coalesce(' default ' || t.typdefault, '')
               || coalesce(' labels ' || (SELECT string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder)
                                           FROM pg_enum e WHERE e.enumtypid = t.oid), '')
               || coalesce(' range of ' || (SELECT r.rngsubtype::regtype::text FROM pg_range r
                                             WHERE r.rngtypid = t.oid), '')
          FROM pg_type t
         WHERE t.typnamespace IN ({schemas}) AND t.typtype IN ('e', 'd', 'r', 'm', 'b')
           AND t.typcategory <> 'A' AND {not_extension_type}""",
    "function": """
        SELECT p.oid::regprocedure::text,
               CASE WHEN p.prokind = 'a' THEN 'aggregate' ELSE pg_get_functiondef(p.oid) END
          FROM pg_proc p WHERE p.pronamespace IN ({schemas}) AND {not_extension_proc}""",
    "trigger": """
        SELECT tg.tgrelid::regclass::text || ' ' || quote_ident(tg.tgname),
               pg_get_triggerdef(tg.oid) || ' enabled ' || tg.tgenabled::text
          FROM pg_trigger tg JOIN pg_class c ON c.oid = tg.tgrelid
         WHERE c.relnamespace IN ({schemas}) AND NOT tg.tgisinternal""",
    "rule": """
        SELECT quote_ident(schemaname) || '.' || quote_ident(tablename) || ' ' || quote_ident(rulename), definition
          FROM pg_rules WHERE schemaname::regnamespace IN ({schemas})""",
    "policy": """
        SELECT quote_ident(schemaname) || '.' || quote_ident(tablename) || ' ' || quote_ident(policyname),
               permissive || ' ' || cmd || ' ' || roles::text
               || ' ' || coalesce(qual, '') || ' ' || coalesce(with_check, '')
          FROM pg_policies WHERE schemaname::regnamespace IN ({schemas})""",
    "collation": """
        SELECT co.oid::regcollation::text,
               co.collprovider::text || ' ' || co.collisdeterministic::text || ' ' || coalesce(co.collcollate, '')
               || ' ' || coalesce(co.collctype, '') || ' ' || coalesce(co.colliculocale, '')
          FROM pg_collation co WHERE co.collnamespace IN ({schemas})""",
    "text search configuration": """
        SELECT cfg.oid::regconfig::text,
               (SELECT string_agg(m.maptokentype || ':' || m.mapseqno || ':' || m.mapdict::regdictionary::text, ','
                                  ORDER BY m.maptokentype, m.mapseqno)
                  FROM pg_ts_config_map m WHERE m.mapcfg = cfg.oid)
          FROM pg_ts_config cfg WHERE cfg.cfgnamespace IN ({schemas})""",
    "comment": """
        SELECT pg_describe_object(d.classoid, d.objoid, d.objsubid), d.description
          FROM pg_description d
         WHERE pg_describe_object(d.classoid, d.objoid, d.objsubid) IS NOT NULL
           AND (pg_identify_object(d.classoid, d.objoid, d.objsubid)).schema IN
               (SELECT nspname FROM pg_namespace WHERE oid IN ({schemas}))
           AND NOT EXISTS (SELECT 1 FROM pg_depend x WHERE x.classid = d.classoid AND x.objid = d.objoid
                           AND x.deptype = 'e')
           AND pg_describe_object(d.classoid, d.objoid, d.objsubid) NOT LIKE '%{ledger}%'""",
}


Difference = tuple[str, str]  # (kind, identity)


@dataclass(frozen=True)
class Inventory:
    """Every object of the user's schemas, by kind: {kind: {identity: definition}}."""

    objects: dict[str, dict[str, str]]

    def differences(self, other: Inventory) -> dict[Difference, tuple[str | None, str | None]]:
        """Each object whose definition differs, or that one side lacks: (this side's, the other's)."""
        out = {}
        for kind in self.objects.keys() | other.objects.keys():
            mine, theirs = self.objects.get(kind, {}), other.objects.get(kind, {})
            for key in mine.keys() | theirs.keys():
                if mine.get(key) != theirs.get(key):
                    out[(kind, key)] = (mine.get(key), theirs.get(key))
        return out

    def count(self, kind: str) -> int:
        return len(self.objects.get(kind, {}))


@contextmanager
def _qualified(conn) -> Iterator:
    """A cursor of an autocommit connection whose session prints every name schema-qualified."""
    with conn.cursor() as cur:
        cur.execute("SET search_path = ''")
        try:
            yield cur
        finally:
            cur.execute("RESET search_path")


def inventory(conn) -> Inventory:
    objects: dict[str, dict[str, str]] = {}
    with _qualified(conn) as cur:
        for kind, query in QUERIES.items():
            cur.execute(
                query.format(
                    schemas=_SCHEMAS,
                    ledger=_LEDGER,
                    not_extension_class=_NOT_EXTENSION.format(catalog="'pg_class'", oid="c.oid"),
                    not_extension_type=_NOT_EXTENSION.format(catalog="'pg_type'", oid="t.oid"),
                    not_extension_proc=_NOT_EXTENSION.format(catalog="'pg_proc'", oid="p.oid"),
                )
            )
            rows = cur.fetchall()
            objects[kind] = dict(rows)
            assert len(objects[kind]) == len(rows), f"{kind}: identities are not unique"
    return Inventory(objects)


def read_back(conn, difference: Difference, definition: str) -> str | None:
    """A view's or CHECK constraint's definition as PostgreSQL prints it once it has read it
    back, as a restore does (None for other objects). PostgreSQL does not always print the same
    text for what it read from its own output: ``NULL`` in a view becomes ``NULL::integer AS
    int4``. Made in a transaction of ``conn`` that is rolled back."""
    kind, identity = difference
    with _qualified(conn) as cur:
        cur.execute("BEGIN")
        try:
            if kind == "view":
                cur.execute(
                    sql.SQL("CREATE TEMP VIEW read_back AS {}").format(sql.SQL(definition.rstrip().rstrip(";")))
                )
                cur.execute("SELECT pg_get_viewdef('pg_temp.read_back'::regclass)")
            elif kind == "constraint" and definition.startswith("CHECK "):
                cur.execute(
                    "SELECT c.relnamespace::regnamespace::text, c.relname FROM pg_class c WHERE c.oid = %s::regclass",
                    (identity.rpartition(" ")[0],),
                )
                schema, table = cur.fetchone()
                cur.execute(sql.SQL("CREATE TEMP TABLE read_back (LIKE {})").format(sql.Identifier(schema, table)))
                cur.execute(
                    sql.SQL("ALTER TABLE pg_temp.read_back ADD CONSTRAINT read_back {}").format(sql.SQL(definition))
                )
                cur.execute("SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'read_back'")
            else:
                return None
            return cur.fetchone()[0]
        finally:
            cur.execute("ROLLBACK")


def row_digests(conn) -> dict[str, tuple[int, str | None]]:
    """Each table's row count and an md5 over its rows' text in the order of that text (its own
    rows: a partitioned table's are in its partitions)."""
    with _qualified(conn) as cur:
        cur.execute(
            f"""SELECT c.oid::regclass::text, n.nspname, c.relname
                  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE c.relnamespace IN ({_SCHEMAS}) AND c.relkind = 'r' AND c.relname NOT LIKE %s""",
            (_LEDGER,),
        )
        tables = cur.fetchall()
        digests = {}
        for name, schema, table in tables:
            cur.execute(
                sql.SQL("SELECT count(*), md5(string_agg(t::text, E'\\n' ORDER BY t::text)) FROM ONLY {} t").format(
                    sql.Identifier(schema, table)
                )
            )
            digests[name] = cur.fetchone()
    return digests
