"""The chunked COPY engine: plans, streams, verifies and records table copies.

It knows nothing of Airflow operators; it takes pools of psycopg2 connections and a logger.
"""

from airflow_pool_provider.copy.engine import TableCopy
from airflow_pool_provider.copy.spec import CopyMode, CopySpec, TargetChecksum
from airflow_pool_provider.copy.summary import CopySummary
from airflow_pool_provider.errors import CopyError, CopyMistake, CopyStopped

__all__ = [
    "CopyError",
    "CopyMistake",
    "CopyMode",
    "CopySpec",
    "CopyStopped",
    "CopySummary",
    "TableCopy",
    "TargetChecksum",
]
