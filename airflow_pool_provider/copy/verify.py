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
from airflow_pool_provider.copy.catalog import Side, Table
from airflow_pool_provider.copy.checksum import ChecksumMethod, ChunkDigest
from airflow_pool_provider.copy.ledger import Ledger
from airflow_pool_provider.copy.row_security import read_every_row
from airflow_pool_provider.errors import CopyMistake


@dataclass(frozen=True, slots=True)
class TableCheck:
    table: str
    method: ChecksumMethod
    source_rows: int  # as read, by the ledger
    target_rows: int
    source_sum: int
    target_sum: int

    def __post_init__(self) -> None:
        # Read back from a ledger's JSON, the method is its word.
        object.__setattr__(self, "method", ChecksumMethod(self.method))

    @property
    def matches(self) -> bool:
        return (self.source_rows, self.source_sum) == (self.target_rows, self.target_sum)


def check_table(
    tcur, target: Table, columns: tuple[str, ...], method: ChecksumMethod, ledger: Ledger, copy_ids: list[str]
) -> TableCheck:
    """Compare ``target`` (all its rows) with what the copies ``copy_ids`` read from the source."""
    tcur.execute(
        sql.SQL("SELECT coalesce(sum(rows_copied), 0), array_agg(checksum) FROM {} WHERE copy_id = ANY(%s)").format(
            ledger.table
        ),
        (copy_ids,),
    )
    rows, digests = tcur.fetchone()
    source_sum = sum(_source_digest(text, method, target).total for text in digests or [])
    checksum.stable_output(tcur)
    read_every_row(tcur)  # all its rows, not those a row-level security policy lets the role see
    target_sum = checksum.fetch(tcur, checksum.query(method, columns, target.own_rows, sql.SQL("true")))
    return TableCheck(str(target.name), method, int(rows), target_sum.rows, source_sum, target_sum.total)


def _source_digest(text: str | None, method: ChecksumMethod, target: Table) -> ChunkDigest:
    """A chunk's source checksum, as the ledger kept it for a check of the whole table."""
    digest = ChunkDigest.parse(text)
    if digest is None or digest.side is not Side.SOURCE or digest.method is not method:
        raise CopyMistake(
            f"the ledger of {target.name} holds no {method} source checksum for some chunk: it was "
            "copied with per-chunk verification or without checksums"
        )
    return digest
