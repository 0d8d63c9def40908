"""The process-wide registry: one pool per connection id, replaced when its parameters change.

Hooks are made and dropped freely (one per task, several per task); the pool must outlive them.
The registry keys pools by connection id and remembers a SHA-256 fingerprint of the connect
arguments, never the arguments themselves, so no password is kept in a key or shown in a repr.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg2

from airflow_pool_provider.pool import ConnectionPool

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PoolSettings:
    """How a pool is sized and how long its connections live (see :class:`ConnectionPool`).

    ``max_size`` 5 lets a copy whose source and target share one connection id run two workers
    (two connections each, and one for the snapshot).
    """

    min_size: int = 0
    max_size: int = 5
    timeout: float = 30.0
    max_lifetime: float | None = 3600.0
    max_idle: float | None = 600.0
    leak_threshold: float | None = 300.0


@dataclass(slots=True)
class _Entry:
    fingerprint: str
    settings: PoolSettings
    pool: ConnectionPool
    warned: set[PoolSettings] = field(default_factory=set)


_lock = threading.Lock()
_pools: dict[str, _Entry] = {}


def _new_lock_in_child() -> None:
    # A lock held by another thread at fork() time would stay held forever in the child.
    global _lock
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_new_lock_in_child)


def fingerprint(connect_kwargs: dict[str, Any]) -> str:
    """A digest that changes when any connect argument (password included) changes."""
    text = repr(sorted((k, repr(v)) for k, v in connect_kwargs.items()))
    return hashlib.sha256(text.encode()).hexdigest()


def pool_for(conn_id: str, connect_kwargs: dict[str, Any], settings: PoolSettings) -> ConnectionPool:
    """The pool of ``conn_id``; a new one if the connect arguments changed (the old is drained).

    Settings belong to the pool, made by the first caller: a later caller asking for others gets
    the same pool and one warning naming both, never a bigger pool (``max_size`` is a hard cap).
    """
    key = fingerprint(connect_kwargs)
    with _lock:
        current = _pools.get(conn_id)
        if current is not None and current.fingerprint == key and not current.pool.closed:
            if settings != current.settings and settings not in current.warned:
                current.warned.add(settings)
                log.warning(
                    "the pool of connection %r already exists with %s; a hook asked for %s and shares the "
                    "existing pool. Pools are per process and per connection id: set their sizes in the "
                    "[pooled_postgres] config section, or give every hook on %r the same pool_* arguments",
                    conn_id,
                    _describe(current.settings),
                    _describe(settings),
                    conn_id,
                )
            return current.pool
        if current is not None:
            log.info("connection %r changed; draining its old pool and starting a new one", conn_id)
            current.pool.close()
        kwargs = dict(connect_kwargs)
        pool = ConnectionPool(lambda: psycopg2.connect(**kwargs), name=conn_id, **asdict(settings))
        _pools[conn_id] = _Entry(key, settings, pool)
        return pool


def _describe(settings: PoolSettings) -> str:
    return ", ".join(f"{k}={v}" for k, v in asdict(settings).items())


def pools() -> dict[str, ConnectionPool]:
    """The live pools of this process by connection id."""
    with _lock:
        return {conn_id: entry.pool for conn_id, entry in _pools.items()}


def close_all() -> None:
    """Close every pool of this process (tests, and a worker that wants a clean slate)."""
    with _lock:
        entries = list(_pools.values())
        _pools.clear()
    for entry in entries:
        entry.pool.close()
