"""A copy with a 4 s execution_timeout and no retries, for tests/test_copy_stopping.py."""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import DAG, Param

from airflow_pool_provider.operators import ChunkedTableCopyOperator

with DAG(
    dag_id="copy_with_timeout",
    schedule=None,
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    default_args={"retries": 0},
    params={
        "source_conn_id": Param("src", type="string"),
        "target_conn_id": Param("dst", type="string"),
        "copy_id": Param("stopped", type="string"),
    },
):
    ChunkedTableCopyOperator(
        task_id="copy",
        source_conn_id="{{ params.source_conn_id }}",
        target_conn_id="{{ params.target_conn_id }}",
        source_table="events",
        chunk_size=500,
        parallelism=2,
        copy_id="{{ params.copy_id }}",
        execution_timeout=timedelta(seconds=4),
    )
