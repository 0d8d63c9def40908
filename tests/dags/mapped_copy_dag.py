"""One mapped ChunkedTableCopyOperator copying two tables, for the map_index_template test."""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, Param

from airflow_pool_provider.operators import ChunkedTableCopyOperator

with DAG(
    dag_id="mapped_copy",
    schedule=None,
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    params={"source_conn_id": Param("src", type="string"), "target_conn_id": Param("dst", type="string")},
):
    ChunkedTableCopyOperator.partial(
        task_id="copy",
        source_conn_id="{{ params.source_conn_id }}",
        target_conn_id="{{ params.target_conn_id }}",
        chunk_size=1000,
    ).expand(source_table=["events", "public.more_events"])
