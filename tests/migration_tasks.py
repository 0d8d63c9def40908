"""One task's view of a migration, for tests that run its stages directly rather than through Airflow."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg2
import psycopg2.extensions

from airflow_pool_provider.migration import stages
from airflow_pool_provider.migration.request import MigrationRequest
from airflow_pool_provider.pool import ConnectionPool

LOG = logging.getLogger("test")


@contextmanager
def migration_task(src_dsn: str, dst_dsn: str, request: MigrationRequest) -> Iterator[stages.Migration]:
    """What one task of the migration works with (pools of its own, the snapshot read afresh); an
    id not given is resolved as the operators resolve it."""
    source_pool = ConnectionPool(lambda: psycopg2.connect(src_dsn), name="source", max_size=6)
    target_pool = ConnectionPool(lambda: psycopg2.connect(dst_dsn), name="target", max_size=6)
    try:
        if request.migration_id is None:
            request = stages.resolve(request, ("migration_source", "migration_target"), source_pool, target_pool, LOG)
        yield stages.Migration(request, source_pool, target_pool, psycopg2.extensions.parse_dsn(src_dsn), LOG, 600.0)
    finally:
        source_pool.close()
        target_pool.close()


def copy_all(m: stages.Migration) -> None:
    """The data stage, batch by batch: each table gets its indexes and keys once its rows are in."""
    for batch in stages.plan_data(m):
        stages.copy_data(m, batch)
