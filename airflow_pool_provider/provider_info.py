"""What ``airflow providers list`` and ``airflow config list`` learn about this package.

It declares no connection type on purpose: registering ``postgres`` here would take over every
postgres connection of the installation. The hook reads ordinary ``postgres`` connections.
"""

from __future__ import annotations

from typing import Any

from airflow_pool_provider import __version__, settings


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
            settings.SECTION: {
                "description": "Per-process connection pools of PooledPostgresHook.",
                "options": {key.name: key.option() for key in settings.KEYS},
            }
        },
    }
