"""Migrate whole schemas (or chosen tables) between two PostgreSQL databases, stage by stage.

Trigger it from the UI (the form below) or with
``airflow dags test migrate_tables -c '{"tables": ["orders"], "dry_run": true}'``. Every stage is
a task of its own that can be retried; the stage ledger in the target makes a re-run finish what
is missing and a finished migration a no-op.

Anyone who may trigger this DAG picks the connections and may choose ``replace``: the form only
accepts the connection ids listed in SOURCES and TARGETS below; edit them to what your
migrations may read from and write to.
"""

from __future__ import annotations

import os
from datetime import timedelta

import pendulum
from airflow.sdk import DAG, Param

from airflow_pool_provider.operators.migration import migration_stages
from airflow_pool_provider.operators.params import (
    DEFAULT_PARALLELISM,
    MAX_FORM_PARALLELISM,
    chunk_size_param,
    connection_params,
)

SOURCES = ["migration_source"]
TARGETS = ["migration_target"]
COPY_TASKS = 2  # copy tasks that may run at once (an Airflow pool sized in connections bounds them too)
#: The Airflow pool the stages run in; each copy task takes as many slots as it holds connections
#: (2 x parallelism + 1), so a pool of COPY_TASKS x 9 slots lets COPY_TASKS copies run at the
#: form's highest parallelism. docker-compose.yaml and `./dev stack` create one and name it here.
POOL = os.environ.get("MIGRATE_TABLES_POOL", "default_pool")

with DAG(
    dag_id="migrate_tables",
    description="Migrate PostgreSQL schemas or tables: plan, snapshot, schema, data, keys, verification",
    schedule=None,
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    render_template_as_native_obj=True,
    default_args={"retries": 2, "retry_delay": timedelta(seconds=10)},
    tags=["pool-provider", "example", "migration"],
    params={
        **connection_params(SOURCES, TARGETS, source_verb="migrate from", target_verb="migrate to"),
        "schemas": Param(
            ["public"],
            type="array",
            items={"type": "string"},
            minItems=1,
            title="Schemas",
            description="Schemas to migrate, one per line.",
        ),
        "tables": Param(
            [],
            type=["array", "null"],
            items={"type": "string"},
            title="Tables",
            description="Tables to migrate (table or schema.table), one per line; empty: every table of the schemas.",
        ),
        "exclude_tables": Param(
            [],
            type=["array", "null"],
            items={"type": "string"},
            title="Leave out",
            description="Tables not to migrate, one per line.",
        ),
        "chunk_size": chunk_size_param("Rows copied and verified in one transaction."),
        "parallelism": Param(
            DEFAULT_PARALLELISM,
            type="integer",
            minimum=1,
            maximum=MAX_FORM_PARALLELISM,
            title="Parallel chunks per task",
            description=f"Chunks one copy task copies at once (at most {MAX_FORM_PARALLELISM}); "
            f"{COPY_TASKS} copy tasks may run at once.",
        ),
        "dry_run": Param(
            False,
            type="boolean",
            title="Dry run",
            description="Plan only: the plan task's log shows what would move; nothing is written.",
        ),
        "mode": Param(
            "resume",
            type="string",
            enum=["resume", "replace"],
            title="Mode",
            description="resume: a new migration, or finish the one with this id; refuses target tables "
            "it did not create. replace: drop the selected tables in the target first (never "
            "anything else; refuses if other objects depend on them).",
        ),
        "keep_owners": Param(
            False,
            type="boolean",
            title="Keep owners",
            description="Give the migrated objects their source owners (those roles must exist "
            "in the target); off: the target connection's user owns them. Grants are "
            "never copied.",
        ),
        "allow_security_definer": Param(
            False,
            type="boolean",
            title="Allow SECURITY DEFINER",
            description="Accept SECURITY DEFINER functions owned by the target connection's user "
            "(they run with its rights for whoever may execute them); off: the plan refuses them "
            "unless owners are kept.",
        ),
        "migration_id": Param(
            "",
            type=["string", "null"],
            maxLength=100,
            pattern=r"^[A-Za-z0-9_.:-]*$",
            title="Migration id",
            description="Empty: derived from the connections and the selection, so the same "
            "migration run again resumes or confirms it.",
        ),
    },
):
    migration_stages(
        copy_tasks=COPY_TASKS,
        pool=POOL,
        source_conn_id="{{ params.source_conn_id }}",
        target_conn_id="{{ params.target_conn_id }}",
        schemas="{{ params.schemas }}",
        tables="{{ params.tables }}",
        exclude_tables="{{ params.exclude_tables }}",
        chunk_size="{{ params.chunk_size }}",
        parallelism="{{ params.parallelism }}",
        mode="{{ params.mode }}",
        migration_id="{{ params.migration_id or '' }}",  # rendered as text: "123" stays "123"
        dry_run="{{ params.dry_run }}",
        keep_owners="{{ params.keep_owners }}",
        allow_security_definer="{{ params.allow_security_definer }}",
    )
