"""A DAG the tests trigger with run_conf: copy one table with ChunkedTableCopyOperator."""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import DAG, Param

from airflow_pool_provider.operators import ChunkedTableCopyOperator

with DAG(
    dag_id="copy_table_test",
    schedule=None,
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    default_args={"retries": 1, "retry_delay": timedelta(0)},
    params={
        "source_conn_id": Param("src", type="string"),
        "target_conn_id": Param("dst", type="string"),
        "table": Param("events", type="string"),
        "chunk_size": Param(1000, type="integer", minimum=1),
        "parallelism": Param(2, type="integer", minimum=1),
        "where": Param(None, type=["null", "string"]),
        "copy_id": Param(None, type=["null", "string"]),
    },
):
    ChunkedTableCopyOperator(
        task_id="copy",
        source_conn_id="{{ params.source_conn_id }}",
        target_conn_id="{{ params.target_conn_id }}",
        source_table="{{ params.table }}",
        where="{{ params.where or '' }}",
        chunk_size="{{ params.chunk_size }}",
        parallelism="{{ params.parallelism }}",
        copy_id="{{ params.copy_id or '' }}",
    )
