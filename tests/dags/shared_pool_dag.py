"""Two tasks on one connection id, for tests/test_dag_shared_pool.py.

Each task checks out a connection through PooledPostgresHook and records, in the table
``task_pids`` of the connection's database, the backend pid that served it and the identity of
the pool object. Under ``dag.test()`` both tasks run in one process, so they share one pool and,
run one after the other, one backend. Nothing touches the database at parse time.
"""

from __future__ import annotations

import os

from airflow.sdk import Param, dag, task

_INSERT = "INSERT INTO task_pids (task, pid, pool_id, process_id) VALUES (%s, %s, %s, %s)"


@dag(
    dag_id="shared_pool_dag",
    schedule=None,
    catchup=False,
    params={"conn_id": Param("postgres_default", type="string", description="Connection id")},
    tags=["airflow-pool-provider-tests"],
)
def shared_pool_dag() -> None:
    @task
    def record_backend(label: str, params: dict | None = None) -> dict:
        from airflow_pool_provider.hooks.pooled_postgres import PooledPostgresHook

        hook = PooledPostgresHook(params["conn_id"])
        pool_id = id(hook.get_pool())
        pid = hook.get_first("SELECT pg_backend_pid()")[0]
        hook.run(_INSERT, parameters=(label, pid, pool_id, os.getpid()))
        return {"pid": pid, "pool_id": pool_id}

    record_backend.override(task_id="first")("first") >> record_backend.override(task_id="second")("second")


shared_pool_dag()
