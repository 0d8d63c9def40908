"""Which rows an incremental sync of a table copies: every row until its first load has
finished, then the rows changed in the run's interval.

A first load is done when the copy ledger says every chunk of it is done, not when the target has
rows: a first load stopped after some chunks leaves rows behind, and each later run resumes it
(under one copy id for all runs) until it finishes. Its chunks then read the source at the instants
of several runs, so a run whose interval began before the first load finished reads the changes
from the instant the first load was planned on, not only from its interval's start.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from psycopg2 import sql

from airflow_pool_provider.copy.catalog import Side, load_table
from airflow_pool_provider.copy.ledger import Ledger
from airflow_pool_provider.copy.names import TableName

LOG = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SyncStep:
    """What one run copies: ``where`` the row filter ("" for every row), under ``copy_id`` (the
    first load's; "" for the run's own)."""

    where: str
    copy_id: str


def first_load_id(table: TableName) -> str:
    """The copy id of a table's first load: the same in every run, so that a later run resumes it."""
    return f"incremental first load of {table}"


def next_step(cur, table: TableName, column: str, start: datetime, end: datetime, lookback: timedelta) -> SyncStep:
    """The step of the run for ``[start, end)`` on the target ``cur`` reads: the first load (begun,
    resumed) or the rows whose ``column`` is in the interval, ``lookback`` earlier."""
    table = load_table(cur, table, Side.TARGET).name  # as found: the schema a bare name is in
    copy_id = first_load_id(table)
    first = Ledger.locate(cur, copy_id, table.schema, None, LOG).progress(cur, copy_id)
    if (first is None and _empty(cur, table)) or (first is not None and not first.finished):
        return SyncStep("", copy_id)
    since = start
    if first is not None and first.last_finished_at >= start:
        since = min(since, first.planned_at)
    since -= lookback
    ident = sql.Identifier(column)
    window = sql.SQL("{} >= {} AND {} < {}").format(
        ident, sql.Literal(since.isoformat()), ident, sql.Literal(end.isoformat())
    )
    return SyncStep(window.as_string(cur), "")


def _empty(cur, table: TableName) -> bool:
    cur.execute(sql.SQL("SELECT NOT EXISTS (SELECT 1 FROM {})").format(table.identifier()))
    return cur.fetchone()[0]
