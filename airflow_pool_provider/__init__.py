"""Airflow provider for moving PostgreSQL tables fast and safely over pooled psycopg2 connections."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("airflow-pool-provider")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0"
