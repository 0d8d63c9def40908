"""PooledPostgresHook: PostgresHook's API on psycopg2 connections from a per-process pool."""

from __future__ import annotations

import os
import threading
import time
from contextlib import closing
from typing import TYPE_CHECKING, Any

import psycopg2.extensions
import psycopg2.extras
from airflow.providers.common.compat.sdk import AirflowNotFoundException
from airflow.providers.common.sql.hooks.lineage import send_sql_hook_lineage
from airflow.providers.common.sql.hooks.sql import DbApiHook
from airflow.providers.postgres.hooks.postgres import PostgresHook

from airflow_pool_provider import registry, settings
from airflow_pool_provider.errors import UnusableConnection
from airflow_pool_provider.pool import ConnectionPool, PooledConnection
from airflow_pool_provider.registry import PoolSettings

if TYPE_CHECKING:
    from airflow.sdk import Connection

_CURSOR_FACTORIES = {
    "dictcursor": psycopg2.extras.DictCursor,
    "realdictcursor": psycopg2.extras.RealDictCursor,
    "namedtuplecursor": psycopg2.extras.NamedTupleCursor,
}

#: Which columns of an insert_rows target are json/jsonb, in the order the INSERT fills them. The
#: table is given as the text the INSERT itself uses, so to_regclass resolves it the same way.
_COLUMN_KINDS = """
SELECT a.attname, coalesce(nullif(t.typbasetype, 0), t.oid) IN ('json'::regtype, 'jsonb'::regtype)
  FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
 WHERE a.attrelid = to_regclass(%(table)s) AND a.attnum > 0 AND NOT a.attisdropped
   AND (NOT %(insertable_only)s OR (a.attidentity = '' AND a.attgenerated = ''))
 ORDER BY a.attnum
"""
#: The same for named target fields (as the INSERT writes them: quoted or folded by parse_ident).
_FIELD_KINDS = """
WITH columns AS (
SELECT a.attname, coalesce(nullif(t.typbasetype, 0), t.oid) IN ('json'::regtype, 'jsonb'::regtype) AS is_json
  FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
 WHERE a.attrelid = to_regclass(%(table)s) AND a.attnum > 0 AND NOT a.attisdropped
)
SELECT f.field, coalesce(c.is_json, false)
  FROM unnest(%(fields)s::text[]) WITH ORDINALITY AS f(field, n)
  LEFT JOIN columns c ON c.attname = (parse_ident(f.field))[1]
 ORDER BY f.n
"""

_connection_cache: dict[str, tuple[float, Connection]] = {}
_connection_cache_lock = threading.Lock()


class PooledPostgresHook(PostgresHook):
    """A PostgresHook whose connections come from a per-process psycopg2 pool.

    ``get_conn()`` checks a connection out; its ``close()`` (or the end of ``with conn:``) gives it
    back, so ``run``, ``get_records``, ``get_first``, ``insert_rows``, ``copy_expert``,
    ``bulk_load``, ``bulk_dump`` and ``get_cursor`` all reuse pooled sessions. Pool settings come
    from the ``pool_*`` keyword arguments, then from the ``[pooled_postgres]`` config section, then
    from defaults; they are not connection extras, so other hooks on the same connection keep
    working.

    :param postgres_conn_id: an ordinary Airflow ``postgres`` connection; defaults to the conn id
        of ``connection`` when that is given.
    :param connection: an Airflow ``Connection`` to connect with instead of looking the conn id up
        (as ``DbApiHook`` allows). The pool is still the conn id's.
    :param pool_min_size: connections kept open even when idle.
    :param pool_max_size: connections open at once for this connection id in this process.
    :param pool_timeout: seconds to wait for a free connection before ``PoolTimeout``.
    :param pool_max_lifetime: seconds after which a connection is replaced.
    :param pool_max_idle: seconds an idle connection above ``pool_min_size`` is kept.
    """

    hook_name = "Pooled Postgres"

    def __init__(
        self,
        *args: Any,
        pool_min_size: int | None = None,
        pool_max_size: int | None = None,
        pool_timeout: float | None = None,
        pool_max_lifetime: float | None = None,
        pool_max_idle: float | None = None,
        **kwargs: Any,
    ) -> None:
        given = kwargs.get("connection")
        if given is not None and not args and self.conn_name_attr not in kwargs and given.conn_id:
            kwargs[self.conn_name_attr] = given.conn_id  # name its pool after it, not postgres_default
        super().__init__(*args, **kwargs)
        self._insert_target: _InsertTarget | None = None
        self._pool_overrides = {
            "min_size": pool_min_size,
            "max_size": pool_max_size,
            "timeout": pool_timeout,
            "max_lifetime": pool_max_lifetime,
            "max_idle": pool_max_idle,
        }

    # -- connection and pool ----------------------------------------------------------------

    @property
    def connection(self) -> Connection:
        """The ``connection=`` given, else the conn id's, cached per process for a short while.

        Inside a task every lookup may be a round trip to the API server; a rotated password or
        a new host is still picked up within ``connection_cache_seconds``.
        """
        if self._connection is not None:
            return self._connection
        return cached_connection(self.get_conn_id())

    @connection.setter
    def connection(self, value: Any) -> None:  # DbApiHook's backwards-compatible setter
        pass

    def pool_settings(self) -> PoolSettings:
        """The ``pool_*`` arguments given, else the ``[pooled_postgres]`` section's."""
        return settings.read(**self._pool_overrides).pool

    def connect_kwargs(self) -> dict[str, Any]:
        """psycopg2.connect arguments, by the same rules as PostgresHook.get_conn."""
        conn = self.connection
        extra = conn.extra_dejson
        if extra.get("iam"):
            raise UnusableConnection(
                f"connection {conn.conn_id!r} uses IAM tokens, which expire and change with every "
                "call; a pool cannot reuse them. Use PostgresHook for this connection."
            )
        kwargs: dict[str, Any] = {
            "host": conn.host,
            "user": conn.login,
            "password": conn.password,
            "dbname": self.database or conn.schema,
            "port": conn.port,
        }
        if self.options:
            kwargs["options"] = self.options
        for name, value in extra.items():
            if name not in self.ignored_extra_options:
                kwargs[name] = value
        cursor = extra.get("cursor")
        if cursor:
            try:
                kwargs["cursor_factory"] = _CURSOR_FACTORIES[str(cursor).lower()]
            except KeyError:
                raise UnusableConnection(
                    f"connection {conn.conn_id!r}: unknown cursor {cursor!r} in extras; "
                    f"use one of {', '.join(_CURSOR_FACTORIES)}"
                ) from None
        return {k: v for k, v in kwargs.items() if v is not None and v != ""}

    def get_pool(self) -> ConnectionPool:
        """This process's pool for the hook's connection id."""
        return registry.pool_for(self.get_conn_id(), self.connect_kwargs(), self.pool_settings())

    def get_conn(self) -> PooledConnection:
        """Check out a pooled connection; ``close()`` it, or end ``with conn:``, to give it back."""
        conn = self.get_pool().getconn()
        self.conn = conn
        return conn

    def get_cursor(self) -> psycopg2.extensions.cursor:
        """A cursor that holds its pooled connection until the cursor is closed.

        DbApiHook's ``get_conn().cursor()`` drops the wrapper at once: the connection would go back
        to the pool, and to another caller, while the cursor still uses it.
        """
        conn = self.get_conn()
        try:
            base = conn.raw.cursor_factory or psycopg2.extensions.cursor
            cursor = conn.cursor(cursor_factory=_holding_cursor_class(base))
        except BaseException:
            conn.close()
            raise
        cursor._pooled = conn
        return cursor

    def pool_stats(self) -> dict[str, Any]:
        return self.get_pool().stats()

    # -- PostgresHook methods that take psycopg-3-only paths on Airflow 3 ----------------------

    def copy_expert(self, sql: str, filename: str) -> None:
        """Run a COPY ... TO STDOUT / FROM STDIN statement against a local file (psycopg2), and
        report it to Airflow's hook lineage collector as PostgresHook does."""
        self.log.info("Running copy expert: %s, filename: %s", sql, filename)
        if not os.path.isfile(filename):
            with open(filename, "w"):
                pass
        with (
            open(filename, "r+") as file,
            closing(self.get_conn()) as conn,
            closing(conn.cursor()) as cur,
        ):
            cur.copy_expert(sql, file)
            file.truncate(file.tell())
            conn.commit()
            send_sql_hook_lineage(context=self, sql=sql, sql_parameters=(filename,), cur=cur)

    def insert_rows(
        self,
        table: str,
        rows: Any,
        target_fields: Any = None,
        commit_every: int = 1000,
        replace: bool = False,
        **kwargs: Any,
    ) -> None:
        """Insert rows with psycopg2's ``executemany`` (PostgresHook's own path is psycopg 3).

        Cells are adapted as PostgresHook does on psycopg 3, where it fits the column: a dict is
        stored as JSON; a list as JSON in a json/jsonb column, as an array anywhere else.
        """
        kwargs.pop("fast_executemany", None)
        self._insert_statement_format = "INSERT INTO {} {} VALUES ({})"
        fields = list(target_fields) if target_fields else None
        self._insert_target = _InsertTarget(self, table, fields)
        try:
            return DbApiHook.insert_rows(
                self,
                table,
                rows,
                target_fields=target_fields,
                commit_every=commit_every,
                replace=replace,
                **kwargs,
            )
        finally:
            self._insert_target = None

    def _serialize_cells(self, row: Any, conn: Any | None = None) -> tuple:
        """A row's cells as psycopg2 should send them: dicts, and lists for json columns, as Json."""
        target = self._insert_target
        json_at = target.json_positions(conn) if target and any(isinstance(c, list) for c in row) else ()
        return tuple(
            psycopg2.extras.Json(cell) if isinstance(cell, dict) or (isinstance(cell, list) and i in json_at) else cell
            for i, cell in enumerate(row)
        )

    @staticmethod
    def _serialize_cell(cell: object, conn: Any | None = None) -> Any:
        return cell

    def get_db_log_messages(self, conn: Any) -> None:
        if self.enable_log_db_messages:
            for notice in conn.notices:
                self.log.info(notice)


class _InsertTarget:
    """The table of one insert_rows call; which cell positions are json/jsonb, read on first need.

    Only rows with a list cell need it (a dict is JSON anywhere), so plain inserts cost no query.
    The lookup runs on the insert's own connection, so a pool of one connection is enough.
    """

    def __init__(self, hook: PooledPostgresHook, table: str, fields: list[str] | None) -> None:
        self.hook = hook
        self.table = table
        self.fields = fields
        self._json_at: frozenset[int] | None = None

    def json_positions(self, conn: Any | None) -> frozenset[int]:
        if self._json_at is None:
            if conn is None:
                return frozenset()
            self._json_at = frozenset(i for i, (_, is_json) in enumerate(self._kinds(conn)) if is_json)
            self.hook.log.debug("insert_rows into %s: json/jsonb at positions %s", self.table, sorted(self._json_at))
        return self._json_at

    def _kinds(self, conn: Any) -> list[tuple[str, bool]]:
        hook = self.hook
        with conn.cursor(cursor_factory=psycopg2.extensions.cursor) as cur:
            if self.fields:
                # Spelt as the INSERT spells them, so quoting and case folding agree with it.
                fields = [hook.dialect.escape_word(f) for f in self.fields]
                cur.execute(_FIELD_KINDS, {"table": self.table, "fields": fields})
            else:
                # DbApiHook fills only the insertable columns when it resolves the target fields.
                insertable_only = bool(hook._resolve_target_fields)
                cur.execute(_COLUMN_KINDS, {"table": self.table, "insertable_only": insertable_only})
            return cur.fetchall()


class _HoldsItsConnection:
    """Mixed into a psycopg2 cursor class: the cursor keeps its pooled connection until closed."""

    _pooled: PooledConnection | None = None

    def close(self) -> None:
        try:
            super().close()  # type: ignore[misc]
        finally:
            pooled, self._pooled = self._pooled, None
            if pooled is not None:
                pooled.close()


_holding_cursor_classes: dict[type, type] = {}


def _holding_cursor_class(base: type) -> type:
    """``base`` (the connection's cursor class) with :class:`_HoldsItsConnection` mixed in."""
    cls = _holding_cursor_classes.get(base)
    if cls is None:
        cls = type(f"Pooled{base.__name__}", (_HoldsItsConnection, base), {})
        _holding_cursor_classes[base] = cls
    return cls


def cached_connection(conn_id: str) -> Connection:
    """The Airflow Connection ``conn_id``, fetched at most once per ``connection_cache_seconds``."""
    ttl = settings.read().connection_cache_seconds or 0.0
    now = time.monotonic()
    with _connection_cache_lock:
        hit = _connection_cache.get(conn_id)
    if hit is not None and now - hit[0] < ttl:
        return hit[1]
    try:
        conn = PostgresHook.get_connection(conn_id)
    except AirflowNotFoundException:
        raise AirflowNotFoundException(
            f"connection {conn_id!r} is not defined. Add it in the Airflow UI (Admin > "
            f"Connections), with `airflow connections add`, or as AIRFLOW_CONN_{conn_id.upper()}."
        ) from None
    with _connection_cache_lock:
        _connection_cache[conn_id] = (now, conn)
    return conn


def forget_cached_connections() -> None:
    """Drop cached Connections and settings so the next hook reads them afresh."""
    with _connection_cache_lock:
        _connection_cache.clear()
    settings.forget()
