"""Under dag.test() all tasks run in one process: two tasks on one connection id share one pool."""

from __future__ import annotations

import os
from pathlib import Path

import psycopg2

from airflow_pool_provider import registry

DAG_FILE = Path(__file__).parent / "dags" / "shared_pool_dag.py"


def _rows(pg_server, database: str) -> list[tuple]:
    conn = psycopg2.connect(pg_server.dsn(database))
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT task, pid, pool_id, process_id FROM task_pids ORDER BY task")
            return cur.fetchall()
    finally:
        conn.close()


def test_two_tasks_share_one_pool_under_dag_test(airflow_db, conn_id, pg_server, database, capsys, caplog):
    from airflow.dag_processing.dagbag import DagBag

    conn = psycopg2.connect(pg_server.dsn(database))
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE task_pids (task text, pid int, pool_id bigint, process_id int)")
    conn.close()

    assert Path(os.environ["AIRFLOW__CORE__DAGS_FOLDER"]) == DAG_FILE.parent
    dagbag = DagBag(dag_folder=str(DAG_FILE))
    assert dagbag.import_errors == {}
    dag = dagbag.get_dag("shared_pool_dag")
    assert dag is not None

    dag_run = dag.test(run_conf={"conn_id": conn_id})

    assert dag_run.state == "success"
    rows = _rows(pg_server, database)
    assert [r[0] for r in rows] == ["first", "second"]
    (_, pid_1, pool_1, proc_1), (_, pid_2, pool_2, proc_2) = rows
    assert pid_1 == pid_2  # one backend served both tasks
    assert pool_1 == pool_2  # one pool object
    assert proc_1 == proc_2 == os.getpid()  # dag.test ran both tasks in this process
    pool = registry.pools()[conn_id]
    assert id(pool) == pool_1
    stats = pool.stats()
    assert stats["connections_created"] == 1
    assert stats["checkouts"] == 4 and stats["in_use"] == 0

    # the pool-stats plugin wrote one summary line per task
    output = capsys.readouterr()
    logged = output.out + output.err + caplog.text
    summaries = [line for line in logged.splitlines() if f"pool {conn_id}: size=" in line]
    assert len(summaries) == 2, logged[-3000:]
    assert "created=1 checkouts=2" in summaries[0]
    assert "created=1 checkouts=4" in summaries[1]
