"""Order-independent checksums of a chunk's rows, computed by each server on its own rows.

``hash_record_extended`` is fast but only comparable across databases for built-in types with a
hash function (an enum hashes its OID, ``json`` has no hash, a ``regclass`` is an OID); other tables hash the rows' text
form, which both sides print identically under the same session settings.
"""

from __future__ import annotations

from collections.abc import Sequence

from psycopg2 import sql

from airflow_pool_provider.copy.catalog import Table

# Session settings that fix the text form of values, so both sides print rows identically.
STABLE_OUTPUT = {
    "DateStyle": "ISO, MDY",
    "IntervalStyle": "postgres",
    "TimeZone": "UTC",
    "extra_float_digits": "3",
    "bytea_output": "hex",
}


def method(source: Table, target: Table, columns: Sequence[str]) -> str:
    """ "record" (binary hash) when every column allows it on both sides, else "text"."""
    fast = all(t.by_name[c].portable_binary and t.by_name[c].hashable for t in (source, target) for c in columns)
    return "record" if fast else "text"


def query(
    how: str, columns: Sequence[str], source: sql.Composable, where: sql.Composable, alias: str | None = None
) -> sql.Composed:
    """``SELECT count, sum-of-row-hashes FROM source WHERE where``."""
    refs = [sql.Identifier(alias, c) if alias else sql.Identifier(c) for c in columns]
    row = sql.SQL("ROW({})").format(sql.SQL(", ").join(refs))
    expr = (
        sql.SQL("hash_record_extended({}, 0)").format(row)
        if how == "record"
        else sql.SQL("hashtext({}::text)").format(row)
    )
    return sql.SQL("SELECT count(*), coalesce(sum({}), 0)::text FROM {} WHERE {}").format(expr, source, where)


def stable_output(cur) -> None:
    """Fix the output settings for the current transaction."""
    cur.execute(
        "SELECT " + ", ".join("set_config(%s, %s, true)" for _ in STABLE_OUTPUT),
        [v for item in STABLE_OUTPUT.items() for v in item],
    )
