"""Keep a target table in step with its source: every hour, upsert the rows changed in the hour.

Rows are picked by an ``updated_at``-style column: changed in ``[data_interval_start - lookback,
data_interval_end)``. The lookback catches a row committed late with an earlier timestamp (a
long transaction that stamped its rows when it started). Re-running an interval is safe: rows are
upserted by the target's primary key. The first run on an empty target loads the whole table; a
first load that stopped part way is resumed by the next runs until the ledger says it finished
(see airflow_pool_provider.copy.incremental).

Deletes: a row deleted from the source is NOT seen (nothing changed is left to read). With a
soft-delete column (``deleted_at``), a deleted row is an updated row, and its flag reaches the
target like any other change. To mirror hard deletes, migrate again (``migrate_tables``) or add a
soft-delete column to the source.

The form only accepts the connection ids in SOURCES and TARGETS: edit them to yours.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import DAG, Param, task
from airflow.sdk.definitions.timetables.interval import CronDataIntervalTimetable

from airflow_pool_provider.operators import ChunkedTableCopyOperator
from airflow_pool_provider.operators.mistakes import mistakes_fail_once
from airflow_pool_provider.operators.params import chunk_size_param, connection_params

SOURCES = ["migration_source"]
TARGETS = ["migration_target"]

with DAG(
    dag_id="incremental_sync",
    description="Upsert the rows of a table changed since the last run (by an updated_at column)",
    # An interval per run, [start, end): Airflow 3's plain "@hourly" gives runs a point in time.
    schedule=CronDataIntervalTimetable("0 * * * *", timezone="UTC"),
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 2, "retry_delay": timedelta(seconds=30)},
    tags=["pool-provider", "example"],
    params={
        **connection_params(SOURCES, TARGETS),
        "table": Param(
            "public.orders",
            type="string",
            title="Table",
            description="The table to keep in step; the target's must exist, with a primary key.",
        ),
        "updated_column": Param(
            "updated_at",
            type="string",
            pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
            title="Changed-at column",
            description="A timestamp column the source sets on every insert and update.",
        ),
        "lookback_minutes": Param(
            15,
            type="integer",
            minimum=0,
            maximum=1440,
            title="Lookback (minutes)",
            description="Also read rows stamped this long before the interval: rows "
            "committed late with an earlier timestamp are not missed.",
        ),
        "chunk_size": chunk_size_param("Rows upserted and verified in one target transaction."),
    },
):

    @task(multiple_outputs=True)
    @mistakes_fail_once()  # a table name that cannot be read, or a missing table: failed once, not retried
    def changed_rows(params: dict | None = None, data_interval_start=None, data_interval_end=None) -> dict[str, str]:
        """This run's row filter and copy id: the first load until the ledger says it finished
        (resumed by each run), then the interval with its lookback."""
        from airflow_pool_provider.copy.incremental import next_step
        from airflow_pool_provider.copy.names import TableName
        from airflow_pool_provider.hooks.pooled_postgres import PooledPostgresHook

        target = PooledPostgresHook(params["target_conn_id"])
        with target.get_pool().connection() as conn, conn.cursor() as cur:
            step = next_step(
                cur,
                TableName.parse(params["table"]),
                params["updated_column"],
                data_interval_start,
                data_interval_end,
                timedelta(minutes=params["lookback_minutes"]),
            )
            conn.rollback()
        return {"where": step.where, "copy_id": step.copy_id}

    window = changed_rows()
    ChunkedTableCopyOperator(
        task_id="upsert",
        source_conn_id="{{ params.source_conn_id }}",
        target_conn_id="{{ params.target_conn_id }}",
        source_table="{{ params.table }}",
        where=window["where"],
        where_from_dag=True,  # composed by changed_rows: the column quoted, the times as literals
        copy_id=window["copy_id"],
        mode="upsert",
        chunk_size="{{ params.chunk_size }}",
    )
