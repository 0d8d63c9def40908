"""Copy one PostgreSQL table between two connections: the simplest use of ChunkedTableCopyOperator.

Every field of the trigger form is a Param; ``airflow dags test copy_table -c '{...}'`` overrides
them from the command line. The form only accepts the connection ids in SOURCES and TARGETS:
edit them to what this DAG may read from and write to.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import DAG, Param

from airflow_pool_provider.operators import ChunkedTableCopyOperator
from airflow_pool_provider.operators.params import (
    DEFAULT_PARALLELISM,
    FORM_POOL_SLOTS,
    MAX_FORM_PARALLELISM,
    chunk_size_param,
    connection_params,
)

SOURCES = ["migration_source"]
TARGETS = ["migration_target"]

with DAG(
    dag_id="copy_table",
    description="Copy a table in verified, resumable COPY chunks",
    schedule=None,
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 2, "retry_delay": timedelta(seconds=10)},
    tags=["pool-provider", "example"],
    params={
        **connection_params(SOURCES, TARGETS),
        "table": Param(
            "public.events",
            type="string",
            title="Table",
            description="table, schema.table or a quoted SQL name; the target must exist.",
        ),
        "where": Param(
            "",
            type=["string", "null"],
            title="Row filter",
            maxLength=500,
            pattern=r"^(?![\s\S]*--)(?![\s\S]*/\*)[^;\\]*$",
            description="Optional: one SQL condition on the source rows, e.g. created_at >= "
            "'2024-06-01'. It runs with the source connection's rights, in read-only "
            "transactions: anyone who may trigger this DAG can read what that role can "
            "read and call the functions it may call (refused if that role is a superuser or may "
            "read server files, end other sessions or run programs). "
            "No ';', comments or backslashes; at most 500 characters.",
        ),
        "mode": Param(
            "append",
            enum=["append", "replace", "upsert"],
            title="Mode",
            description="append: add the rows (fails on duplicate keys); replace: empty the target "
            "table first; upsert: insert new rows and update existing ones by key.",
        ),
        "chunk_size": chunk_size_param("Rows copied and verified in one target transaction."),
        "parallelism": Param(
            DEFAULT_PARALLELISM,
            type="integer",
            minimum=1,
            maximum=MAX_FORM_PARALLELISM,
            title="Parallel chunks",
            description=f"Chunks copied at once, at most {MAX_FORM_PARALLELISM}: each holds a source and "
            "a target connection, and fewer run when the pools or the servers "
            "have no room (the log says why).",
        ),
        "copy_id": Param(
            "",
            type=["string", "null"],
            title="Copy id (to resume)",
            description="Empty: a new copy per run (retries of the run resume it). Give the "
            "copy_id of an earlier failed run to finish that copy instead.",
        ),
    },
):
    ChunkedTableCopyOperator(
        task_id="copy",
        source_conn_id="{{ params.source_conn_id }}",
        target_conn_id="{{ params.target_conn_id }}",
        source_table="{{ params.table }}",
        where="{{ params.where }}",
        mode="{{ params.mode }}",
        chunk_size="{{ params.chunk_size }}",
        parallelism="{{ params.parallelism }}",
        copy_id="{{ params.copy_id }}",
        pool_slots=FORM_POOL_SLOTS,  # parallelism renders later: reserve its maximum
    )
