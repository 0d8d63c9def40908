"""Order-independent checksums of a chunk's rows, computed by each server on its own rows.

``hash_record_extended`` is fast but only comparable across databases for built-in types with a
hash function (an enum hashes its OID, ``json`` has no hash, a ``regclass`` is an OID); other tables hash the rows' text
form, which both sides print identically under the same session settings.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from psycopg2 import sql

from airflow_pool_provider.copy.catalog import Side, Table
from airflow_pool_provider.copy.choices import Choice

# Session settings that fix the text form of values, so both sides print rows identically.
STABLE_OUTPUT = {
    "DateStyle": "ISO, MDY",
    "IntervalStyle": "postgres",
    "TimeZone": "UTC",
    "extra_float_digits": "3",
    "bytea_output": "hex",
}


class ChecksumMethod(Choice):
    """How rows are hashed: ``hash_record_extended`` (binary, fast) or ``hashtext`` of their text form."""

    RECORD = "record"
    TEXT = "text"


@dataclass(frozen=True, slots=True)
class RowSum:
    """What a checksum query returns: the rows counted and the sum of their hashes."""

    rows: int
    total: int


@dataclass(frozen=True, slots=True)
class ChunkDigest:
    """What the ledger keeps of a chunk's check: the sum of its rows' hashes and how they were made,
    on the target (checked before the chunk committed) or on the source alone (``per_table``: the
    target's side is checked later, with its table)."""

    side: Side
    method: ChecksumMethod
    total: int

    def __str__(self) -> str:
        text = f"{self.method}:{self.total}"
        return f"{self.side}:{text}" if self.side is Side.SOURCE else text

    @classmethod
    def parse(cls, text: str | None) -> ChunkDigest | None:
        """The digest ``str()`` wrote; None for none, or for one in another form."""
        found = _DIGEST.fullmatch(text or "")
        if found is None:
            return None
        side = Side.SOURCE if found["side"] else Side.TARGET
        return cls(side, ChecksumMethod(found["method"]), int(found["total"]))


_METHODS = "|".join(m.value for m in ChecksumMethod)
_DIGEST = re.compile(rf"(?:(?P<side>{Side.SOURCE}):)?(?P<method>{_METHODS}):(?P<total>-?\d+)")


def method(source: Table, target: Table, columns: Sequence[str]) -> ChecksumMethod:
    """Binary hashes when every column allows them on both sides, else hashes of the text form."""
    fast = all(t.by_name[c].portable_binary and t.by_name[c].hashable for t in (source, target) for c in columns)
    return ChecksumMethod.RECORD if fast else ChecksumMethod.TEXT


def query(
    how: ChecksumMethod, columns: Sequence[str], source: sql.Composable, where: sql.Composable, alias: str | None = None
) -> sql.Composed:
    """``SELECT count, sum-of-row-hashes FROM source WHERE where``."""
    refs = [sql.Identifier(alias, c) if alias else sql.Identifier(c) for c in columns]
    row = sql.SQL("ROW({})").format(sql.SQL(", ").join(refs))
    expr = (
        sql.SQL("hash_record_extended({}, 0)").format(row)
        if how is ChecksumMethod.RECORD
        else sql.SQL("hashtext({}::text)").format(row)
    )
    return sql.SQL("SELECT count(*), coalesce(sum({}), 0)::text FROM {} WHERE {}").format(expr, source, where)


def fetch(cur, query: sql.Composable) -> RowSum:
    """Run a checksum ``query``."""
    cur.execute(query)
    rows, total = cur.fetchone()
    return RowSum(rows, int(total))


def stable_output(cur) -> None:
    """Fix the output settings for the current transaction."""
    cur.execute(
        "SELECT " + ", ".join("set_config(%s, %s, true)" for _ in STABLE_OUTPUT),
        [v for item in STABLE_OUTPUT.items() for v in item],
    )
