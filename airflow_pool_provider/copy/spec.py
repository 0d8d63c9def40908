"""CopySpec: what to copy, checked when it is made, so a DAG with bad values fails when parsed."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from airflow_pool_provider.copy.choices import Choice
from airflow_pool_provider.copy.names import TableName
from airflow_pool_provider.copy.row_filter import RowFilter
from airflow_pool_provider.errors import CopyMistake


class CopyMode(Choice):
    """What a copy does with the target's rows: add to them, replace them all, or merge by key."""

    APPEND = "append"
    REPLACE = "replace"
    UPSERT = "upsert"


class TargetChecksum(Choice):
    """Where the target's side of a checksum is computed: per chunk, before it commits (a scan of
    the chunk's key range), or once per table after its load (the ledger keeps each chunk's source
    sum), for targets without indexes yet, where a per-chunk scan would read the whole table."""

    PER_CHUNK = "per_chunk"
    PER_TABLE = "per_table"


#: Upper bounds: a chunk is one target transaction, and every worker holds two connections.
MAX_CHUNK_SIZE = 10_000_000
MAX_PARALLELISM = 32  # 2 x 32 + 1 connections fit in Airflow's default_pool (128 slots)
MAX_CHUNK_RETRIES = 20

DEFAULT_CHUNK_SIZE = 50_000
DEFAULT_PARALLELISM = 2


@dataclass(frozen=True)
class CopySpec:
    """What to copy and how. ``ledger_schema`` None: the target table's schema."""

    source_table: str
    target_table: str | None = None
    columns: Sequence[str] | None = None
    where: str | None = None
    where_from_dag: bool = False  # the filter is composed by the DAG's code, not typed by a triggerer
    chunk_size: int = DEFAULT_CHUNK_SIZE
    parallelism: int = DEFAULT_PARALLELISM
    mode: CopyMode = CopyMode.APPEND  # or its word
    conflict_columns: Sequence[str] | None = None
    key: Sequence[str] | None = None
    verify_checksums: bool = True
    max_chunk_retries: int = 3
    ledger_schema: str | None = None
    sync_sequences: bool = True
    target_checksum: TargetChecksum = TargetChecksum.PER_CHUNK  # or its word
    source_name: TableName = field(init=False, repr=False)
    target_name: TableName = field(init=False, repr=False)
    row_filter: RowFilter = field(init=False, repr=False)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "source_name", TableName.parse(self.source_table))
        set_(self, "target_name", TableName.parse(self.target_table or self.source_table))
        set_(self, "row_filter", RowFilter.parse(self.where, self.where_from_dag))
        _check_int("chunk_size", self.chunk_size, 1, MAX_CHUNK_SIZE)
        _check_int("parallelism", self.parallelism, 1, MAX_PARALLELISM)
        _check_int("max_chunk_retries", self.max_chunk_retries, 0, MAX_CHUNK_RETRIES)
        set_(self, "mode", CopyMode.parse("mode", self.mode))
        for name in ("columns", "conflict_columns", "key"):
            _check_columns(name, getattr(self, name))
        if self.conflict_columns and self.mode is not CopyMode.UPSERT:
            raise CopyMistake("conflict_columns only applies to mode='upsert'")
        set_(self, "target_checksum", TargetChecksum.parse("target_checksum", self.target_checksum))
        if self.ledger_schema is not None and (not isinstance(self.ledger_schema, str) or not self.ledger_schema):
            raise CopyMistake(f"ledger_schema must name a schema, got {self.ledger_schema!r}")


def _check_int(name: str, value: object, lowest: int, highest: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not lowest <= value <= highest:
        what = "a positive integer" if lowest == 1 else f"{lowest} or more"
        raise CopyMistake(f"{name} must be {what} (at most {highest:,}), got {value!r}")


def _check_columns(name: str, value: Sequence[str] | None) -> None:
    if value is None:
        return
    if isinstance(value, str) or not value or not all(isinstance(c, str) and c for c in value):
        raise CopyMistake(f"{name} must be a non-empty list of column names, got {value!r}")
    if len(set(value)) != len(value):
        raise CopyMistake(f"{name} lists a column twice: {list(value)}")
