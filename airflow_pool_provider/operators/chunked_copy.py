"""ChunkedTableCopyOperator: a thin operator over the chunked COPY engine."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator, Context

from airflow_pool_provider import settings
from airflow_pool_provider.airflow_metrics import AirflowMetrics
from airflow_pool_provider.copy import CopySpec, TableCopy
from airflow_pool_provider.copy.budget import connections_for
from airflow_pool_provider.copy.names import TableName
from airflow_pool_provider.copy.spec import DEFAULT_CHUNK_SIZE, DEFAULT_PARALLELISM, MAX_PARALLELISM
from airflow_pool_provider.errors import InvalidParameter
from airflow_pool_provider.hooks.pooled_postgres import PooledPostgresHook
from airflow_pool_provider.operators.mistakes import mistakes_fail_once
from airflow_pool_provider.operators.params import as_int, templated

if TYPE_CHECKING:
    from airflow.providers.openlineage.extractors import OperatorLineage

#: The default label of a mapped copy in the UI: which table goes where.
MAP_INDEX_TEMPLATE = "{{ task.source_table }} -> {{ task.target_table or task.source_table }}"


def _default_pool_slots(parallelism: Any) -> int:
    """What ``parallelism`` needs when it is a number; else (a template, a mapped value) what the
    default parallelism needs. Clamped, so that a bad value is reported by the spec check."""
    known = isinstance(parallelism, int) and not isinstance(parallelism, bool)
    return connections_for(min(max(parallelism, 1), MAX_PARALLELISM) if known else DEFAULT_PARALLELISM)


class ChunkedTableCopyOperator(BaseOperator):
    """Copy a table between two postgres connections in verified, resumable COPY chunks.

    :param source_conn_id: postgres connection to read from.
    :param target_conn_id: postgres connection to write to (may be the same).
    :param source_table: ``table``, ``schema.table`` or a quoted SQL name.
    :param target_table: defaults to the source table's name.
    :param columns: columns to copy; default: all non-generated columns of the source.
    :param where: one SQL condition on source rows, for subset and incremental copies. It runs
        with the source connection's rights (read-only transactions), so it is refused when that
        role is a superuser or a member of pg_read_server_files, pg_signal_backend or
        pg_execute_server_program, unless ``where_from_dag``.
    :param where_from_dag: the filter is composed by the DAG's own code (names quoted, values as
        literals, as ``incremental_sync`` does), not typed by whoever triggers the run: it is then
        allowed whatever the source role may do.
    :param chunk_size: rows per chunk (each chunk is one target transaction), at most
        ``MAX_CHUNK_SIZE`` (10,000,000).
    :param parallelism: chunks copied at once inside the task, at most ``MAX_PARALLELISM`` (32,
        both of :mod:`airflow_pool_provider.copy.spec`); fewer when the pool's
        ``max_size``, ``pool_slots`` or the servers' free connections do not allow it (logged).
    :param mode: ``append``, ``replace`` (truncate first, once) or ``upsert`` (on the primary key
        or ``conflict_columns``).
    :param conflict_columns: unique key of the target for ``upsert``.
    :param key: unique key of the source to chunk by (default: primary key, else a unique index,
        else ctid ranges).
    :param verify_checksums: compare a hash of each chunk's rows on both sides (counts are always
        compared).
    :param max_chunk_retries: retries of a chunk that hit a transient fault (lost connection,
        server restart, serialization failure).
    :param copy_id: names the copy in the ledger; a task run again with the same id resumes.
        Default: ``dag_id.task_id.run_id[.map_index]``, so retries and re-runs of a task instance
        resume, and each DAG run is a new copy.
    :param ledger_schema: schema of the progress ledger in the target; default: the target
        table's schema.
    :param sync_sequences: after the rows, move the target's sequences of copied serial and
        identity columns up to the source's position.
    :param pool_slots: the connections the task may hold in all. Default: what ``parallelism``
        needs (``2 × parallelism + 1``) when it is a number, else 5 (two workers), since a
        template renders after the slots are fixed. Put copies in an Airflow pool sized in
        connections, and they never hold more than it has.

    Mistakes (missing tables, mismatched schemas, duplicate keys, bad filters, checksum
    mismatches) fail the task without retries; faults (lost connections, a busy server) are
    retried as the task's ``retries`` say.

    Returns (XCom) a summary: rows, chunks, bytes, seconds, rows/s, ``verified`` and the
    verification details.
    """

    template_fields: Sequence[str] = (
        "source_conn_id",
        "target_conn_id",
        "source_table",
        "target_table",
        "columns",
        "where",
        "chunk_size",
        "parallelism",
        "mode",
        "copy_id",
        "ledger_schema",
    )
    template_fields_renderers = {"where": "sql", "columns": "json"}
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
        where_from_dag: bool = False,
        chunk_size: int | str = DEFAULT_CHUNK_SIZE,
        parallelism: int | str = DEFAULT_PARALLELISM,
        mode: str = "append",
        conflict_columns: Sequence[str] | None = None,
        key: Sequence[str] | None = None,
        verify_checksums: bool = True,
        max_chunk_retries: int = 3,
        copy_id: str | None = None,
        ledger_schema: str | None = None,
        sync_sequences: bool = True,
        **kwargs: Any,
    ) -> None:
        parallelism = as_int("parallelism", parallelism)
        kwargs.setdefault("map_index_template", MAP_INDEX_TEMPLATE)
        kwargs.setdefault("pool_slots", _default_pool_slots(parallelism))
        super().__init__(**kwargs)
        for name, value in (("source_conn_id", source_conn_id), ("target_conn_id", target_conn_id)):
            # A template renders later; anything else must already name a connection.
            if not isinstance(value, str) or not value.strip():
                raise InvalidParameter(f"{name} must name an Airflow connection, got {value!r}")
        if self.pool_slots < connections_for(1):
            raise InvalidParameter(
                f"pool_slots={self.pool_slots} leaves no room for a worker: a copy holds "
                f"{connections_for(1)} connections with one worker (2 per worker, 1 for the snapshot)"
            )
        self.source_conn_id = source_conn_id
        self.target_conn_id = target_conn_id
        self.source_table = source_table
        self.target_table = target_table
        self.columns = columns
        self.where = where
        self.where_from_dag = where_from_dag
        self.chunk_size = as_int("chunk_size", chunk_size)
        self.parallelism = parallelism
        self.mode = mode
        self.conflict_columns = conflict_columns
        self.key = key
        self.verify_checksums = verify_checksums
        self.max_chunk_retries = max_chunk_retries
        self.copy_id = copy_id
        self.ledger_schema = ledger_schema
        self.sync_sequences = sync_sequences
        self._copy: TableCopy | None = None
        self._tables: tuple[TableName, TableName] | None = None
        self._spec(parse_time=True)  # fail at parse time on anything not templated

    @classmethod
    def partial(cls, **kwargs: Any) -> Any:
        """The same defaults for mapped copies: the scheduler reads pool_slots and the label here."""
        kwargs.setdefault("map_index_template", MAP_INDEX_TEMPLATE)
        kwargs.setdefault(
            "pool_slots", _default_pool_slots(as_int("parallelism", kwargs.get("parallelism", DEFAULT_PARALLELISM)))
        )
        return super().partial(**kwargs)

    def _spec(self, parse_time: bool = False) -> CopySpec:
        values = {
            "source_table": self.source_table,
            "target_table": self.target_table,
            "columns": list(self.columns)
            if self.columns is not None and not isinstance(self.columns, str)
            else self.columns,
            "where": self.where,
            "where_from_dag": self.where_from_dag,
            "chunk_size": as_int("chunk_size", self.chunk_size),
            "parallelism": as_int("parallelism", self.parallelism),
            "mode": self.mode,
            "conflict_columns": self.conflict_columns,
            "key": self.key,
            "verify_checksums": self.verify_checksums,
            "max_chunk_retries": self.max_chunk_retries,
            "ledger_schema": self.ledger_schema or None,
            "sync_sequences": self.sync_sequences,
        }
        if parse_time:
            # Stand-ins for values only known at run time, so the rest is still checked now.
            stand_ins = {
                "chunk_size": 1,
                "parallelism": 1,
                "source_table": "t",
                "target_table": "t",
                "columns": None,
                "where": None,
                "mode": "append",
                "ledger_schema": None,
            }
            values = {k: stand_ins.get(k) if templated(v) else v for k, v in values.items()}
        return CopySpec(**values)

    def execute(self, context: Context) -> dict[str, Any]:
        with mistakes_fail_once():
            spec = self._spec()
            source = PooledPostgresHook(self.source_conn_id).get_pool()
            target = PooledPostgresHook(self.target_conn_id).get_pool()
            self._copy = TableCopy(
                source,
                target,
                spec,
                self._copy_id(context),
                log=self.log,
                metrics=AirflowMetrics(),
                connection_limit=self.pool_slots,
                ledger_retention_days=settings.read().ledger_retention_days,
            )
            try:
                summary = self._copy.run()
            finally:
                self._copy = None
        self._tables = (TableName.parse(summary.source), TableName.parse(summary.target))
        return summary.to_xcom()

    def _copy_id(self, context: Context) -> str:
        if self.copy_id:
            return self.copy_id
        ti = context["ti"]
        parts = (ti.dag_id, ti.task_id, ti.run_id, getattr(ti, "map_index", -1))
        return ".".join(str(p) for p in parts if p != -1)

    def on_kill(self) -> None:
        """Airflow's SIGTERM handler calls this and returns: stopping makes ``execute`` raise."""
        copy = self._copy
        if copy is not None:
            copy.stop("the task was told to stop (SIGTERM: marked failed, or its worker is shutting down)")

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> OperatorLineage:
        """The source table as input and the target table as output, named as the postgres
        provider names them: namespace ``postgres://host:port``, name ``database.schema.table``."""
        from airflow.providers.common.compat.openlineage.facet import Dataset
        from airflow.providers.openlineage.extractors import OperatorLineage

        if self._tables is None:
            return OperatorLineage()
        datasets = []
        for conn_id, table in zip((self.source_conn_id, self.target_conn_id), self._tables, strict=True):
            hook = PooledPostgresHook(conn_id)
            info = hook.get_openlineage_database_info(hook.connection)
            datasets.append(
                Dataset(
                    namespace=f"{info.scheme}://{info.authority}", name=f"{info.database}.{table.schema}.{table.name}"
                )
            )
        return OperatorLineage(inputs=[datasets[0]], outputs=[datasets[1]])
