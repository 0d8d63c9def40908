"""The progress ledger: the copy's plan and each chunk's result, kept in the target database.

A chunk's rows and its ledger row commit in one transaction, so after any crash the ledger says
exactly which chunks are in the target: a re-run skips those and redoes the rest. A chunk's row
also keeps the label its caller gave the instant the chunk's source transaction read (a
migration: its snapshot epoch), so what the target holds can be told apart by instant.

Where it lives: the schema given (``ledger_schema``), else the target table's schema, which the
target role can write to whenever it can create the table there; a copy already recorded in a
ledger in ``public`` (where earlier versions kept it) is still found there. Finished copies are
pruned after ``retention_days``; a pruned copy_id that runs again is a new copy.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg2
from psycopg2 import sql
from psycopg2.extras import execute_values

from airflow_pool_provider.copy.checksum import ChunkDigest
from airflow_pool_provider.copy.names import quote_ident
from airflow_pool_provider.copy.plan import Chunk, Keyset, KeysetKind
from airflow_pool_provider.errors import CopyMistake, first_line

CHUNK_LEDGER_TABLE = "airflow_pool_provider_copy_chunks"
LEGACY_SCHEMA = "public"
RIGHTS = ("SELECT", "INSERT", "UPDATE", "DELETE")
#: The column added after the first versions: a ledger made by one of those gets it when ensured.
READ_INSTANT = "read_instant"

Log = logging.Logger | logging.LoggerAdapter

_DDL = """CREATE TABLE IF NOT EXISTS {} (
    copy_id       text        NOT NULL,
    chunk_no      integer     NOT NULL,
    source_table  text        NOT NULL,
    target_table  text        NOT NULL,
    key_kind      text        NOT NULL,
    key_columns   jsonb       NOT NULL,
    lower_bound   jsonb,
    upper_bound   jsonb,
    expected_rows bigint,
    planned_at    timestamptz NOT NULL DEFAULT now(),
    rows_copied   bigint,
    bytes_copied  bigint,
    checksum      text,
    seconds       double precision,
    finished_at   timestamptz,
    read_instant  integer,
    PRIMARY KEY (copy_id, chunk_no)
)"""


@dataclass(frozen=True, slots=True)
class ChunkResult:
    rows: int
    bytes: int
    checksum: ChunkDigest | None


@dataclass(frozen=True, slots=True)
class _PlannedChunkRow:
    """One chunk's ledger row as ``load_plan`` selects it."""

    chunk_no: int
    key_kind: str
    key_columns: list[str]
    lower_bound: list[str] | None
    upper_bound: list[str] | None
    expected_rows: int | None
    finished: bool
    source_table: str
    target_table: str

    def chunk(self) -> Chunk:
        return Chunk(self.chunk_no, _tuple(self.lower_bound), _tuple(self.upper_bound), self.expected_rows)


@dataclass(frozen=True, slots=True)
class StoredPlan:
    keyset: Keyset
    chunks: list[Chunk]
    done: frozenset[int]


@dataclass(frozen=True, slots=True)
class LedgerTotals:
    chunks: int
    chunks_done: int
    rows: int
    bytes: int


@dataclass(frozen=True, slots=True)
class CopyProgress:
    """What the ledger holds of one copy: when it was planned and when its last chunk finished."""

    chunks: int
    chunks_done: int
    planned_at: datetime
    last_finished_at: datetime | None

    @property
    def finished(self) -> bool:
        return self.chunks_done == self.chunks


class Ledger:
    """Reads and writes the ledger through cursors of the target database."""

    def __init__(self, schema: str) -> None:
        self.schema = schema
        self.table = sql.Identifier(schema, CHUNK_LEDGER_TABLE)
        self.keeps_instants = False  # known once ensured: whether chunks' read instants are recorded

    def __str__(self) -> str:
        return f"{quote_ident(self.schema)}.{quote_ident(CHUNK_LEDGER_TABLE)}"

    @classmethod
    def locate(cls, cur, copy_id: str, target_schema: str, schema: str | None, log: Log) -> Ledger:
        """The ledger to use: ``schema`` if given; else the one in ``public`` if it already holds
        ``copy_id``; else the target table's schema. A ``public`` ledger this role may not read
        (another role's) is passed over, and the log says so: it cannot hold this role's copies."""
        if schema is not None:
            return cls(schema)
        if target_schema != LEGACY_SCHEMA and _exists(cur, LEGACY_SCHEMA):
            legacy = cls(LEGACY_SCHEMA)
            if not _may_read(cur, legacy):
                log.warning(
                    "copy %s: the ledger %s exists, but role %s may not read it, so it is not looked at for "
                    "an earlier attempt of this copy; the copy's ledger is %s",
                    copy_id,
                    legacy,
                    quote_ident(_role(cur)),
                    cls(target_schema),
                )
                return cls(target_schema)
            cur.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {} WHERE copy_id = %s)").format(legacy.table), (copy_id,))
            if cur.fetchone()[0]:
                return legacy
        return cls(target_schema)

    def ensure(self, cur) -> None:
        """Create the ledger table once, or say what to grant; copies starting together wait here."""
        ensure_table(cur, self.schema, CHUNK_LEDGER_TABLE, _DDL, "the copy's ledger")
        self.keeps_instants = _add_column(cur, self.schema, CHUNK_LEDGER_TABLE, READ_INSTANT, "integer")

    def load_plan(self, cur, copy_id: str, source: str, target: str) -> StoredPlan | None:
        """The stored plan of ``copy_id`` and the chunks already done, or None for a new copy."""
        cur.execute(
            sql.SQL(
                "SELECT chunk_no, key_kind, key_columns, lower_bound, upper_bound, expected_rows, "
                "finished_at IS NOT NULL, source_table, target_table FROM {} WHERE copy_id = %s "
                "ORDER BY chunk_no"
            ).format(self.table),
            (copy_id,),
        )
        rows = [_PlannedChunkRow(*row) for row in cur.fetchall()]
        if not rows:
            return None
        first = rows[0]
        if (first.source_table, first.target_table) != (source, target):
            raise CopyMistake(
                f"copy_id {copy_id!r} already names a copy of {first.source_table} -> {first.target_table} in the "
                f"ledger; give this copy of {source} -> {target} another copy_id"
            )
        keyset = Keyset(KeysetKind(first.key_kind), tuple(first.key_columns), "the plan stored by the earlier run")
        chunks = [row.chunk() for row in rows]
        return StoredPlan(keyset, chunks, frozenset(row.chunk_no for row in rows if row.finished))

    def save_plan(self, cur, copy_id: str, source: str, target: str, keyset: Keyset, chunks: list[Chunk]) -> None:
        execute_values(
            cur,
            sql.SQL(
                "INSERT INTO {} (copy_id, chunk_no, source_table, target_table, key_kind, key_columns, "
                "lower_bound, upper_bound, expected_rows) VALUES %s"
            )
            .format(self.table)
            .as_string(cur),
            [
                (
                    copy_id,
                    c.no,
                    source,
                    target,
                    keyset.kind.value,
                    json.dumps(list(keyset.columns)),
                    _json(c.lower),
                    _json(c.upper),
                    c.expected_rows,
                )
                for c in chunks
            ],
        )

    def forget(self, cur, copy_id: str) -> None:
        """Drop a copy's plan and progress (a copy that must start over)."""
        cur.execute(sql.SQL("DELETE FROM {} WHERE copy_id = %s").format(self.table), (copy_id,))

    def forget_prefix(self, cur, prefix: str) -> None:
        """Drop the plans and progress of every copy whose id starts with ``prefix`` (a migration's)."""
        if _exists(cur, self.schema):
            cur.execute(sql.SQL("DELETE FROM {} WHERE starts_with(copy_id, %s)").format(self.table), (prefix,))

    def claim(self, cur, copy_id: str, chunk_no: int) -> bool:
        """Lock the chunk's ledger row for this transaction; False if it is already done.

        The lock keeps a second attempt running at the same time (a zombie task) from copying the
        same chunk twice: it waits here and then sees the chunk done.
        """
        cur.execute(
            sql.SQL("SELECT finished_at IS NULL FROM {} WHERE copy_id = %s AND chunk_no = %s FOR UPDATE").format(
                self.table
            ),
            (copy_id, chunk_no),
        )
        row = cur.fetchone()
        if row is None:
            raise CopyMistake(
                f"chunk {chunk_no + 1} of copy {copy_id!r} is missing from the ledger {self}: its rows were "
                "deleted while the copy ran; run the copy again under another copy_id"
            )
        return bool(row[0])

    def finish(
        self, cur, copy_id: str, chunk_no: int, result: ChunkResult, seconds: float, read_instant: int | None = None
    ) -> None:
        """Mark the chunk done, in the chunk's target transaction; ``read_instant``: the caller's
        label of the instant its source transaction read (kept if the ledger has the column)."""
        instant = sql.SQL(", {} = %s").format(sql.Identifier(READ_INSTANT)) if self.keeps_instants else sql.SQL("")
        cur.execute(
            sql.SQL(
                "UPDATE {} SET rows_copied = %s, bytes_copied = %s, checksum = %s, seconds = %s, "
                "finished_at = clock_timestamp(){} WHERE copy_id = %s AND chunk_no = %s"
            ).format(self.table, instant),
            (result.rows, result.bytes, _text(result.checksum), seconds)
            + ((read_instant,) if self.keeps_instants else ())
            + (copy_id, chunk_no),
        )

    def read_instants(self, cur, copy_ids: list[str]) -> dict[str, tuple[int, ...]]:
        """The read instants each copy's done chunks recorded (in one query), in order; a copy
        whose chunks recorded none (a ledger without the column, a caller without labels) is left out."""
        if not _has_column(cur, self.schema, CHUNK_LEDGER_TABLE, READ_INSTANT):
            return {}
        cur.execute(
            sql.SQL(
                "SELECT copy_id, array_agg(DISTINCT {c} ORDER BY {c}) FROM {t} "
                "WHERE copy_id = ANY(%s) AND {c} IS NOT NULL GROUP BY copy_id"
            ).format(c=sql.Identifier(READ_INSTANT), t=self.table),
            (copy_ids,),
        )
        return {copy_id: tuple(instants) for copy_id, instants in cur.fetchall()}

    def totals(self, cur, copy_id: str) -> LedgerTotals:
        cur.execute(
            sql.SQL(
                "SELECT count(*), count(finished_at), coalesce(sum(rows_copied), 0), "
                "coalesce(sum(bytes_copied), 0) FROM {} WHERE copy_id = %s"
            ).format(self.table),
            (copy_id,),
        )
        chunks, done, rows, nbytes = cur.fetchone()
        return LedgerTotals(chunks, done, int(rows), int(nbytes))

    def progress(self, cur, copy_id: str) -> CopyProgress | None:
        """The copy's progress; None if the ledger holds nothing of it (never planned, or pruned)."""
        if not _exists(cur, self.schema):
            return None
        cur.execute(
            sql.SQL(
                "SELECT count(*), count(finished_at), min(planned_at), max(finished_at) FROM {} WHERE copy_id = %s"
            ).format(self.table),
            (copy_id,),
        )
        chunks, done, planned_at, last_finished_at = cur.fetchone()
        return CopyProgress(chunks, done, planned_at, last_finished_at) if chunks else None

    def prune(self, cur, retention_days: float) -> int:
        """Delete the rows of copies whose every chunk finished more than ``retention_days`` ago.

        Returns the number of copies pruned. Unfinished copies are always kept: they can resume.
        """
        cur.execute(
            sql.SQL("""
            WITH finished AS (
                SELECT copy_id FROM {table} GROUP BY copy_id
                HAVING bool_and(finished_at IS NOT NULL)
                   AND max(finished_at) < now() - make_interval(secs => %s)
            ), gone AS (
                DELETE FROM {table} l USING finished f WHERE l.copy_id = f.copy_id RETURNING l.copy_id
            )
            SELECT count(DISTINCT copy_id) FROM gone""").format(table=self.table),
            (retention_days * 86400.0,),
        )
        return cur.fetchone()[0]


def ensure_table(cur, schema: str, table: str, ddl: str, what: str) -> None:
    """Create a bookkeeping table (``ddl`` formats one ``{}``: the table) once, or raise a
    CopyMistake that gives the GRANT to run, or the DDL for an administrator to run once."""
    ident = sql.Identifier(schema, table)
    shown = f"{quote_ident(schema)}.{quote_ident(table)}"
    if not _exists(cur, schema, table):
        cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (table,))
        cur.execute("SAVEPOINT ledger_create")
        try:
            cur.execute(sql.SQL(ddl).format(ident))
        except (psycopg2.errors.InsufficientPrivilege, psycopg2.errors.InvalidSchemaName) as exc:
            cur.execute("ROLLBACK TO SAVEPOINT ledger_create")
            role = quote_ident(_role(cur))
            reason = first_line(exc)
            raise CopyMistake(
                f"cannot create {what} table {shown} ({reason}). Either grant the target role the right to "
                f"create it: GRANT CREATE ON SCHEMA {quote_ident(schema)} TO {role}; or name a schema it may "
                f"write to with ledger_schema=...; or have an administrator create it once:\n"
                f"{sql.SQL(ddl).format(ident).as_string(cur)};\nGRANT {', '.join(RIGHTS)} ON {shown} TO {role};"
            ) from exc
    cur.execute("SELECT " + ", ".join(f"has_table_privilege(%s, '{r}')" for r in RIGHTS), [shown] * len(RIGHTS))
    missing = [r for r, ok in zip(RIGHTS, cur.fetchone(), strict=True) if not ok]
    if missing:
        raise CopyMistake(
            f"{what} {shown} exists, but this role lacks {', '.join(missing)} on it. Have its owner run: "
            f"GRANT {', '.join(RIGHTS)} ON {shown} TO {quote_ident(_role(cur))};"
        )


def _add_column(cur, schema: str, table: str, column: str, type_: str) -> bool:
    """Add ``column`` to a bookkeeping table an earlier version made without it; False if it is
    missing and this role may not add it (only the table's owner may): the work goes on without
    it, and its owner's next run adds it."""
    if _has_column(cur, schema, table, column):
        return True
    cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (table,))
    cur.execute("SAVEPOINT ledger_column")
    try:
        cur.execute(
            sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {}").format(
                sql.Identifier(schema, table), sql.Identifier(column), sql.SQL(type_)
            )
        )
    except psycopg2.errors.InsufficientPrivilege:
        cur.execute("ROLLBACK TO SAVEPOINT ledger_column")
        return False
    cur.execute("RELEASE SAVEPOINT ledger_column")
    return True


def _has_column(cur, schema: str, table: str, column: str) -> bool:
    cur.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attname = %s "
        "AND NOT attisdropped)",
        (f"{quote_ident(schema)}.{quote_ident(table)}", column),
    )
    return cur.fetchone()[0]


def _exists(cur, schema: str, table: str = CHUNK_LEDGER_TABLE) -> bool:
    cur.execute("SELECT to_regclass(%s) IS NOT NULL", (f"{quote_ident(schema)}.{quote_ident(table)}",))
    return cur.fetchone()[0]


def _may_read(cur, ledger: Ledger) -> bool:
    cur.execute("SELECT has_table_privilege(%s, 'SELECT')", (str(ledger),))
    return cur.fetchone()[0]


def _role(cur) -> str:
    cur.execute("SELECT current_user")
    return cur.fetchone()[0]


def _text(digest: ChunkDigest | None) -> str | None:
    return None if digest is None else str(digest)


def _json(bound: tuple[str, ...] | None) -> str | None:
    return None if bound is None else json.dumps(list(bound))


def _tuple(bound: Any) -> tuple[str, ...] | None:
    return None if bound is None else tuple(bound)
