"""How the operators end on a mistake: failed once, since Airflow's retries cannot help."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from airflow.providers.common.compat.sdk import AirflowFailException, AirflowNotFoundException

from airflow_pool_provider.errors import is_mistake

NOT_RETRIED = "(not retried: trying again cannot help)"


@contextmanager
def mistakes_fail_once() -> Iterator[None]:
    """Turn a mistake of the package, or an unknown connection, into AirflowFailException, which
    Airflow does not retry; every other error keeps its own way (a fault is retried)."""
    try:
        yield
    except AirflowNotFoundException as exc:
        raise AirflowFailException(f"{exc} {NOT_RETRIED}") from exc
    except Exception as exc:
        if is_mistake(exc):
            raise AirflowFailException(f"{exc} {NOT_RETRIED}") from exc
        raise
