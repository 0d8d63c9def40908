"""Metric names and the small interface the pool and copy code report through.

The engines know nothing of Airflow: they are given a :class:`Metrics` (the operator passes one
backed by Airflow's ``Stats``, so StatsD and OpenTelemetry users see the figures); by default
nothing is sent.
"""

from __future__ import annotations

from typing import Protocol

from airflow_pool_provider.pool import ConnectionPool

PREFIX = "pooled_postgres"
POOL_GAUGES = ("size", "idle", "in_use", "waiting", "max_size")


class Metrics(Protocol):
    def incr(self, name: str, count: int = 1, tags: dict[str, str] | None = None) -> None: ...

    def gauge(self, name: str, value: float, tags: dict[str, str] | None = None) -> None: ...


class NoMetrics:
    """Sends nothing."""

    def incr(self, name: str, count: int = 1, tags: dict[str, str] | None = None) -> None:
        pass

    def gauge(self, name: str, value: float, tags: dict[str, str] | None = None) -> None:
        pass


def report_pool(metrics: Metrics, pool: ConnectionPool) -> None:
    """Gauges ``pooled_postgres.pool.<size|idle|in_use|waiting|max_size>``, tagged with the pool's
    name (its connection id)."""
    stats = pool.stats()
    for gauge in POOL_GAUGES:
        metrics.gauge(f"{PREFIX}.pool.{gauge}", stats[gauge], tags={"conn_id": pool.name})
