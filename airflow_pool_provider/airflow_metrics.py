"""Metrics through Airflow's ``Stats``, so StatsD and OpenTelemetry users see the pool and copy
figures next to Airflow's own (names under ``pooled_postgres.``; the connection id and table are
tags)."""

from __future__ import annotations

import re

from airflow.providers.common.compat.sdk import Stats

# What Airflow's StatsD logger accepts in a stat name, which its InfluxDB-style tags become part of.
_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-/]")


def tag_value(value: object) -> str:
    """A tag value every ``Stats`` backend sends as it is: SQL quotes dropped (``"public"."events"``
    becomes ``public.events``), anything else outside ``A-Z a-z 0-9 _ . - /`` replaced by ``_``.

    With ``[metrics] statsd_influxdb_enabled`` Airflow appends the tags to the stat name and drops
    the whole metric, with a logged traceback, when the result has any other character.
    """
    return _UNSAFE.sub("_", str(value).replace('"', ""))


def _tags(tags: dict[str, str] | None) -> dict[str, str] | None:
    return None if tags is None else {key: tag_value(value) for key, value in tags.items()}


class AirflowMetrics:
    """A :class:`airflow_pool_provider.metrics.Metrics` that sends through ``Stats``."""

    def incr(self, name: str, count: int = 1, tags: dict[str, str] | None = None) -> None:
        Stats.incr(name, count, tags=_tags(tags))

    def gauge(self, name: str, value: float, tags: dict[str, str] | None = None) -> None:
        Stats.gauge(name, value, tags=_tags(tags))
