"""SQLExecuteQueryOperator on pooled connections, for tests/test_hook.py.

SQLExecuteQueryOperator builds its hook from the connection type (a PostgresHook on psycopg 3,
one new connection per task). The subclass below is the README's recipe: it overrides
``get_db_hook()`` to return a PooledPostgresHook. Each task records, in the table
``operator_runs`` of the connection's database, the backend pid and the application name that
ran its statement. Nothing touches the database at parse time.
"""

from __future__ import annotations

from airflow.providers.common.sql.operators.sql import SQLExecuteQueryOperator
from airflow.sdk import Param, dag

from airflow_pool_provider.hooks.pooled_postgres import PooledPostgresHook


class PooledSQLExecuteQueryOperator(SQLExecuteQueryOperator):
    """SQLExecuteQueryOperator whose statements run on pooled psycopg2 connections."""

    def get_db_hook(self) -> PooledPostgresHook:
        params = dict(self.hook_params)
        if self.database:
            params.setdefault("database", self.database)
        return PooledPostgresHook(self.conn_id, **params)


_RECORD = (
    "INSERT INTO operator_runs (task, pid, app) "
    "VALUES (%(task)s, pg_backend_pid(), current_setting('application_name')) RETURNING pid"
)


@dag(
    dag_id="pooled_sql_operator",
    schedule=None,
    catchup=False,
    params={"conn_id": Param("postgres_default", type="string", description="Connection id")},
    tags=["airflow-pool-provider-tests"],
)
def pooled_sql_operator() -> None:
    first, second = (
        PooledSQLExecuteQueryOperator(
            task_id=name, conn_id="{{ params.conn_id }}", sql=_RECORD, parameters={"task": name}
        )
        for name in ("first", "second")
    )
    first >> second


pooled_sql_operator()
