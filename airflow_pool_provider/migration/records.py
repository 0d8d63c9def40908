"""What the stages hand each other, and a retry, through the stage ledger: one frozen record per
kind of row (``to_json``/``from_json``), and a migration's previous-run state read in one go, as
pgcopydb reads its ``PreviousRunState``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from airflow_pool_provider.copy.names import TableName
from airflow_pool_provider.copy.verify import TableCheck
from airflow_pool_provider.migration.ledger import (
    RESTORE,
    WHOLE_STAGE,
    MigrationLedger,
    ObjectKey,
    ObjectKind,
    R,
    Stage,
    StageRecord,
    Status,
)


@dataclass(frozen=True)
class SnapshotRecord:
    """The migration's source snapshot: its id, its holder, and how many were taken so far."""

    snapshot: str
    pid: int  # the holder process
    backend_pid: int  # its backend on the source
    epoch: int = 1

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> SnapshotRecord:
        return cls(value["snapshot"], value["pid"], value["backend_pid"], value.get("epoch", 1))


@dataclass(frozen=True)
class PreDataRecord:
    entries: int  # TOC entries restored
    reused: tuple[str, ...]  # schema-level objects that existed already
    run: str | None  # the DAG run that restored them: replace starts over in another run
    dropped: tuple[str, ...] = ()  # mode='replace'

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> PreDataRecord:
        return cls(value["entries"], tuple(value["reused"]), value.get("run"), tuple(value.get("dropped", ())))


@dataclass(frozen=True)
class DataRecord:
    """A leaf's copy: the snapshot epochs its chunks were read through, as earlier versions
    recorded them after each part (now each chunk's ledger row keeps its own); still read."""

    epochs: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        return {"epochs": list(self.epochs)}

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> DataRecord:
        return cls(tuple(value.get("epochs", ())))


@dataclass(frozen=True)
class RestoreRecord:
    entries: int  # triggers, rules, policies restored from the dump

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> RestoreRecord:
        return cls(value["entries"])


@dataclass(frozen=True)
class PostDataRecord:
    foreign_keys_left_out: tuple[ObjectKey, ...]  # to tables outside the migration
    sequences: Mapping[str, int] = field(default_factory=dict)  # each one's next value as set

    def to_json(self) -> dict[str, Any]:
        return {
            "foreign_keys_left_out": [k.to_json() for k in self.foreign_keys_left_out],
            "sequences": dict(self.sequences),
        }

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> PostDataRecord:
        return cls(
            tuple(ObjectKey.from_json(k) for k in value.get("foreign_keys_left_out", ())),
            dict(value.get("sequences", {})),
        )


@dataclass(frozen=True)
class CheckRecord:
    """A leaf checked right after its load; the verify stage of the same DAG run reuses it (a
    later run reads the target again: it may have changed since)."""

    check: TableCheck
    run: str | None  # the DAG run that made the check

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self.check), "run": self.run}

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> CheckRecord:
        check = {k: v for k, v in value.items() if k != "run"}
        return cls(TableCheck(**check), value.get("run"))


@dataclass(frozen=True)
class PreviousRunState:
    """What earlier runs, and earlier tasks of this run, left in the ledger: read once per task."""

    snapshot: SnapshotRecord | None = None
    pre_data: PreDataRecord | None = None
    created_tables: frozenset[TableName] = frozenset()  # by pre-data
    epochs: Mapping[TableName, tuple[int, ...]] = field(default_factory=dict)  # per leaf, by earlier versions
    checked: Mapping[TableName, CheckRecord] = field(default_factory=dict)  # per leaf, right after its load
    post_data: PostDataRecord | None = None
    restore: RestoreRecord | None = None
    stages_done: tuple[Stage, ...] = ()

    @classmethod
    def from_records(cls, records: list[StageRecord]) -> PreviousRunState:
        by_key = {(r.stage, ObjectKey.from_text(r.object)): r for r in records}
        tables = [(stage, key, r) for (stage, key), r in by_key.items() if key and key.kind is ObjectKind.TABLE]

        def detail(stage: Stage, key: ObjectKey, kind: type[R], done_only: bool = False) -> R | None:
            record = by_key.get((stage, key))
            if record is None or (done_only and record.status is not Status.DONE):
                return None
            return kind.from_json(record.detail)

        return cls(
            snapshot=detail(Stage.SNAPSHOT, WHOLE_STAGE, SnapshotRecord),
            pre_data=detail(Stage.PRE_DATA, WHOLE_STAGE, PreDataRecord, done_only=True),
            created_tables=frozenset(
                key.table_name for stage, key, r in tables if stage is Stage.PRE_DATA and r.status is Status.DONE
            ),
            epochs={k.table_name: DataRecord.from_json(r.detail).epochs for s, k, r in tables if s is Stage.DATA},
            checked={k.table_name: CheckRecord.from_json(r.detail) for s, k, r in tables if s is Stage.VERIFY},
            post_data=detail(Stage.POST_DATA, WHOLE_STAGE, PostDataRecord),
            restore=detail(Stage.POST_DATA, RESTORE, RestoreRecord, done_only=True),
            stages_done=tuple(
                stage
                for stage in Stage
                if (record := by_key.get((stage, WHOLE_STAGE))) is not None and record.status is Status.DONE
            ),
        )


def previous_run(ledger: MigrationLedger, cur) -> PreviousRunState:
    """Everything the migration's earlier runs and tasks recorded (nothing if no ledger yet)."""
    return PreviousRunState.from_records(ledger.records(cur) if ledger.exists(cur) else [])
