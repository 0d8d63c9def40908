"""The chunked COPY engine: plans, streams, verifies and records table copies.

It knows nothing of Airflow operators; it takes pools of psycopg2 connections and a logger.
"""

from airflow_pool_provider.copy.engine import CopyError, CopySpec, TableCopy

__all__ = ["CopyError", "CopySpec", "TableCopy"]
