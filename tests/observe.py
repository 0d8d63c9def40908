"""What the tests watch on the server: which backends an application holds, and waiting for it."""

from __future__ import annotations

import time
from collections.abc import Callable

from airflow_pool_provider.testing.postgres import Server


def app_backends(server: Server, app: str) -> list[int]:
    """Backend pids whose ``application_name`` is ``app`` (the tests give each pool its own)."""
    rows = server.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s ORDER BY pid", (app,))
    return [r[0] for r in rows]


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    """Poll ``predicate``: the server ends backends asynchronously."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)
