"""The stage ledger: each stage's objects (tables, indexes, constraints, ...) as pending or done,
kept in the target database next to the copies' chunk ledger.

A stage records an object as done in the same transaction as the work where PostgreSQL allows
it, so a re-run after any failure redoes exactly what is missing; where it does not (``CREATE
INDEX CONCURRENTLY``), the work itself is made idempotent. The ledger also remembers which
target tables a migration created: ``mode='resume'`` refuses to touch others.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from psycopg2 import sql

from airflow_pool_provider.copy.ledger import ensure_table
from airflow_pool_provider.copy.names import quote_ident

LEDGER_TABLE = "airflow_pool_provider_migrations"

_DDL = """CREATE TABLE IF NOT EXISTS {} (
    migration_id  text        NOT NULL,
    stage         text        NOT NULL,
    object        text        NOT NULL,
    status        text        NOT NULL CHECK (status IN ('pending', 'done')),
    detail        jsonb       NOT NULL DEFAULT '{{}}',
    updated_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (migration_id, stage, object)
)"""

#: The object of a stage that stands for the stage as a whole.
STAGE = "*"


@dataclass(frozen=True, slots=True)
class StageRecord:
    stage: str
    object: str
    status: str
    detail: dict[str, Any]


class MigrationLedger:
    def __init__(self, schema: str, migration_id: str) -> None:
        self.schema = schema
        self.migration_id = migration_id
        self.table = sql.Identifier(schema, LEDGER_TABLE)

    def ensure(self, cur) -> None:
        ensure_table(cur, self.schema, LEDGER_TABLE, _DDL, "the migration's stage ledger")

    def exists(self, cur) -> bool:
        cur.execute("SELECT to_regclass(%s) IS NOT NULL", (f"{quote_ident(self.schema)}.{quote_ident(LEDGER_TABLE)}",))
        return cur.fetchone()[0]

    def record(self, cur, stage: str, obj: str, status: str = "done", detail: dict[str, Any] | None = None) -> None:
        cur.execute(
            sql.SQL(
                "INSERT INTO {} (migration_id, stage, object, status, detail) VALUES (%s, %s, %s, %s, %s) "
                "ON CONFLICT (migration_id, stage, object) DO UPDATE SET status = EXCLUDED.status, "
                "detail = EXCLUDED.detail, updated_at = clock_timestamp()"
            ).format(self.table),
            (self.migration_id, stage, obj, status, json.dumps(detail or {})),
        )

    def records(self, cur, stage: str | None = None) -> list[StageRecord]:
        query = sql.SQL("SELECT stage, object, status, detail FROM {} WHERE migration_id = %s").format(self.table)
        params: list[Any] = [self.migration_id]
        if stage is not None:
            query = sql.SQL("{} AND stage = %s").format(query)
            params.append(stage)
        cur.execute(sql.SQL("{} ORDER BY stage, object").format(query), params)
        return [StageRecord(*row) for row in cur.fetchall()]

    def forget(self, cur, keep: tuple[str, ...] = ()) -> None:
        """Delete the migration's records, but those of the stages in ``keep``."""
        cur.execute(
            sql.SQL("DELETE FROM {} WHERE migration_id = %s AND stage <> ALL(%s)").format(self.table),
            (self.migration_id, list(keep)),
        )

    def done(self, cur, stage: str, obj: str = STAGE) -> bool:
        return any(r.object == obj and r.status == "done" for r in self.records(cur, stage))
