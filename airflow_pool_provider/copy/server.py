"""Which database on which server a connection reaches, to tell one server (or one table) from two."""

from __future__ import annotations

import datetime
from dataclasses import dataclass

_WHERE_AM_I = "SELECT current_database(), pg_postmaster_start_time(), current_setting('port')"


@dataclass(frozen=True, slots=True)
class ServerIdentity:
    """A database on a server: equal values mean the same database."""

    database: str
    started: datetime.datetime
    port: str

    def same_server(self, other: ServerIdentity) -> bool:
        """Whether both databases are on one server (one postmaster, one port)."""
        return (self.started, self.port) == (other.started, other.port)


def server_identity(cur) -> ServerIdentity:
    cur.execute(_WHERE_AM_I)
    return ServerIdentity(*cur.fetchone())
