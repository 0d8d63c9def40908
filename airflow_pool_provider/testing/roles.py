"""Least-privilege roles for a migration's two connections, as the README's "Roles for a
migration" gives them: a source role that can only read the migrated schemas, and a target role
that owns the target database (and so what it creates there). The demo and the native stack
connect as these, not as the server's superuser: the source schema is code that runs on the
target with the target role's powers.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from psycopg2 import sql

from airflow_pool_provider.testing.postgres import Server


@dataclass(frozen=True)
class MigrationRoles:
    reader: str  # of the source
    writer: str  # owner of the target database
    password: str  # both's, new on every call

    @property
    def names(self) -> tuple[str, str]:
        return self.reader, self.writer


def role_names(source_db: str, target_db: str) -> tuple[str, str]:
    """The roles of a pair of databases, named after them (role names are the server's, not a
    database's: other pairs get their own)."""
    return f"{source_db}_reader"[:63], f"{target_db}_writer"[:63]


def grant_least_privilege(
    server: Server, source_db: str, target_db: str, schemas: Sequence[str] = ("public",)
) -> MigrationRoles:
    """Make (or update) the two roles with a new password: SELECT on every table and sequence of
    the source's ``schemas`` (pg_dump locks every table and reads every sequence of a schema it
    dumps), and the target database made theirs."""
    reader, writer = role_names(source_db, target_db)
    password = secrets.token_urlsafe(18)
    for role in (reader, writer):
        if not server.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)):
            server.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(role)))
        server.execute(sql.SQL("ALTER ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role), sql.Literal(password)))
    server.execute(
        sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(source_db), sql.Identifier(reader))
    )
    for schema in schemas:
        for grant in (
            "GRANT USAGE ON SCHEMA {} TO {}",
            "GRANT SELECT ON ALL TABLES IN SCHEMA {} TO {}",
            "GRANT SELECT ON ALL SEQUENCES IN SCHEMA {} TO {}",
        ):
            server.execute(sql.SQL(grant).format(sql.Identifier(schema), sql.Identifier(reader)), dbname=source_db)
    server.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(sql.Identifier(target_db), sql.Identifier(writer)))
    return MigrationRoles(reader, writer, password)


def drop_roles(server: Server, source_db: str, target_db: str) -> None:
    """Drop the pair's roles, after what they own or were granted in the source database (the
    target database, theirs, is dropped before)."""
    for role in role_names(source_db, target_db):
        if not server.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)):
            continue
        if server.execute("SELECT 1 FROM pg_database WHERE datname = %s", (source_db,)):
            server.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)), dbname=source_db)
        server.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
