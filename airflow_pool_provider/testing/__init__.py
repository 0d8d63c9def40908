"""Helpers for the tests, the demo and the benchmarks: a PostgreSQL to run against."""
