"""What the operators' arguments and the example DAGs' trigger forms share: the limits a form
offers, its connection fields, and reading back templated values once rendered."""

from __future__ import annotations

from typing import Any

from airflow.sdk import Param

from airflow_pool_provider.copy.budget import connections_for
from airflow_pool_provider.copy.spec import DEFAULT_CHUNK_SIZE, DEFAULT_PARALLELISM, MAX_CHUNK_SIZE
from airflow_pool_provider.errors import InvalidParameter

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_PARALLELISM",
    "FORM_POOL_SLOTS",
    "MAX_CHUNK_SIZE",
    "MAX_FORM_PARALLELISM",
    "as_int",
    "connection_params",
    "templated",
]

#: The largest parallelism the example forms offer. A templated parallelism is known only when the
#: task runs, after its pool_slots are fixed, so the task reserves what this many workers hold.
MAX_FORM_PARALLELISM = 4
#: The connections of MAX_FORM_PARALLELISM workers (2 each, and 1 for the snapshot).
FORM_POOL_SLOTS = connections_for(MAX_FORM_PARALLELISM)


def chunk_size_param(description: str) -> Param:
    """The form's ``chunk_size``, within the copy engine's limits."""
    return Param(
        DEFAULT_CHUNK_SIZE,
        type="integer",
        minimum=1,
        maximum=MAX_CHUNK_SIZE,
        title="Rows per chunk",
        description=description,
    )


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


def templated(value: Any) -> bool:
    """Known only at run time: a Jinja template, or another task's output (an XComArg)."""
    if isinstance(value, str):
        return "{{" in value or "{%" in value
    if isinstance(value, (list, tuple)):
        return any(templated(v) for v in value)
    return hasattr(value, "resolve")


def as_int(name: str, value: Any) -> Any:
    """Rendered templates are strings: turn "50000" back into 50000, and say so when it is not.
    Anything else (a number, a template not rendered yet) is left to the request's own checks."""
    if isinstance(value, str) and not templated(value):
        try:
            return int(value.strip())
        except ValueError:
            raise InvalidParameter(f"{name} must be a positive integer, got {value!r}") from None
    return value
