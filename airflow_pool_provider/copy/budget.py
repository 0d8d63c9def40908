"""How many workers a copy may run without breaking a connection budget.

A copy holds, while its workers run, one source connection for the snapshot plus one source and
one target connection per worker: ``w + 1`` on the source and ``w`` on the target, ``2w + 1`` in
all (and of one pool, when both sides use one connection id). Three limits apply, and the
smallest wins; each one that cuts the requested parallelism is named in the log:

- the pools' ``max_size``: a hard cap, never grown by a copy;
- ``connection_limit``: the connections the caller allows the copy in all (the operator passes its
  Airflow ``pool_slots``, so an Airflow pool sized in connections bounds every copy in it);
- each server's free slots: ``max_connections`` minus reserved slots minus client backends,
  keeping a tenth of ``max_connections`` (at least two) free for everyone else.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from airflow_pool_provider.errors import BudgetError, CopyMistake
from airflow_pool_provider.pool import ConnectionPool

_SLOTS = """
SELECT current_setting('max_connections')::int,
       current_setting('superuser_reserved_connections')::int
       + coalesce(current_setting('reserved_connections', true)::int, 0),
       -- A role without pg_read_all_stats sees other roles' sessions with no backend_type.
       (SELECT count(*) FROM pg_stat_activity
         WHERE backend_type = 'client backend' OR backend_type IS NULL)::int
"""


def connections_for(workers: int) -> int:
    """Connections a copy with ``workers`` workers holds in all: two per worker, one snapshot."""
    return 2 * workers + 1


@dataclass(frozen=True, slots=True)
class ServerSlots:
    """A server's connection slots as seen at one moment."""

    name: str
    max_connections: int
    reserved: int
    in_use: int

    @property
    def kept_free(self) -> int:
        return max(2, math.ceil(self.max_connections / 10))

    @property
    def available(self) -> int:
        return max(0, self.max_connections - self.reserved - self.in_use - self.kept_free)

    def describe(self) -> str:
        return (
            f"server {self.name} has {self.available} slot(s) to spare (max_connections="
            f"{self.max_connections}, reserved={self.reserved}, in use={self.in_use}, "
            f"{self.kept_free} kept free for other clients)"
        )


def read_slots(cur, name: str) -> ServerSlots:
    cur.execute(_SLOTS)
    return ServerSlots(name, *cur.fetchone())


@dataclass(frozen=True, slots=True)
class WorkerBudget:
    requested: int
    workers: int
    limits: tuple[str, ...]  # why fewer workers than requested, one sentence each

    def describe(self) -> str:
        if not self.limits:
            return f"{self.workers} worker(s)"
        return f"{self.workers} worker(s) instead of {self.requested}: " + "; ".join(self.limits)


def plan_workers(
    requested: int,
    source_pool: ConnectionPool,
    target_pool: ConnectionPool,
    source_slots: ServerSlots,
    target_slots: ServerSlots | None,
    connection_limit: int | None = None,
) -> WorkerBudget:
    """The largest worker count within every limit. ``target_slots`` None: one server for both."""
    limits: list[str] = []
    workers = requested

    def cut(allowed: int, why: str) -> None:
        nonlocal workers
        if allowed < workers:
            workers = allowed
            limits.append(why)

    shared_pool = source_pool is target_pool
    if shared_pool:
        cut(
            (source_pool.max_size - 1) // 2,
            f"source and target share pool {source_pool.name!r} (max_size={source_pool.max_size}), and "
            f"{requested} worker(s) need {connections_for(requested)}; raise [pooled_postgres] max_size for more",
        )
    else:
        cut(
            source_pool.max_size - 1,
            f"source pool {source_pool.name!r} has max_size={source_pool.max_size} and {requested} worker(s) "
            f"need {requested + 1}; raise [pooled_postgres] max_size for more",
        )
        cut(
            target_pool.max_size,
            f"target pool {target_pool.name!r} has max_size={target_pool.max_size}; raise "
            "[pooled_postgres] max_size for more",
        )
    if connection_limit is not None:
        cut(
            (connection_limit - 1) // 2,
            f"the task may hold {connection_limit} connection(s) (pool_slots), and each worker needs two "
            "plus one for the snapshot",
        )
    if workers < 1:
        raise CopyMistake(
            "no worker fits the connection limits: "
            + "; ".join(limits)
            + ". A copy needs at least 3 connections (2 per worker and 1 for the snapshot)."
        )
    for need in _needs(source_pool, target_pool, source_slots, target_slots):
        cut(need.workers_that_fit(), need.slots.describe())
    if workers < 1:
        raise BudgetError(
            f"not enough free connections to copy: {limits[-1]}. One worker needs 2 connections on the "
            "source server and 1 on the target (3 when both are one server). Try again when fewer clients "
            "are connected, or raise max_connections on the server."
        )
    return WorkerBudget(requested, workers, tuple(limits))


@dataclass(frozen=True, slots=True)
class _ServerNeed:
    """A copy with ``w`` workers holds ``per_worker * w + fixed`` connections on this server;
    ``already_open`` of them are open now (and counted in its ``in_use``)."""

    slots: ServerSlots
    per_worker: int
    fixed: int
    already_open: int

    def workers_that_fit(self) -> int:
        return (self.slots.available + self.already_open - self.fixed) // self.per_worker


def _needs(
    source_pool: ConnectionPool, target_pool: ConnectionPool, source: ServerSlots, target: ServerSlots | None
) -> list[_ServerNeed]:
    source_open = source_pool.stats()["size"]
    target_open = 0 if source_pool is target_pool else target_pool.stats()["size"]
    if target is None:
        return [_ServerNeed(source, 2, 1, source_open + target_open)]
    return [_ServerNeed(source, 1, 1, source_open), _ServerNeed(target, 1, 0, target_open)]
