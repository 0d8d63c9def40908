"""What the operators' arguments and the example DAGs' trigger forms share: the connection
fields of a form, and reading back templated values once rendered."""

from __future__ import annotations

from typing import Any

from airflow.sdk import Param

from airflow_pool_provider.errors import InvalidParameter


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
