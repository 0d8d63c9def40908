"""Trigger-form fields the example DAGs share."""

from __future__ import annotations

from airflow.sdk import Param


def connection_params(
    sources: list[str], targets: list[str], *, source_verb: str = "read from", target_verb: str = "write to"
) -> dict[str, Param]:
    """The form's ``source_conn_id`` and ``target_conn_id``, each limited to the ids the DAG author
    lists (whoever may trigger the DAG picks them), the first one the default."""
    return {
        "source_conn_id": Param(
            sources[0],
            type="string",
            enum=list(sources),
            title="Source connection",
            description=f"The Airflow postgres connection to {source_verb}.",
        ),
        "target_conn_id": Param(
            targets[0],
            type="string",
            enum=list(targets),
            title="Target connection",
            description=f"The Airflow postgres connection to {target_verb}.",
        ),
    }
