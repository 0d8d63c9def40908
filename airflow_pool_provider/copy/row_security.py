"""Every read that copies or verifies rows sees every row, or fails saying what to grant.

A row-level security policy filters rows silently: a copy through a role it applies to would copy
only the rows that role may see, and verify them against themselves. So, as pg_dump does, reads
run with ``row_security`` off: PostgreSQL then raises 42501 ("query would be affected by
row-level security policy") instead of filtering, for any role that is not a superuser, has no
BYPASSRLS and is not the table's owner (an owner too if the table FORCEs row security).

The setting is made per transaction (``SET LOCAL``), where each read transaction starts, and not
on the pools' sessions: a pool may be shared with other code, and its connections are not reset
between users. The migration's snapshot holder reads no rows, and pg_dump (schema only here) runs
with ``row_security`` off unless told ``--enable-row-security``, which it never is.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg2

from airflow_pool_provider.copy.names import quote_ident
from airflow_pool_provider.errors import Mistake

_REFUSED = "query would be affected by row-level security policy"


def read_every_row(cur) -> None:
    """Make the current transaction fail rather than read through a row-level security policy."""
    cur.execute("SET LOCAL row_security = off")


def explained(exc: BaseException, mistake: type[Mistake]) -> BaseException:
    """``exc``, or, if a row-level security policy refused it, a ``mistake`` saying what to do."""
    refused = _refusal(exc)
    if refused is None:
        return exc
    explanation = mistake(_advice(refused))
    explanation.__cause__ = exc
    return explanation


@contextmanager
def explaining(mistake: type[Mistake]) -> Iterator[None]:
    """Raise a refusal by a row-level security policy as ``mistake``, with what to grant."""
    try:
        yield
    except Exception as exc:
        better = explained(exc, mistake)
        if better is exc:
            raise
        raise better from exc


def _refusal(exc: BaseException | None) -> psycopg2.Error | None:
    """The refusal behind ``exc`` (itself or a cause), unless a mistake already explains it."""
    while exc is not None and not isinstance(exc, Mistake):
        if isinstance(exc, psycopg2.errors.InsufficientPrivilege) and str(exc).startswith(_REFUSED):
            return exc
        exc = exc.__cause__
    return None


def _advice(refused: psycopg2.Error) -> str:
    table = str(refused).splitlines()[0].removeprefix(_REFUSED).removeprefix(" for table ").strip()
    conn = refused.cursor.connection if refused.cursor is not None else None
    role = quote_ident(conn.info.user) if conn is not None else "<role>"
    who = f"the role {role} on database {quote_ident(conn.info.dbname)}" if conn is not None else "the role"
    return (
        f"{who} cannot read every row of table {table}: a row-level security policy applies to it, and "
        "a copy never reads (or verifies) only the rows a policy lets it see. Grant it BYPASSRLS "
        f"(ALTER ROLE {role} BYPASSRLS), or connect as the table's owner (if the table FORCEs row "
        "level security, only a superuser or a BYPASSRLS role reads it all)"
    )
