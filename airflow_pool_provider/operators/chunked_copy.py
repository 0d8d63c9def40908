"""ChunkedTableCopyOperator: a thin operator over the chunked COPY engine."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator, Context

from airflow_pool_provider.copy import CopySpec, TableCopy
from airflow_pool_provider.hooks.pooled_postgres import PooledPostgresHook


def _templated(value: Any) -> bool:
    if isinstance(value, str):
        return "{{" in value or "{%" in value
    if isinstance(value, (list, tuple)):
        return any(_templated(v) for v in value)
    return False


def _as_int(name: str, value: Any) -> Any:
    """Rendered templates are strings: turn "50000" back into 50000, and say so when it is not."""
    if isinstance(value, str) and not _templated(value):
        try:
            return int(value.strip())
        except ValueError:
            raise ValueError(f"{name} must be a positive integer, got {value!r}") from None
    return value


class ChunkedTableCopyOperator(BaseOperator):
    """Copy a table between two postgres connections in verified, resumable COPY chunks.

    :param source_conn_id: postgres connection to read from.
    :param target_conn_id: postgres connection to write to (may be the same).
    :param source_table: ``table``, ``schema.table`` or a quoted SQL name.
    :param target_table: defaults to the source table's name.
    :param columns: columns to copy; default: all non-generated columns of the source.
    :param where: SQL condition on source rows, for subset and incremental copies.
    :param chunk_size: rows per chunk (each chunk is one target transaction).
    :param parallelism: chunks copied at once inside the task.
    :param mode: ``append``, ``replace`` (truncate first, once) or ``upsert`` (on the primary key
        or ``conflict_columns``).
    :param conflict_columns: unique key of the target for ``upsert``.
    :param key: unique key of the source to chunk by (default: primary key, else a unique index,
        else ctid ranges).
    :param verify_checksums: compare a hash of each chunk's rows on both sides (counts are always
        compared).
    :param max_chunk_retries: retries of a chunk whose connection failed.
    :param copy_id: names the copy in the ledger; a task run again with the same id resumes.
        Default: ``dag_id.task_id.run_id[.map_index]``, so retries and re-runs of a task instance
        resume, and each DAG run is a new copy.

    Returns (XCom) a summary: rows, chunks, bytes, seconds, rows/s and the verification result.
    """

    template_fields: Sequence[str] = (
        "source_conn_id", "target_conn_id", "source_table", "target_table", "columns", "where",
        "chunk_size", "parallelism", "mode", "copy_id",
    )
    ui_color = "#c8e6ff"

    def __init__(
        self,
        *,
        source_conn_id: str,
        target_conn_id: str,
        source_table: str,
        target_table: str | None = None,
        columns: Sequence[str] | None = None,
        where: str | None = None,
        chunk_size: int | str = 50_000,
        parallelism: int | str = 2,
        mode: str = "append",
        conflict_columns: Sequence[str] | None = None,
        key: Sequence[str] | None = None,
        verify_checksums: bool = True,
        max_chunk_retries: int = 3,
        copy_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        for name, value in (("source_conn_id", source_conn_id), ("target_conn_id", target_conn_id)):
            # A template renders later; anything else must already name a connection.
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"{name} must name an Airflow connection, got {value!r}")
        self.source_conn_id = source_conn_id
        self.target_conn_id = target_conn_id
        self.source_table = source_table
        self.target_table = target_table
        self.columns = columns
        self.where = where
        self.chunk_size = _as_int("chunk_size", chunk_size)
        self.parallelism = _as_int("parallelism", parallelism)
        self.mode = mode
        self.conflict_columns = conflict_columns
        self.key = key
        self.verify_checksums = verify_checksums
        self.max_chunk_retries = max_chunk_retries
        self.copy_id = copy_id
        self._spec(parse_time=True)  # fail at parse time on anything not templated

    def _spec(self, parse_time: bool = False) -> CopySpec:
        values = {
            "source_table": self.source_table,
            "target_table": self.target_table,
            "columns": list(self.columns) if self.columns is not None and not isinstance(self.columns, str)
            else self.columns,
            "where": self.where,
            "chunk_size": _as_int("chunk_size", self.chunk_size),
            "parallelism": _as_int("parallelism", self.parallelism),
            "mode": self.mode,
            "conflict_columns": self.conflict_columns,
            "key": self.key,
            "verify_checksums": self.verify_checksums,
            "max_chunk_retries": self.max_chunk_retries,
        }
        if parse_time:
            # Stand-ins for values only known at run time, so the rest is still checked now.
            stand_ins = {"chunk_size": 1, "parallelism": 1, "source_table": "t", "target_table": "t",
                         "columns": None, "where": None, "mode": "append"}
            values = {k: stand_ins.get(k) if _templated(v) else v for k, v in values.items()}
        return CopySpec(**values)

    def execute(self, context: Context) -> dict[str, Any]:
        spec = self._spec()
        ti = context["ti"]
        copy_id = self.copy_id or ".".join(
            str(p) for p in (ti.dag_id, ti.task_id, ti.run_id, getattr(ti, "map_index", -1)) if p != -1
        )
        source = PooledPostgresHook(self.source_conn_id).get_pool()
        target = PooledPostgresHook(self.target_conn_id).get_pool()
        return TableCopy(source, target, spec, copy_id, log=self.log).run()
