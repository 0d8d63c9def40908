"""The stage ledger: each stage's objects (tables, indexes, constraints, ...) as pending or done,
kept in the target database next to the copies' chunk ledger.

A stage records an object as done in the same transaction as the work where PostgreSQL allows
it, so a re-run after any failure redoes exactly what is missing; where it does not (``CREATE
INDEX CONCURRENTLY``), the work itself is made idempotent. The ledger also remembers which
target tables a migration created: ``mode='resume'`` refuses to touch others.

Rows are keyed by a stage (:class:`Stage`) and an object (:class:`ObjectKey`); their details are
the typed records of :mod:`airflow_pool_provider.migration.records`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from psycopg2 import sql

from airflow_pool_provider.copy.choices import Choice
from airflow_pool_provider.copy.ledger import ensure_table
from airflow_pool_provider.copy.names import TableName, quote_ident

STAGE_LEDGER_TABLE = "airflow_pool_provider_migrations"

_DDL = """CREATE TABLE IF NOT EXISTS {} (
    migration_id  text        NOT NULL,
    stage         text        NOT NULL,
    object        text        NOT NULL,
    status        text        NOT NULL CHECK (status IN ('pending', 'done')),
    detail        jsonb       NOT NULL DEFAULT '{{}}',
    updated_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (migration_id, stage, object)
)"""


class Stage(Choice):
    """The stages that keep records (their values are the ledger's ``stage`` column)."""

    SNAPSHOT = "snapshot"
    PRE_DATA = "pre_data"
    DATA = "data"
    POST_DATA = "post_data"
    VERIFY = "verify"


class Status(Choice):
    PENDING = "pending"
    DONE = "done"


class ObjectKind(Choice):
    STAGE = "stage"  # the stage as a whole
    TABLE = "table"  # a table or a partition (a leaf, in the data and verify stages)
    INDEX = "index"
    CONSTRAINT = "constraint"
    FOREIGN_KEY = "foreign key"
    TRIGGER = "trigger"
    RESTORE = "restore"  # post-data's restore of triggers, rules and policies from the dump
    REFRESH = "refresh"  # a materialized view populated
    CLUSTER = "cluster"  # a table's CLUSTER ON marker, on the index named
    # Compared by the verify stage, never recorded:
    NOT_NULL = "not null"  # a column's NOT NULL
    DEFINITION = "definition"  # a table's or view's own (kind, partitioning, storage, ...)
    QUERY = "query"  # a view's
    COLUMN = "column"
    RULE = "rule"
    ROW_SECURITY = "row security"
    POLICY = "policy"
    STATISTICS = "statistics"
    OWNER = "owner"


@dataclass(frozen=True, order=True)
class ObjectKey:
    """What a ledger row is about. Two keys are compared field by field, never as text; the text
    is only how the row is stored (as earlier versions stored it, so their migrations resume)."""

    kind: ObjectKind
    schema: str = ""
    table: str = ""
    name: str = ""

    @classmethod
    def of_table(cls, table: TableName) -> ObjectKey:
        return cls(ObjectKind.TABLE, table.schema or "", table.name)

    @classmethod
    def on_table(cls, kind: ObjectKind, table: TableName, name: str) -> ObjectKey:
        """An index, constraint, foreign key or trigger of ``table``."""
        return cls(kind, table.schema or "", table.name, name)

    @property
    def table_name(self) -> TableName:
        return TableName(self.schema, self.table)

    @property
    def text(self) -> str:
        """The ledger's ``object`` column."""
        kind = self.kind
        if kind is ObjectKind.STAGE:
            return "*"
        if kind is ObjectKind.RESTORE:
            return "restore"
        if kind in (ObjectKind.TABLE, ObjectKind.REFRESH):
            return ("refresh " if kind is ObjectKind.REFRESH else "") + str(self.table_name)
        if kind is ObjectKind.INDEX:  # index names are unique per schema
            return f"index {self.schema}.{self.name}"
        if kind is ObjectKind.FOREIGN_KEY:
            return f"foreign key {self.table_name}.{self.name}"
        return f"{kind.value} {self.schema}.{self.table}.{self.name}"

    @classmethod
    def from_text(cls, text: str) -> ObjectKey | None:
        """The key of a stored stage, table or restore row; None for the other kinds, which are
        only ever looked up by their key."""
        if text == "*":
            return cls(ObjectKind.STAGE)
        if text == "restore":
            return cls(ObjectKind.RESTORE)
        if text.startswith('"'):
            return cls.of_table(TableName.parse(text))
        return None

    def describe(self) -> str:
        """For messages and reports: ``index orders_pkey on orders``."""
        if self.kind in (ObjectKind.STAGE, ObjectKind.RESTORE):
            return self.kind.value
        if self.kind is ObjectKind.TABLE:
            return str(self.table_name)
        if not self.name:
            return f"{self.kind.value} of {self.table}"
        return f"{self.kind.value} {self.name} on {self.table}"

    def to_json(self) -> list[str]:
        return [self.kind.value, self.schema, self.table, self.name]

    @classmethod
    def from_json(cls, value: list[str]) -> ObjectKey:
        kind, schema, table, name = value
        return cls(ObjectKind(kind), schema, table, name)


#: The key of the row that stands for a stage as a whole.
WHOLE_STAGE = ObjectKey(ObjectKind.STAGE)
#: Post-data's restore of triggers, rules and policies.
RESTORE = ObjectKey(ObjectKind.RESTORE)


class Detail(Protocol):
    """A record's ``detail``: what a stage hands to later stages and retries."""

    def to_json(self) -> dict[str, Any]: ...


class Readable(Detail, Protocol):
    """A record that can be read back (each record class is its own reader)."""

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> Any: ...


R = TypeVar("R", bound=Readable)


@dataclass(frozen=True, slots=True)
class StageRecord:
    """One ledger row as stored; :class:`PreviousRunState` gives it its types."""

    stage: Stage
    object: str
    status: Status
    detail: Mapping[str, Any]


class MigrationLedger:
    def __init__(self, schema: str, migration_id: str) -> None:
        self.schema = schema
        self.migration_id = migration_id
        self.table = sql.Identifier(schema, STAGE_LEDGER_TABLE)

    def ensure(self, cur) -> None:
        ensure_table(cur, self.schema, STAGE_LEDGER_TABLE, _DDL, "the migration's stage ledger")

    def exists(self, cur) -> bool:
        cur.execute(
            "SELECT to_regclass(%s) IS NOT NULL", (f"{quote_ident(self.schema)}.{quote_ident(STAGE_LEDGER_TABLE)}",)
        )
        return cur.fetchone()[0]

    def has_records(self, cur) -> bool:
        """Whether the migration has kept anything here (a run started it)."""
        if not self.exists(cur):
            return False
        cur.execute(
            sql.SQL("SELECT EXISTS (SELECT 1 FROM {} WHERE migration_id = %s)").format(self.table), (self.migration_id,)
        )
        return cur.fetchone()[0]

    def record(
        self,
        cur,
        stage: Stage,
        key: ObjectKey,
        detail: Detail | None = None,
        status: Status = Status.DONE,
    ) -> None:
        cur.execute(
            sql.SQL(
                "INSERT INTO {} (migration_id, stage, object, status, detail) VALUES (%s, %s, %s, %s, %s) "
                "ON CONFLICT (migration_id, stage, object) DO UPDATE SET status = EXCLUDED.status, "
                "detail = EXCLUDED.detail, updated_at = clock_timestamp()"
            ).format(self.table),
            (
                self.migration_id,
                stage.value,
                key.text,
                status.value,
                json.dumps(detail.to_json() if detail is not None else {}),
            ),
        )

    def read(self, cur, stage: Stage, key: ObjectKey, kind: type[R]) -> R | None:
        """One record's detail, typed; None if there is none."""
        row = self._row(cur, stage, key)
        return kind.from_json(row[1]) if row is not None else None

    def is_done(self, cur, stage: Stage, key: ObjectKey = WHOLE_STAGE) -> bool:
        row = self._row(cur, stage, key)
        return row is not None and row[0] == Status.DONE.value

    def _row(self, cur, stage: Stage, key: ObjectKey) -> tuple[str, dict[str, Any]] | None:
        cur.execute(
            sql.SQL("SELECT status, detail FROM {} WHERE migration_id = %s AND stage = %s AND object = %s").format(
                self.table
            ),
            (self.migration_id, stage.value, key.text),
        )
        return cur.fetchone()

    def records(self, cur) -> list[StageRecord]:
        cur.execute(
            sql.SQL(
                "SELECT stage, object, status, detail FROM {} WHERE migration_id = %s ORDER BY stage, object"
            ).format(self.table),
            (self.migration_id,),
        )
        return [StageRecord(Stage(stage), obj, Status(status), detail) for stage, obj, status, detail in cur.fetchall()]

    def forget(self, cur, keep: tuple[Stage, ...] = ()) -> None:
        """Delete the migration's records, but those of the stages in ``keep``."""
        cur.execute(
            sql.SQL("DELETE FROM {} WHERE migration_id = %s AND stage <> ALL(%s)").format(self.table),
            (self.migration_id, [s.value for s in keep]),
        )
