"""The package's one error tree, and one answer to "is this worth trying again?".

Every error is one of three kinds:

- ``TRANSIENT``: the server went away or asked us to come back (lost connection, shutdown,
  crash, start-up or recovery, too many connections, serialization failure, deadlock). The
  step that failed is tried again after a short backoff, by the pool (connecting) or by the
  copy engine (a chunk).
- ``MISTAKE``: the request, the settings, the schema or the data is wrong (a table name that
  cannot be read, a duplicate key, a missing table or column, a privilege, a type mismatch, a
  checksum that disagrees). Trying again cannot help: it fails once, and the operators tell
  Airflow not to retry. Every mistake the package raises is a :class:`Mistake` (a ValueError).
- ``FAULT``: something around us failed (disk full, out of memory, a statement timeout, a
  cancel, a pool that stayed exhausted, anything unknown). Not retried inside the step;
  Airflow's task retries apply.

Every error the package raises on purpose is a :class:`PoolProviderError` of this module; the
copy and the migration have their own branches (:class:`CopyError`, :class:`MigrationError`),
each with its mistakes. Errors with a SQLSTATE are classified by the full code. psycopg2 gives errors raised while
connecting no SQLSTATE (``pgcode`` is None), so there, and only there, libpq's messages are read.
Without a SQLSTATE after connecting, the connection's state decides: a closed connection was
lost. Nothing here imports Airflow.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import Any, ClassVar

import psycopg2


class Kind(enum.Enum):
    TRANSIENT = "transient"
    MISTAKE = "mistake"
    FAULT = "fault"


# -- the tree ---------------------------------------------------------------------------------


class PoolProviderError(Exception):
    """Base of every error this package raises on purpose."""

    kind: ClassVar[Kind] = Kind.FAULT


class Mistake(PoolProviderError, ValueError):
    """The base of every mistake, whichever part raised it: the message says what to change."""

    kind = Kind.MISTAKE


class InvalidName(Mistake):
    """A table name that cannot be read (``a.b.c``, an unclosed quote, an empty name)."""


class InvalidSetting(Mistake):
    """A ``[pooled_postgres]`` setting, or a pool size, that cannot work."""


class InvalidParameter(Mistake):
    """An operator argument that cannot work (a missing connection id, a non-integer size)."""


class UnusableConnection(Mistake):
    """An Airflow connection whose extras a pool cannot use (IAM tokens, an unknown cursor)."""


class PoolError(PoolProviderError, psycopg2.InterfaceError):
    """Misuse of a pool: returning a foreign or already returned connection."""

    kind = Kind.MISTAKE


class PoolClosed(PoolError):
    """The pool was closed (its connection's parameters changed, or the process ends); a retry
    gets a new pool."""

    kind = Kind.FAULT


class CheckoutCancelled(PoolProviderError):
    """A wait for a connection was cancelled by its caller (a copy that was told to stop)."""


class PoolTimeout(PoolProviderError, psycopg2.OperationalError):
    """No connection could be had within the pool's timeout (all in use, or the server away)."""


class ConnectFailed(PoolProviderError, psycopg2.OperationalError):
    """The server refused a new connection for a reason waiting will not fix (bad database,
    role or password). Its message is libpq's."""

    kind = Kind.MISTAKE


class CopyError(PoolProviderError):
    """A copy that failed; nothing unverified was committed, and the ledger allows a resume."""


class CopyMistake(CopyError, Mistake):
    """The copy as asked cannot work (parameters, tables, privileges, data); the message says
    what to change. Retrying cannot help."""


class CatalogError(CopyMistake):
    """A table, column or key that is not what the copy needs."""


class FilterError(CopyMistake):
    """A row filter that is not one boolean expression over the source table."""


class ChunkMismatch(CopyMistake):
    """Source and target disagree on a chunk's rows; its transaction was rolled back."""


class BudgetError(CopyError):
    """Not enough connections free on a server to run even one worker (try again later)."""


class CopyStopped(CopyError):
    """The copy was stopped (timeout, signal, Ctrl-C or another chunk's failure); it resumes."""


class SnapshotLost(CopyError):
    """The source's exported snapshot ended with its transaction (a restart, a lost connection)."""

    kind = Kind.TRANSIENT

    def __init__(self, message: str, snapshot: str) -> None:
        super().__init__(message)
        self.snapshot = snapshot


class ChunkFailed(CopyError):
    """A chunk failed; its kind is its cause's (a lost connection retried too often is a fault)."""

    def __init__(self, message: str, kind: Kind = Kind.FAULT) -> None:
        super().__init__(message)
        self.failure_kind = kind


class MigrationError(PoolProviderError):
    """A migration stage that failed; the stage ledger lets the stage run again."""


class MigrationMistake(MigrationError, Mistake):
    """The migration as asked cannot work (selection, parameters, target state); the message says
    what to change. Retrying cannot help."""


class ToolMissing(MigrationMistake):
    """pg_dump/pg_restore are missing or too old for the servers; the message says what to install."""


class ToolFailed(MigrationError):
    """pg_dump/pg_restore ran and failed (its stderr is in the message); Airflow's retries apply."""


class ToolRefused(MigrationMistake):
    """pg_dump/pg_restore were refused a privilege ("permission denied"): trying again cannot help
    until it is granted; the message says which role and what to grant."""


# -- classification ---------------------------------------------------------------------------

#: SQLSTATEs (full codes) worth retrying at once.
_TRANSIENT_CODES = frozenset(
    {
        "57P01",  # admin_shutdown (also pg_terminate_backend)
        "57P02",  # crash_shutdown
        "57P03",  # cannot_connect_now: starting up, in recovery
        "57P05",  # idle_session_timeout: the session was closed
        "53300",  # too_many_connections
        "40001",  # serialization_failure
        "40P01",  # deadlock_detected
    }
)

#: SQLSTATE classes (first two characters) that are always transient.
_TRANSIENT_CLASSES = frozenset({"08"})  # connection_exception

#: SQLSTATE classes that mean the request or the data is wrong.
_MISTAKE_CLASSES = frozenset(
    {
        "0A",  # feature_not_supported
        "21",  # cardinality_violation
        "22",  # data_exception (a lost snapshot is told apart where it happens)
        "23",  # integrity_constraint_violation: unique, foreign key, not null, check, exclusion
        "28",  # invalid_authorization_specification
        "2B",  # dependent_privilege_descriptor_still_exists
        "3D",  # invalid_catalog_name: no such database
        "3F",  # invalid_schema_name
        "42",  # syntax_error_or_access_rule_violation: missing objects, privileges (42501), types
        "44",  # with_check_option_violation
    }
)

#: SQLSTATEs that mean the request is wrong, outside the classes above.
_MISTAKE_CODES = frozenset({"25006"})  # read_only_sql_transaction

#: libpq's messages when a connection cannot be made (no SQLSTATE there), lower case.
_CONNECT_TRANSIENT = (
    "could not connect",
    "connection refused",
    "connection timed out",
    "timeout expired",
    "no such file or directory",  # the server's unix socket is gone while it restarts
    "the database system is starting up",
    "the database system is shutting down",
    "the database system is in recovery mode",
    "the database system is not yet accepting connections",
    "the database system is not accepting connections",
    "sorry, too many clients already",
    "remaining connection slots are reserved",
    "server closed the connection unexpectedly",
    "terminating connection",
    "could not receive data from server",
    "could not send data to server",
)
_CONNECT_MISTAKE = (
    "password authentication failed",
    "no password supplied",
    "does not exist",  # database or role
    "no pg_hba.conf entry",
    "is not permitted to log in",
    "invalid connection option",
    "invalid integer value",
)


def classify(exc: BaseException, *, connecting: bool = False, connections: Iterable[Any] = ()) -> Kind:
    """The kind of ``exc``. ``connecting``: it came from ``psycopg2.connect``. ``connections``:
    the connections the failed step used (a closed one was lost)."""
    if isinstance(exc, ChunkFailed):
        return exc.failure_kind
    if isinstance(exc, PoolProviderError):
        return exc.kind
    if not isinstance(exc, psycopg2.Error):
        return Kind.FAULT
    code = exc.pgcode
    if code:
        return classify_sqlstate(code)
    if connecting:
        return classify_connect_message(str(exc))
    if isinstance(exc, (psycopg2.OperationalError, psycopg2.InterfaceError)) and _any_lost(exc, connections):
        return Kind.TRANSIENT
    return Kind.FAULT


def is_transient(exc: BaseException, *, connecting: bool = False, connections: Iterable[Any] = ()) -> bool:
    """Worth trying the same step again after a short backoff."""
    return classify(exc, connecting=connecting, connections=connections) is Kind.TRANSIENT


def is_mistake(exc: BaseException) -> bool:
    """Retrying cannot help: fail once."""
    return classify(exc) is Kind.MISTAKE


def classify_sqlstate(code: str) -> Kind:
    if code in _TRANSIENT_CODES or code[:2] in _TRANSIENT_CLASSES:
        return Kind.TRANSIENT
    if code in _MISTAKE_CODES or code[:2] in _MISTAKE_CLASSES:
        return Kind.MISTAKE
    return Kind.FAULT


def classify_connect_message(message: str) -> Kind:
    """libpq's message of a failed connect. With several hosts it holds one line per host, so a
    mistake anywhere (no such database, a wrong password) wins over another host being down."""
    text = message.lower()
    if any(m in text for m in _CONNECT_MISTAKE):
        return Kind.MISTAKE
    if any(m in text for m in _CONNECT_TRANSIENT):
        return Kind.TRANSIENT
    return Kind.FAULT


def _any_lost(exc: psycopg2.Error, connections: Iterable[Any]) -> bool:
    cursor = getattr(exc, "cursor", None)
    candidates = list(connections)
    if cursor is not None:
        candidates.append(cursor.connection)
    return any(getattr(conn, "closed", 0) for conn in candidates)


def first_line(exc: BaseException) -> str:
    """The first line of an error's message (libpq's are several lines long)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
