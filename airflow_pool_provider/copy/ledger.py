"""The progress ledger: the copy's plan and each chunk's result, kept in the target database.

A chunk's rows and its ledger row commit in one transaction, so after any crash the ledger says
exactly which chunks are in the target: a re-run skips those and redoes the rest.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from psycopg2 import sql

from airflow_pool_provider.copy.plan import Chunk, Keyset

LEDGER_TABLE = "airflow_pool_provider_copy_chunks"


@dataclass(frozen=True, slots=True)
class ChunkResult:
    rows: int
    bytes: int
    checksum: str | None


class Ledger:
    """Reads and writes the ledger through cursors of the target database."""

    def __init__(self, schema: str = "public") -> None:
        self.table = sql.Identifier(schema, LEDGER_TABLE)
        self.schema = schema

    def ensure(self, cur) -> None:
        """Create the ledger table once; copies starting together wait for each other here."""
        cur.execute("SELECT to_regclass(%s) IS NOT NULL", (f"{self.schema}.{LEDGER_TABLE}",))
        if cur.fetchone()[0]:
            return
        cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (LEDGER_TABLE,))
        cur.execute(
            sql.SQL("""
            CREATE TABLE IF NOT EXISTS {} (
                copy_id      text        NOT NULL,
                chunk_no     integer     NOT NULL,
                source_table text        NOT NULL,
                target_table text        NOT NULL,
                key_kind     text        NOT NULL,
                key_columns  jsonb       NOT NULL,
                lower_bound  jsonb,
                upper_bound  jsonb,
                expected_rows bigint,
                planned_at   timestamptz NOT NULL DEFAULT now(),
                rows_copied  bigint,
                bytes_copied bigint,
                checksum     text,
                seconds      double precision,
                finished_at  timestamptz,
                PRIMARY KEY (copy_id, chunk_no)
            )""").format(self.table)
        )

    def load_plan(self, cur, copy_id: str, source: str, target: str) -> tuple[Keyset, list[Chunk], set[int]] | None:
        """The stored plan of ``copy_id`` and the chunks already done, or None for a new copy."""
        cur.execute(
            sql.SQL("SELECT chunk_no, key_kind, key_columns, lower_bound, upper_bound, expected_rows, "
                    "finished_at IS NOT NULL, source_table, target_table FROM {} WHERE copy_id = %s "
                    "ORDER BY chunk_no").format(self.table),
            (copy_id,),
        )
        rows = cur.fetchall()
        if not rows:
            return None
        if (rows[0][7], rows[0][8]) != (source, target):
            raise ValueError(
                f"copy_id {copy_id!r} already names a copy of {rows[0][7]} -> {rows[0][8]} in the ledger; "
                f"give this copy of {source} -> {target} another copy_id"
            )
        keyset = Keyset(rows[0][1], tuple(rows[0][2]), "the plan stored by the earlier run")
        chunks = [Chunk(no, _tuple(lo), _tuple(hi), exp) for no, _, _, lo, hi, exp, *_ in rows]
        done = {r[0] for r in rows if r[6]}
        return keyset, chunks, done

    def save_plan(self, cur, copy_id: str, source: str, target: str, keyset: Keyset, chunks: list[Chunk]) -> None:
        from psycopg2.extras import execute_values

        execute_values(
            cur,
            sql.SQL("INSERT INTO {} (copy_id, chunk_no, source_table, target_table, key_kind, key_columns, "
                    "lower_bound, upper_bound, expected_rows) VALUES %s").format(self.table).as_string(cur),
            [
                (copy_id, c.no, source, target, keyset.kind, json.dumps(list(keyset.columns)), _json(c.lower),
                 _json(c.upper), c.expected_rows)
                for c in chunks
            ],
        )

    def forget(self, cur, copy_id: str) -> None:
        """Drop a copy's plan and progress (a copy that must start over)."""
        cur.execute(sql.SQL("DELETE FROM {} WHERE copy_id = %s").format(self.table), (copy_id,))

    def claim(self, cur, copy_id: str, chunk_no: int) -> bool:
        """Lock the chunk's ledger row for this transaction; False if it is already done.

        The lock keeps a second attempt running at the same time (a zombie task) from copying the
        same chunk twice: it waits here and then sees the chunk done.
        """
        cur.execute(
            sql.SQL("SELECT finished_at IS NULL FROM {} WHERE copy_id = %s AND chunk_no = %s "
                    "FOR UPDATE").format(self.table),
            (copy_id, chunk_no),
        )
        row = cur.fetchone()
        if row is None:
            raise RuntimeError(f"chunk {chunk_no} of copy {copy_id!r} is missing from the ledger")
        return bool(row[0])

    def finish(self, cur, copy_id: str, chunk_no: int, result: ChunkResult, seconds: float) -> None:
        cur.execute(
            sql.SQL("UPDATE {} SET rows_copied = %s, bytes_copied = %s, checksum = %s, seconds = %s, "
                    "finished_at = clock_timestamp() WHERE copy_id = %s AND chunk_no = %s").format(self.table),
            (result.rows, result.bytes, result.checksum, seconds, copy_id, chunk_no),
        )

    def totals(self, cur, copy_id: str) -> dict[str, Any]:
        cur.execute(
            sql.SQL("SELECT count(*), count(finished_at), coalesce(sum(rows_copied), 0), "
                    "coalesce(sum(bytes_copied), 0) FROM {} WHERE copy_id = %s").format(self.table),
            (copy_id,),
        )
        chunks, done, rows, nbytes = cur.fetchone()
        return {"chunks": chunks, "chunks_done": done, "rows": int(rows), "bytes": int(nbytes)}


def _json(bound: tuple[str, ...] | None) -> str | None:
    return None if bound is None else json.dumps(list(bound))


def _tuple(bound: Any) -> tuple[str, ...] | None:
    return None if bound is None else tuple(bound)
