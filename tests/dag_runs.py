"""Running a test DAG in this process with ``dag.test()`` and reading back what its tasks left."""

from __future__ import annotations

from pathlib import Path
from typing import Any

DAGS = Path(__file__).parent / "dags"


def load_dag(dag_id: str, file: str = "copy_table_dag.py") -> Any:
    """A DAG of ``tests/dags``, parsed the way Airflow parses it (no import errors allowed)."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS / file))
    assert bag.import_errors == {}
    return bag.get_dag(dag_id)


def run_dag(dag: Any, conf: dict[str, Any], task_id: str = "copy") -> tuple[Any, dict[str, Any] | None]:
    """Run the DAG once; the run and the task's XCom return value (None if it pushed none)."""
    run = dag.test(run_conf=conf)
    return run, returned(run, task_id)


def returned(run: Any, task_id: str) -> Any:
    """What the run's task ``task_id`` returned (its XCom return value; None if it pushed none)."""
    from airflow.models.xcom import XComModel
    from airflow.settings import Session

    query = XComModel.get_many(run_id=run.run_id, dag_ids=run.dag_id, task_ids=task_id, key="return_value")
    with Session() as session:
        row = session.scalars(query).first()
    return XComModel.deserialize_value(row) if row is not None else None


def states(run: Any) -> dict[str, str]:
    """Each task of the run with its state (a mapped task: one of its instances')."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.settings import Session
    from sqlalchemy import select

    with Session() as session:
        rows = session.execute(
            select(TaskInstance.task_id, TaskInstance.state).where(
                TaskInstance.dag_id == run.dag_id, TaskInstance.run_id == run.run_id
            )
        ).all()
    return {task: str(state) for task, state in rows}


def tries(run: Any, task_id: str | None = None) -> int:
    """How many times the run's task ``task_id`` (default: its only task) was tried."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.settings import Session
    from sqlalchemy import select

    query = select(TaskInstance.try_number).where(TaskInstance.dag_id == run.dag_id, TaskInstance.run_id == run.run_id)
    if task_id is not None:
        query = query.where(TaskInstance.task_id == task_id)
    with Session() as session:
        return session.scalars(query).one()
