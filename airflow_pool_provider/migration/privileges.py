"""Privileges: what the stages need on each side, checked in the plan and named as GRANTs, and
the functions' EXECUTE restrictions, carried over so that a migration never widens access.

The source role needs USAGE on each selected schema and SELECT on every table and sequence of
them, not only the selected ones: the schema dump is of whole schemas, and pg_dump locks each of
their tables (``LOCK TABLE ... IN ACCESS SHARE MODE``) and reads each sequence. The target role
needs CREATE on the database for a schema the target lacks, USAGE and CREATE on one it has, and
CREATE on the ledger schema until the ledgers exist.

The schema is restored without grants (``pg_restore -x``: the roles may not exist in the
target), so a function the source keeps from PUBLIC would arrive executable by anyone; its
``REVOKE EXECUTE ... FROM PUBLIC`` is restored, and grants to roles are named in the plan as not
migrated. A ``SECURITY DEFINER`` function restored without its owner runs with the target
role's rights: refused unless owners are kept or it is accepted explicitly.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psycopg2.errors
from psycopg2 import sql

from airflow_pool_provider.copy.ledger import CHUNK_LEDGER_TABLE
from airflow_pool_provider.copy.names import quote_ident
from airflow_pool_provider.errors import MigrationMistake, first_line
from airflow_pool_provider.migration.definitions import qualified
from airflow_pool_provider.migration.ledger import STAGE_LEDGER_TABLE

# Relations pg_dump locks (tables) or reads (sequences) in a dump of the schemas, that the role
# cannot SELECT; an extension's own are not dumped.
_UNREADABLE = """
SELECT n.nspname, c.relname, c.relkind = 'S'
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = ANY(%(schemas)s) AND c.relkind IN ('r', 'p', 'S')
   AND NOT EXISTS (SELECT 1 FROM pg_depend d
                    WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
   AND NOT has_table_privilege(c.oid, 'SELECT')
 ORDER BY 1, 2
"""
_SCHEMA_RIGHTS = """
SELECT nspname, has_schema_privilege(oid, 'USAGE'), has_schema_privilege(oid, 'CREATE')
  FROM pg_namespace WHERE nspname = ANY(%(schemas)s) ORDER BY 1
"""
# The schemas' own functions and procedures (not an extension's): the SECURITY DEFINER ones, and
# those PUBLIC may not execute, with the roles EXECUTE is granted to (not migrated).
_FUNCTIONS = """
SELECT p.oid, n.nspname, p.proname, pg_get_function_identity_arguments(p.oid), p.prokind = 'p', p.prosecdef,
       has_function_privilege('public', p.oid, 'EXECUTE'),
       ARRAY(SELECT DISTINCT pg_get_userbyid(a.grantee) FROM aclexplode(p.proacl) a
              WHERE a.privilege_type = 'EXECUTE' AND a.grantee NOT IN (0, p.proowner) ORDER BY 1)
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE n.nspname = ANY(%(schemas)s) AND p.prokind IN ('f', 'p')
   AND NOT EXISTS (SELECT 1 FROM pg_depend d
                    WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e')
 ORDER BY 1, 2, 3
"""


@dataclass(frozen=True)
class Function:
    """A function or procedure of the selected schemas, as its ACL and SECURITY DEFINER matter."""

    oid: int
    schema: str
    name: str
    arguments: str  # pg_get_function_identity_arguments: types as PostgreSQL prints them
    procedure: bool
    security_definer: bool
    public_executes: bool
    granted_to: tuple[str, ...]  # roles EXECUTE is granted to (not migrated)

    def identifier(self) -> sql.Composable:
        """``schema.name(arguments)`` for a GRANT or REVOKE; the argument types are PostgreSQL's
        own rendering (each type name already quoted), not the user's text."""
        return sql.SQL("{}({})").format(sql.Identifier(self.schema, self.name), sql.SQL(self.arguments))

    def describe(self) -> str:
        kind = "procedure" if self.procedure else "function"
        return f"{kind} {quote_ident(self.schema)}.{quote_ident(self.name)}({self.arguments})"


def functions(scur, schemas: Iterable[str]) -> list[Function]:
    """Read with an empty search_path: argument types are then named with their schemas, as a
    REVOKE in the target (whose search_path the restore emptied) needs them."""
    with qualified(scur):
        scur.execute(_FUNCTIONS, {"schemas": list(schemas)})
        rows = scur.fetchall()
    return [
        Function(oid, schema, name, args, procedure, definer, public, tuple(roles))
        for oid, schema, name, args, procedure, definer, public, roles in rows
    ]


def restricted(found: Iterable[Function]) -> list[Function]:
    """Those PUBLIC may not execute on the source."""
    return [f for f in found if not f.public_executes]


def revoke_from_public(tcur, found: Iterable[Function]) -> None:
    """Keep ``found`` from PUBLIC in the target, as the source does."""
    for function in found:
        kind = sql.SQL("PROCEDURE" if function.procedure else "FUNCTION")
        tcur.execute(sql.SQL("REVOKE EXECUTE ON {} {} FROM PUBLIC").format(kind, function.identifier()))


def check_functions(
    found: list[Function], keep_owners: bool, allow_security_definer: bool, problems: list[str]
) -> None:
    """Refuse SECURITY DEFINER functions that would run as the target role, unless accepted."""
    definers = [f.describe() for f in found if f.security_definer]
    if definers and not keep_owners and not allow_security_definer:
        problems.append(
            f"SECURITY DEFINER {', '.join(definers)}: restored without their owners (keep_owners off), they "
            "would run with the target connection's role's rights for whoever may execute them. Keep the "
            "owners (keep_owners, the target must have their roles), or accept it with allow_security_definer"
        )


def not_migrated(found: Iterable[Function], keep_owners: bool) -> list[str]:
    """For the plan: the grants to roles that are left out (a revoke from PUBLIC is not), and the
    SECURITY DEFINER functions accepted without their owners."""
    grants = [
        f"EXECUTE on {f.describe()} granted to {', '.join(f.granted_to)} (grants to roles are not migrated: "
        "grant them in the target by hand; a REVOKE from PUBLIC is)"
        for f in found
        if f.granted_to
    ]
    owners = [
        f"the owner of SECURITY DEFINER {f.describe()} (accepted with allow_security_definer: it runs with "
        "the target connection's role's rights)"
        for f in found
        if f.security_definer and not keep_owners
    ]
    return grants + owners


def source_grants(scur, schemas: Iterable[str]) -> list[str]:
    """The GRANTs the source role lacks for the dump and the copy."""
    schemas = list(schemas)
    role = _role(scur)
    grants = []
    scur.execute(_SCHEMA_RIGHTS, {"schemas": schemas})
    no_usage = [sql.Identifier(name) for name, usage, _ in scur.fetchall() if not usage]
    if no_usage:
        grants.append(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.SQL(", ").join(no_usage), role))
    scur.execute(_UNREADABLE, {"schemas": schemas})
    rows = scur.fetchall()
    for is_sequence, kind in ((False, "TABLE"), (True, "SEQUENCE")):
        names = [sql.Identifier(schema, name) for schema, name, sequence in rows if sequence is is_sequence]
        if names:
            grants.append(sql.SQL("GRANT SELECT ON {} {} TO {}").format(sql.SQL(kind), sql.SQL(", ").join(names), role))
    return [g.as_string(scur) + ";" for g in grants]


def target_grants(tcur, schemas: Iterable[str], ledger_schema: str) -> list[str]:
    """The GRANTs the target role lacks to create the schemas, their objects and the ledgers."""
    schemas = list(schemas)
    role = _role(tcur)
    tcur.execute(_SCHEMA_RIGHTS, {"schemas": schemas})
    rights = {name: (usage, create) for name, usage, create in tcur.fetchall()}
    grants = []
    tcur.execute("SELECT current_database(), has_database_privilege(current_database(), 'CREATE')")
    database, may_create = tcur.fetchone()
    if set(schemas) - set(rights) and not may_create:
        grants.append(sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(sql.Identifier(database), role))
    lacking = [sql.Identifier(name) for name, (usage, create) in sorted(rights.items()) if not (usage and create)]
    if _ledgers_missing(tcur, ledger_schema):
        tcur.execute(_SCHEMA_RIGHTS, {"schemas": [ledger_schema]})
        found = tcur.fetchone()
        if found is not None and not (found[1] and found[2]) and ledger_schema not in rights:
            lacking.append(sql.Identifier(ledger_schema))
    if lacking:
        grants.append(sql.SQL("GRANT USAGE, CREATE ON SCHEMA {} TO {}").format(sql.SQL(", ").join(lacking), role))
    return [g.as_string(tcur) + ";" for g in grants]


def check_roles(scur, tcur, schemas: Iterable[str], ledger_schema: str, problems: list[str]) -> None:
    """Name, once and together, the GRANTs either connection's role lacks."""
    schemas = list(schemas)
    for side, cur, grants, why in (
        ("source", scur, source_grants(scur, schemas), "the schema dump reads every table and sequence of the schemas"),
        ("target", tcur, target_grants(tcur, schemas, ledger_schema), "it creates the schemas, objects and ledgers"),
    ):
        if grants:
            cur.execute("SELECT current_user, current_database()")
            role, database = cur.fetchone()
            problems.append(
                f"the {side} role {quote_ident(role)} lacks privileges the migration needs on database "
                f"{quote_ident(database)} ({why}); have an owner or administrator run there:\n      "
                + "\n      ".join(grants)
            )


def _ledgers_missing(tcur, schema: str) -> bool:
    tcur.execute(
        "SELECT to_regclass(%s) IS NULL OR to_regclass(%s) IS NULL",
        tuple(f"{quote_ident(schema)}.{quote_ident(t)}" for t in (STAGE_LEDGER_TABLE, CHUNK_LEDGER_TABLE)),
    )
    return tcur.fetchone()[0]


def _role(cur) -> sql.Identifier:
    cur.execute("SELECT current_user")
    return sql.Identifier(cur.fetchone()[0])


@contextmanager
def explaining_refusals() -> Iterator[None]:
    """A privilege a stage's statement was refused, as a mistake that names the role, the
    database and where the GRANTs a migration needs are listed (the plan)."""
    try:
        yield
    except psycopg2.errors.InsufficientPrivilege as refused:
        conn = refused.cursor.connection if refused.cursor is not None else None
        who = "a role"
        if conn is not None:
            who = f"the role {quote_ident(conn.info.user)} on database {quote_ident(conn.info.dbname)}"
        raise MigrationMistake(
            f"{who} was refused a privilege: {first_line(refused)}. Grant it (the plan, a dry run, names the "
            "GRANTs a migration needs on both sides) and run again"
        ) from refused
