"""Writes one line of pool stats per connection id to the task log when a task ends, and sends
the pool gauges through Airflow's ``Stats``.

Loaded as an Airflow plugin (entry point ``airflow.plugins``) so that every task using
PooledPostgresHook gets the summary, whatever operator it runs. Only pools the task used
(checkouts since it started) are reported.
"""

from __future__ import annotations

import logging
from typing import Any

from airflow.plugins_manager import AirflowPlugin
from airflow.providers.common.compat.sdk import hookimpl

from airflow_pool_provider import registry
from airflow_pool_provider.airflow_metrics import AirflowMetrics
from airflow_pool_provider.metrics import report_pool

log = logging.getLogger("airflow.task")

_checkouts_at_start: dict[str, int] = {}


def log_pool_stats(since: dict[str, int] | None = None) -> None:
    metrics = AirflowMetrics()
    for conn_id, pool in sorted(registry.pools().items()):
        if pool.stats()["checkouts"] > (since or {}).get(conn_id, 0):
            log.info("%s", pool.stats_line())
            report_pool(metrics, pool)


class _TaskListener:
    @hookimpl
    def on_task_instance_running(self, previous_state: Any, task_instance: Any) -> None:
        _checkouts_at_start.clear()
        _checkouts_at_start.update({conn_id: pool.stats()["checkouts"] for conn_id, pool in registry.pools().items()})

    @hookimpl
    def on_task_instance_success(self, previous_state: Any, task_instance: Any) -> None:
        log_pool_stats(_checkouts_at_start)

    @hookimpl
    def on_task_instance_failed(self, previous_state: Any, task_instance: Any, error: Any) -> None:
        log_pool_stats(_checkouts_at_start)


class PoolStatsPlugin(AirflowPlugin):
    name = "airflow_pool_provider_stats"
    listeners = [_TaskListener()]
