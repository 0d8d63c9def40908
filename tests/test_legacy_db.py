"""The legacy demo database: every kind of object a migration must move is there, with data."""

from __future__ import annotations

import psycopg2

from airflow_pool_provider.testing.legacy_db import TABLES, seed, sizes


def test_the_seed_builds_every_kind_of_object_and_is_kept_when_run_again(pg_server, database):
    conn = psycopg2.connect(pg_server.dsn(database))
    try:
        first = seed(conn, scale=0.01)
        again = seed(conn, scale=0.01)
        with conn.cursor() as cur:
            cur.execute("""
                SELECT (SELECT count(*) FROM pg_type WHERE typname = 'order_status' AND typtype = 'e'),
                       (SELECT count(*) FROM pg_type WHERE typname = 'email_address' AND typtype = 'd'),
                       (SELECT count(*) FROM pg_constraint WHERE contype = 'f'),
                       (SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal),
                       (SELECT count(*) FROM pg_views WHERE viewname = 'customer_order_totals'),
                       (SELECT count(*) FROM pg_partitioned_table),
                       (SELECT count(*) FROM pg_indexes WHERE schemaname = 'public'),
                       (SELECT count(*) FROM pg_class WHERE relkind = 'S'),
                       (SELECT count(*) FROM customers WHERE note IS NULL) > 0,
                       (SELECT count(*) FROM customers WHERE name ~ '[^[:ascii:]]') > 0
            """)
            enum, domain, fks, triggers, views, partitioned, indexes, sequences, nulls, unicode = cur.fetchone()
    finally:
        conn.close()
    assert first.created and not again.created and again.rows == first.rows
    assert set(first.rows) == set(TABLES) and all(first.rows[t] > 0 for t in TABLES)
    assert first.rows["orders"] == sizes(0.01)["orders"]
    assert (enum, domain, views, partitioned) == (1, 1, 1, 1)
    assert fks >= 5 and triggers >= 1 and indexes >= 12 and sequences >= 4
    assert nulls and unicode


def test_the_default_scale_is_about_a_million_rows():
    assert 950_000 < sum(sizes(1.0).values()) + sizes(1.0)["orders"] // 4 < 1_200_000
