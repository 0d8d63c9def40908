"""Chunk plans: equal-row keyset ranges over a unique key, or page ranges by ctid without one.

Boundaries come from one index probe per chunk (``WHERE key > last ORDER BY key OFFSET n-1
LIMIT 1``), so chunks hold the same number of rows however sparse or skewed the key is, and
planning never sorts or numbers the whole table.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from psycopg2 import sql

from airflow_pool_provider.copy.catalog import Table
from airflow_pool_provider.copy.choices import Choice
from airflow_pool_provider.copy.row_filter import RowFilter
from airflow_pool_provider.errors import CatalogError


class KeysetKind(Choice):
    """How a table is split: by a unique key's values, or by page (ctid) ranges without one."""

    KEY = "key"
    CTID = "ctid"


@dataclass(frozen=True, slots=True)
class Keyset:
    """How a table is split, and by which columns (none for ctid ranges)."""

    kind: KeysetKind
    columns: tuple[str, ...]
    reason: str

    def order_by(self) -> sql.Composable:
        if self.kind is KeysetKind.CTID:
            return sql.SQL("ctid")
        return sql.SQL(", ").join(sql.Identifier(c) for c in self.columns)


@dataclass(frozen=True, slots=True)
class Chunk:
    """Rows with key in (lower, upper], or pages in [lower, upper); None is open-ended."""

    no: int
    lower: tuple[str, ...] | None
    upper: tuple[str, ...] | None
    expected_rows: int | None = None


def choose_keyset(table: Table, key: tuple[str, ...] | None = None) -> Keyset:
    """The primary key, else the narrowest usable unique index, else ctid ranges."""
    if key:
        if key not in table.unique_keys:
            raise CatalogError(
                f"key {list(key)} of {table.name} is not a unique btree index on NOT NULL columns; "
                f"usable keys: {[list(k) for k in table.unique_keys] or 'none'}"
            )
        return Keyset(KeysetKind.KEY, key, f"the key {list(key)} you chose")
    if table.primary_key:
        return Keyset(KeysetKind.KEY, table.primary_key, f"primary key {list(table.primary_key)}")
    if table.unique_keys:
        cols = table.unique_keys[0]
        return Keyset(KeysetKind.KEY, cols, f"unique index on {list(cols)} (no primary key)")
    return Keyset(KeysetKind.CTID, (), "no primary key or unique NOT NULL index, so chunks are page (ctid) ranges")


def range_predicate(keyset: Keyset, chunk: Chunk) -> sql.Composable:
    """The WHERE condition selecting one chunk's rows."""
    parts: list[sql.Composable] = []
    if keyset.kind is KeysetKind.CTID:
        if chunk.lower is not None:
            parts.append(sql.SQL("ctid >= {}::tid").format(sql.Literal(f"({chunk.lower[0]},0)")))
        if chunk.upper is not None:
            parts.append(sql.SQL("ctid < {}::tid").format(sql.Literal(f"({chunk.upper[0]},0)")))
    else:
        if chunk.lower is not None:
            parts.append(_compare(keyset, ">", chunk.lower))
        if chunk.upper is not None:
            parts.append(_compare(keyset, "<=", chunk.upper))
    return sql.SQL(" AND ").join(parts) if parts else sql.SQL("true")


def _compare(keyset: Keyset, op: str, values: tuple[str, ...]) -> sql.Composable:
    # Untyped literals take the key column's type, so text forms of any key type compare right.
    if len(keyset.columns) == 1:
        return sql.SQL("{} " + op + " {}").format(sql.Identifier(keyset.columns[0]), sql.Literal(values[0]))
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in keyset.columns)
    vals = sql.SQL(", ").join(sql.Literal(v) for v in values)
    return sql.SQL("ROW({}) " + op + " ROW({})").format(cols, vals)


def plan(
    cur, table: Table, keyset: Keyset, row_filter: RowFilter, chunk_size: int, go_on: Callable[[], None] = lambda: None
) -> list[Chunk]:
    """Split the rows of ``table`` matching ``row_filter`` into chunks of about ``chunk_size`` rows.
    ``go_on`` is called before each probe and raises to stop (a big table takes many)."""
    if keyset.kind is KeysetKind.CTID:
        return _plan_pages(cur, table, row_filter, chunk_size)
    return _plan_keys(cur, table, keyset, row_filter, chunk_size, go_on)


def _plan_keys(
    cur, table: Table, keyset: Keyset, row_filter: RowFilter, chunk_size: int, go_on: Callable[[], None]
) -> list[Chunk]:
    # Aliased, so ORDER BY names the key column, not its text form (which would sort 10 < 9).
    bounds = sql.SQL(", ").join(
        sql.SQL("{}::text AS {}").format(sql.Identifier(c), sql.Identifier(f"bound_{i}"))
        for i, c in enumerate(keyset.columns)
    )
    chunks: list[Chunk] = []
    lower: tuple[str, ...] | None = None
    while True:
        go_on()
        after = _compare(keyset, ">", lower) if lower is not None else sql.SQL("true")
        # No query parameters: a '%' in the user's filter must stay a '%'.
        cur.execute(
            sql.SQL(
                "SELECT {bounds} FROM {table} WHERE {after} AND {where} ORDER BY {order} OFFSET {offset} LIMIT 1"
            ).format(
                bounds=bounds,
                table=table.own_rows,
                after=after,
                where=row_filter.clause(),
                order=keyset.order_by(),
                offset=sql.Literal(chunk_size - 1),
            )
        )
        row = cur.fetchone()
        if row is None:
            break
        upper = tuple(row)
        if upper == lower:  # a key that does not order strictly: the plan would never end
            raise CatalogError(f"key {list(keyset.columns)} of {table.name} does not order its rows strictly")
        chunks.append(Chunk(len(chunks), lower, upper, chunk_size))
        lower = upper
    last = Chunk(len(chunks), lower, None)
    cur.execute(
        sql.SQL("SELECT count(*) FROM {} WHERE {} AND {}").format(
            table.own_rows, range_predicate(keyset, last), row_filter.clause()
        )
    )
    remaining = cur.fetchone()[0]
    if remaining or not chunks:
        chunks.append(Chunk(last.no, last.lower, None, remaining))
    else:  # the table ended exactly on a boundary: open the last chunk so new rows are not missed
        prev = chunks[-1]
        chunks[-1] = Chunk(prev.no, prev.lower, None, prev.expected_rows)
    return chunks


def _plan_pages(cur, table: Table, row_filter: RowFilter, chunk_size: int) -> list[Chunk]:
    cur.execute(
        sql.SQL(
            "SELECT count(*), pg_relation_size({oid}) / current_setting('block_size')::int FROM {table} WHERE {where}"
        ).format(oid=sql.Literal(table.oid), table=table.own_rows, where=row_filter.clause())
    )
    rows, pages = cur.fetchone()
    per_chunk = max(1, math.ceil(pages * chunk_size / rows)) if rows else max(pages, 1)
    starts = list(range(0, max(pages, 1), per_chunk))
    share = rows // len(starts)
    chunks = []
    for no, start in enumerate(starts):
        end = starts[no + 1] if no + 1 < len(starts) else None
        expected = share if end is not None else rows - share * (len(starts) - 1)
        chunks.append(Chunk(no, (str(start),) if start else None, (str(end),) if end else None, expected))
    return chunks
