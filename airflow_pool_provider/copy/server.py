"""Which database on which server a connection reaches, to tell one server (or one table) from two."""

from __future__ import annotations

import datetime
from dataclasses import dataclass

_WHERE_AM_I = """
SELECT current_database(), pg_postmaster_start_time(), current_setting('port'),
       (SELECT oid FROM pg_database WHERE datname = current_database()),
       has_function_privilege('pg_control_system()', 'EXECUTE')
"""
_SYSTEM_IDENTIFIER = "SELECT system_identifier::text FROM pg_control_system()"


@dataclass(frozen=True, slots=True)
class ServerIdentity:
    """A database on a server: equal values mean the same database."""

    database: str
    started: datetime.datetime
    port: str
    database_oid: int
    system_identifier: str  # the cluster's (initdb's), the same on its physical copies; "" if not readable

    def same_server(self, other: ServerIdentity) -> bool:
        """Whether both databases are on one server (one postmaster, one port)."""
        return (self.started, self.port) == (other.started, other.port)

    def same_database(self, other: ServerIdentity) -> bool:
        """Whether both are one database: one server (clusters copied from one another share a
        system identifier, not a postmaster), one database by oid and name."""
        return self == other


def server_identity(cur) -> ServerIdentity:
    """A role may be denied ``pg_control_system()``: asked first, as refusal would abort the transaction."""
    cur.execute(_WHERE_AM_I)
    database, started, port, oid, may_read = cur.fetchone()
    system_identifier = ""
    if may_read:
        cur.execute(_SYSTEM_IDENTIFIER)
        system_identifier = cur.fetchone()[0]
    return ServerIdentity(database, started, port, oid, system_identifier)
