"""A table checked as a whole after its load: the sum of the chunks' source checksums, which the
ledger kept as each chunk was read, against one pass over the target table.

This is how a copy into a table with no index yet stays linear in the table's size (a per-chunk
check would scan the whole table for every chunk), and, on a source being written to, it
compares the target with what was read, not with a fresh read of the source.
"""

from __future__ import annotations

from dataclasses import dataclass

from psycopg2 import sql

from airflow_pool_provider.copy import checksum
from airflow_pool_provider.copy.catalog import Table
from airflow_pool_provider.copy.chunk import SOURCE_DIGEST
from airflow_pool_provider.copy.ledger import Ledger
from airflow_pool_provider.errors import CopyMistake


@dataclass(frozen=True, slots=True)
class TableCheck:
    table: str
    method: str
    source_rows: int  # as read, by the ledger
    target_rows: int
    source_sum: int
    target_sum: int

    @property
    def matches(self) -> bool:
        return (self.source_rows, self.source_sum) == (self.target_rows, self.target_sum)


def check_table(
    tcur, target: Table, columns: tuple[str, ...], method: str, ledger: Ledger, copy_ids: list[str]
) -> TableCheck:
    """Compare ``target`` (all its rows) with what the copies ``copy_ids`` read from the source."""
    tcur.execute(
        sql.SQL("SELECT coalesce(sum(rows_copied), 0), array_agg(checksum) FROM {} WHERE copy_id = ANY(%s)").format(
            ledger.table
        ),
        (copy_ids,),
    )
    rows, digests = tcur.fetchone()
    prefix = f"{SOURCE_DIGEST}{method}:"
    if any(d is None or not d.startswith(prefix) for d in digests or []):
        raise CopyMistake(
            f"the ledger of {target.name} holds no {method} source checksum for some chunk: it was "
            "copied with per-chunk verification or without checksums"
        )
    source_sum = sum(int(d[len(prefix) :]) for d in digests or [])
    checksum.stable_output(tcur)
    tcur.execute(checksum.query(method, columns, target.ident, sql.SQL("true")))
    target_rows, target_sum = tcur.fetchone()
    return TableCheck(str(target.name), method, int(rows), int(target_rows), source_sum, int(target_sum))
