"""Shared helpers for the chunked COPY engine tests: two databases, pools, digests and the ledger.

Every test gets its own source and target databases on the session's server; setup SQL runs on
autocommit connections of this module, the copies run through real ``ConnectionPool`` objects.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple

import psycopg2
from psycopg2 import sql

from airflow_pool_provider.copy import CopySpec, TableCopy
from airflow_pool_provider.copy.ledger import CHUNK_LEDGER_TABLE
from airflow_pool_provider.pool import ConnectionPool
from airflow_pool_provider.testing.postgres import Server

#: The ledger as versions before the chunks' read instants made it (``{}``: the table).
EARLIER_LEDGER_DDL = """CREATE TABLE {} (
    copy_id text NOT NULL, chunk_no integer NOT NULL, source_table text NOT NULL, target_table text NOT NULL,
    key_kind text NOT NULL, key_columns jsonb NOT NULL, lower_bound jsonb, upper_bound jsonb, expected_rows bigint,
    planned_at timestamptz NOT NULL DEFAULT now(), rows_copied bigint, bytes_copied bigint, checksum text,
    seconds double precision, finished_at timestamptz, PRIMARY KEY (copy_id, chunk_no)
)"""


class CopyEnv:
    """A source and a target database, with setup connections and pools made on demand."""

    def __init__(self, server: Server, src: str, dst: str) -> None:
        self.server = server
        self.db = {"src": src, "dst": dst}
        self._conns: dict[str, Any] = {}

    # -- plain SQL on either side -----------------------------------------------------------

    def conn(self, side: str) -> Any:
        conn = self._conns.get(side)
        if conn is None or conn.closed:
            conn = psycopg2.connect(self.server.dsn(self.db[side]), application_name=f"copy-test-{side}")
            conn.autocommit = True
            with conn.cursor() as cur:
                # Same output settings on both sides, so text forms compare byte for byte.
                cur.execute(
                    "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, MDY'; "
                    "SET IntervalStyle = 'postgres'; SET extra_float_digits = 3; "
                    "SET bytea_output = 'hex'"
                )
            self._conns[side] = conn
        return conn

    def sql(self, side: str, statement: str | sql.Composable, params: Any = None) -> None:
        with self.conn(side).cursor() as cur:
            cur.execute(statement, params)

    def both(self, statement: str | sql.Composable, params: Any = None) -> None:
        self.sql("src", statement, params)
        self.sql("dst", statement, params)

    def rows(self, side: str, query: str | sql.Composable, params: Any = None) -> list[tuple]:
        with self.conn(side).cursor() as cur:
            cur.execute(query, params)
            return cur.fetchall()

    def one(self, side: str, query: str | sql.Composable, params: Any = None) -> Any:
        return self.rows(side, query, params)[0][0]

    def count(self, side: str, table: str = "t") -> int:
        return self.one(side, f"SELECT count(*) FROM {table}")

    def digest(self, side: str, table: str = "t", order: str | None = None) -> tuple[int, str | None]:
        """Row count and md5 of all rows' text in ``order`` (default: the full row text)."""
        order = order or "x::text"
        return tuple(
            self.rows(side, f"SELECT count(*), md5(string_agg(x::text, '|' ORDER BY {order})) FROM {table} x")[0]
        )

    def column_digests(self, side: str, table: str, columns: Sequence[str], order: str) -> dict[str, Any]:
        """Per column: md5 of every value's text form in ``order``, NULLs marked distinctly."""
        parts = [
            sql.SQL(
                "md5(string_agg(CASE WHEN {c} IS NULL THEN 'N' ELSE 'V' || {c}::text END, ',' ORDER BY {order}))"
            ).format(c=sql.Identifier(c), order=sql.SQL(order))
            for c in columns
        ]
        query = sql.SQL("SELECT {} FROM {}").format(sql.SQL(", ").join(parts), sql.SQL(table))
        return dict(zip(columns, self.rows(side, query)[0], strict=True))

    def sorted_rows(self, side: str, table: str = "t") -> list[tuple]:
        """All rows, as Python values, sorted by their text form (a multiset compare)."""
        return [r[1:] for r in self.rows(side, f"SELECT x::text, x.* FROM {table} x ORDER BY 1")]

    def note_table(self, rows: int, note: str = "'note ' || g") -> None:
        """Table ``t (id int PRIMARY KEY, note text)`` on both sides; the source gets ids 1 to
        ``rows`` with the SQL expression ``note`` (of ``g``, the id) as their note."""
        self.both("CREATE TABLE t (id int PRIMARY KEY, note text)")
        self.sql("src", f"INSERT INTO t SELECT g, {note} FROM generate_series(1, %s) g", (rows,))

    # -- the ledger -------------------------------------------------------------------------

    def ledger_schemas(self, side: str = "dst") -> list[str]:
        """The schemas holding a ledger table, in order."""
        return [
            r[0]
            for r in self.rows(
                side,
                "SELECT relnamespace::regnamespace::text FROM pg_class WHERE relname = %s ORDER BY 1",
                (CHUNK_LEDGER_TABLE,),
            )
        ]

    def ledger(self, copy_id: str, side: str = "dst") -> list[dict[str, Any]]:
        """The ledger rows of ``copy_id``, in whichever schema its ledger is (none if no ledger)."""
        found: list[dict[str, Any]] = []
        for schema in self.ledger_schemas(side):
            with self.conn(side).cursor() as cur:
                cur.execute(
                    sql.SQL("SELECT * FROM {}.{} WHERE copy_id = %s ORDER BY chunk_no").format(
                        sql.SQL(schema), sql.Identifier(CHUNK_LEDGER_TABLE)
                    ),
                    (copy_id,),
                )
                names = [d.name for d in cur.description]
                found += [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
        return found

    def assert_ledger_complete(self, copy_id: str, rows: int, side: str = "dst") -> list[dict[str, Any]]:
        chunks = self.ledger(copy_id, side)
        assert chunks, f"no ledger rows for {copy_id}"
        assert all(c["finished_at"] is not None for c in chunks), chunks
        assert sum(c["rows_copied"] for c in chunks) == rows
        assert [c["chunk_no"] for c in chunks] == list(range(len(chunks)))
        return chunks

    # -- copies -----------------------------------------------------------------------------

    def pool(self, side: str, user: str | None = None, **kwargs: Any) -> ConnectionPool:
        """A pool of ``side``, connecting as ``user`` (default: the server's superuser)."""
        dsn = self.server.dsn(self.db[side], **({"user": user} if user else {}))
        return ConnectionPool(lambda: psycopg2.connect(dsn), name=f"{side}-pool", **kwargs)

    @contextmanager
    def pools(self, source_user: str | None = None) -> Iterator[tuple[ConnectionPool, ConnectionPool]]:
        src, dst = self.pool("src", source_user), self.pool("dst")
        try:
            yield src, dst
        finally:
            src.close()
            dst.close()

    def copy(self, spec: CopySpec, copy_id: str = "copy-1", source_user: str | None = None) -> dict[str, Any]:
        with self.pools(source_user) as (src, dst):
            return TableCopy(src, dst, spec, copy_id=copy_id).run().to_xcom()

    def close(self) -> None:
        for conn in self._conns.values():
            if not conn.closed:
                conn.close()
        self._conns.clear()


class LedgerCounts(NamedTuple):
    done: int  # chunks finished
    chunks: int  # chunks planned
    rows: int  # their rows_copied, summed


def ledger_counts(conn: Any, copy_id: str | None = None) -> LedgerCounts | None:
    """The copy ledger's chunks of ``copy_id`` (or of every copy) in the database of ``conn``, a
    psycopg2 connection (its transaction is ended); None while there is no ledger."""
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass(%s) IS NOT NULL", (CHUNK_LEDGER_TABLE,))
        counts = None
        if cur.fetchone()[0]:
            cur.execute(
                f"SELECT count(finished_at), count(*), coalesce(sum(rows_copied), 0) FROM {CHUNK_LEDGER_TABLE} "
                "WHERE %(copy_id)s::text IS NULL OR copy_id = %(copy_id)s",
                {"copy_id": copy_id},
            )
            counts = LedgerCounts(*cur.fetchone())
    conn.commit()
    return counts


def chunks_done(conn: Any, copy_id: str | None = None) -> int:
    """Chunks the ledger records as done (0 before the ledger exists)."""
    counts = ledger_counts(conn, copy_id)
    return counts.done if counts else 0


def icu_collation(env: CopyEnv) -> str | None:
    """A usable ICU root collation ('a' < 'B', unlike "C"), if the server has one.

    PostgreSQL 16 lists "unicode" even when built without ICU, so each candidate is tried.
    """
    found = env.rows(
        "src",
        "SELECT collname FROM pg_collation WHERE collprovider = 'i' "
        "AND collname IN ('unicode', 'und-x-icu') ORDER BY collname",
    )
    for (name,) in found:
        try:
            if env.one("src", sql.SQL("SELECT 'a' < 'B' COLLATE {}").format(sql.Identifier(name))):
                return name
        except psycopg2.Error:
            continue
    return None


def expected_chunks(rows: int, chunk_size: int) -> int:
    return max(1, math.ceil(rows / chunk_size))
