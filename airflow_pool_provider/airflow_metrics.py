"""Metrics through Airflow's ``Stats``, so StatsD and OpenTelemetry users see the pool and copy
figures next to Airflow's own (names under ``pooled_postgres.``; the connection id and table are
tags)."""

from __future__ import annotations

from airflow.providers.common.compat.sdk import Stats


class AirflowMetrics:
    """A :class:`airflow_pool_provider.metrics.Metrics` that sends through ``Stats``."""

    def incr(self, name: str, count: int = 1, tags: dict[str, str] | None = None) -> None:
        Stats.incr(name, count, tags=tags)

    def gauge(self, name: str, value: float, tags: dict[str, str] | None = None) -> None:
        Stats.gauge(name, value, tags=tags)
