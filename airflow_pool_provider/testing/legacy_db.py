"""A realistic legacy database to migrate: the demo's source, and the migration tests' and
benchmark's.

Several related tables with what real schemas carry: foreign keys, serial and identity columns,
a standalone sequence used by a default, an enum, a domain, composite and secondary indexes (one
on an expression), CHECK constraints, a trigger, a view, a partitioned table, jsonb and arrays,
NULLs and unicode. About 1,000,000 rows in all at ``scale=1.0``, built with set-based INSERTs in
well under a minute.

    python -m airflow_pool_provider.testing.legacy_db "host=... dbname=..." [--scale 0.1]
    PGHOST=source-db PGDATABASE=legacy python -m airflow_pool_provider.testing.legacy_db

Without a DSN, libpq's environment (PGHOST, PGUSER, PGPASSWORD, ...) names the database, so a
password never has to be on the command line.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import psycopg2
from psycopg2 import sql

#: Rows per table at scale 1.0 (payments are about a quarter of the orders).
ROWS = {"customers": 50_000, "products": 5_000, "orders": 250_000, "order_items": 500_000, "events": 200_000}
TABLES = ("customers", "products", "orders", "order_items", "events", "payments")
#: Written as the database's comment: a database seeded with the same definition and scale is kept.
MARKER = "airflow_pool_provider legacy demo database v1, scale {scale}"

SCHEMA = """
CREATE TYPE order_status AS ENUM ('new', 'paid', 'shipped', 'cancelled');
CREATE DOMAIN email_address AS text CHECK (VALUE ~ '^[^@ ]+@[^@ ]+$');
CREATE SEQUENCE invoice_number_seq START 100000;

CREATE TABLE customers (
    id          serial PRIMARY KEY,
    email       email_address NOT NULL UNIQUE,
    name        text NOT NULL,
    country     char(2),
    created_at  timestamptz NOT NULL DEFAULT now(),
    note        text
);
CREATE INDEX customers_lower_name ON customers (lower(name));

CREATE TABLE products (
    id     integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    sku    text NOT NULL UNIQUE,
    title  text NOT NULL,
    price  numeric(10,2) NOT NULL CHECK (price >= 0),
    tags   text[]
);

CREATE TABLE orders (
    id           bigserial PRIMARY KEY,
    customer_id  integer NOT NULL REFERENCES customers (id),
    status       order_status NOT NULL DEFAULT 'new',
    invoice_no   bigint DEFAULT nextval('invoice_number_seq'),
    ordered_at   timestamptz NOT NULL,
    total        numeric(12,2) NOT NULL DEFAULT 0,
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX orders_customer ON orders (customer_id);
CREATE INDEX orders_ordered_at ON orders (ordered_at);

CREATE TABLE order_items (
    order_id    bigint NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    line_no     integer NOT NULL,
    product_id  integer NOT NULL REFERENCES products (id),
    qty         integer NOT NULL CHECK (qty > 0),
    price       numeric(10,2) NOT NULL,
    PRIMARY KEY (order_id, line_no)
);
CREATE INDEX order_items_product ON order_items (product_id);

CREATE TABLE events (
    id           bigint PRIMARY KEY,
    customer_id  integer REFERENCES customers (id),
    kind         text NOT NULL,
    payload      jsonb NOT NULL,
    created_at   timestamptz NOT NULL
);
CREATE INDEX events_created_at ON events (created_at);

CREATE TABLE payments (
    id        bigint NOT NULL,
    order_id  bigint NOT NULL REFERENCES orders (id),
    paid_at   timestamptz NOT NULL,
    amount    numeric(12,2) NOT NULL,
    method    text NOT NULL,
    PRIMARY KEY (id, paid_at)
) PARTITION BY RANGE (paid_at);
CREATE TABLE payments_2024h1 PARTITION OF payments FOR VALUES FROM ('2024-01-01') TO ('2024-07-01');
CREATE TABLE payments_2024h2 PARTITION OF payments FOR VALUES FROM ('2024-07-01') TO ('2025-01-01');
CREATE TABLE payments_later PARTITION OF payments DEFAULT;
CREATE INDEX payments_order ON payments (order_id);

CREATE FUNCTION touch_updated_at() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN NEW.updated_at := now(); RETURN NEW; END $$;
CREATE TRIGGER orders_touch BEFORE UPDATE ON orders FOR EACH ROW EXECUTE FUNCTION touch_updated_at();

CREATE VIEW customer_order_totals AS
SELECT c.id AS customer_id, c.name, count(o.id) AS orders, coalesce(sum(o.total), 0) AS total
  FROM customers c LEFT JOIN orders o ON o.customer_id = c.id
 GROUP BY c.id, c.name;
"""

FILL = {
    "customers": """
INSERT INTO customers (email, name, country, created_at, note)
SELECT 'user' || g || '@example.com',
       (ARRAY['Ada', 'Grace', 'Linus', 'Jürgen', 'Zoë', '李', 'José', 'O''Brien'])[1 + g %% 8] || ' ' || g,
       (ARRAY['DE', 'FR', 'US', 'JP', 'BR', NULL])[1 + g %% 6],
       timestamptz '2023-01-01 00:00:00+00' + g * interval '7 minutes',
       CASE WHEN g %% 4 = 0 THEN NULL ELSE (ARRAY['vip', 'Grüße', '日本語', 'émoji ✓'])[1 + g %% 4] END
  FROM generate_series(1::bigint, %(customers)s) g""",
    "products": """
INSERT INTO products (sku, title, price, tags)
SELECT 'SKU-' || lpad(g::text, 6, '0'), 'Product ' || g, round((1 + (g * 37) %% 500)::numeric / 3, 2),
       CASE WHEN g %% 5 = 0 THEN NULL ELSE ARRAY['tag' || g %% 7, 'tag' || g %% 11] END
  FROM generate_series(1::bigint, %(products)s) g""",
    "orders": """
INSERT INTO orders (customer_id, status, invoice_no, ordered_at, total, updated_at)
SELECT 1 + (g * 7919) %% %(customers)s,
       (ARRAY['new', 'paid', 'shipped', 'cancelled'])[1 + g %% 4]::order_status, 100000 + g,
       timestamptz '2024-01-01 00:00:00+00' + g * interval '2 minutes',
       round(((g * 13) %% 100000)::numeric / 7, 2),
       timestamptz '2024-01-01 00:00:00+00' + g * interval '2 minutes'
  FROM generate_series(1::bigint, %(orders)s) g""",
    "order_items": """
INSERT INTO order_items (order_id, line_no, product_id, qty, price)
SELECT 1 + (g - 1) / %(per_order)s, 1 + (g - 1) %% %(per_order)s, 1 + (g * 31) %% %(products)s,
       1 + g %% 5, round(((g * 17) %% 5000)::numeric / 9, 2)
  FROM generate_series(1::bigint, %(order_items)s) g""",
    "events": """
INSERT INTO events (id, customer_id, kind, payload, created_at)
SELECT g, CASE WHEN g %% 10 = 0 THEN NULL ELSE 1 + (g * 104729) %% %(customers)s END,
       (ARRAY['click', 'view', 'purchase', 'signup'])[1 + g %% 4],
       jsonb_build_object('v', g %% 997, 'src', (ARRAY['web', 'ios', 'android'])[1 + g %% 3],
                          'tags', jsonb_build_array('a', 'ü'), 'ok', g %% 2 = 0),
       timestamptz '2024-01-01 00:00:00+00' + g * interval '30 seconds'
  FROM generate_series(1::bigint, %(events)s) g""",
    "payments": """
INSERT INTO payments (id, order_id, paid_at, amount, method)
SELECT o.id, o.id, o.ordered_at + interval '1 hour', o.total, (ARRAY['card', 'sepa', 'paypal'])[1 + o.id %% 3]
  FROM orders o
 WHERE o.id %% 4 = 0""",
}


@dataclass(frozen=True)
class SeedReport:
    rows: dict[str, int]
    seconds: float
    created: bool  # False: it was there already, with the same scale

    @property
    def total_rows(self) -> int:
        return sum(self.rows.values())


def sizes(scale: float) -> dict[str, int]:
    """Rows per table for ``scale`` (at least a few of each, so every relation is exercised)."""
    rows = {name: max(8, int(count * scale)) for name, count in ROWS.items()}
    rows["order_items"] = max(rows["order_items"], rows["orders"])
    return rows


def seed(conn, scale: float = 1.0) -> SeedReport:
    """Build the legacy schema in ``conn``'s database, or leave it if it is already there.

    Only ``public`` is used; anything of that name already there with another scale is dropped
    first, so the demo can be run again with another size.
    """
    started = time.monotonic()
    marker = MARKER.format(scale=scale)
    if _marker(conn) == marker:
        return SeedReport(_counts(conn), time.monotonic() - started, created=False)
    rows = sizes(scale)
    params = {**rows, "per_order": max(1, rows["order_items"] // rows["orders"])}
    rows["order_items"] = params["per_order"] * rows["orders"]
    params["order_items"] = rows["order_items"]
    with conn.cursor() as cur:
        _drop(cur)
        cur.execute(SCHEMA)
        for table in TABLES:
            cur.execute(FILL[table], params)
        cur.execute("SELECT setval('invoice_number_seq', 100000 + %s)", (rows["orders"],))
        cur.execute(sql.SQL("COMMENT ON DATABASE {} IS %s").format(sql.Identifier(conn.info.dbname)), (marker,))
    conn.commit()
    autocommit, conn.autocommit = conn.autocommit, True
    try:
        with conn.cursor() as cur:
            cur.execute("VACUUM ANALYZE")
    finally:
        conn.autocommit = autocommit
    return SeedReport(_counts(conn), time.monotonic() - started, created=True)


def _marker(conn) -> str | None:
    with conn.cursor() as cur:
        cur.execute("SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = current_database()")
        marker = cur.fetchone()[0]
    conn.rollback()
    return marker


def _drop(cur) -> None:
    cur.execute("DROP VIEW IF EXISTS customer_order_totals")
    cur.execute("DROP TABLE IF EXISTS payments, events, order_items, orders, products, customers CASCADE")
    cur.execute("DROP FUNCTION IF EXISTS touch_updated_at()")
    cur.execute("DROP SEQUENCE IF EXISTS invoice_number_seq")
    cur.execute("DROP DOMAIN IF EXISTS email_address")
    cur.execute("DROP TYPE IF EXISTS order_status")


def _counts(conn) -> dict[str, int]:
    counts = {}
    with conn.cursor() as cur:
        for table in TABLES:
            cur.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table)))
            counts[table] = cur.fetchone()[0]
    conn.rollback()
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description="Build the legacy demo database.")
    parser.add_argument(
        "dsn", nargs="?", default="", help="libpq DSN or URI of the database to fill; default: libpq's PG* environment"
    )
    parser.add_argument("--scale", type=float, default=1.0, help="1.0 is about 1,000,000 rows")
    args = parser.parse_args()
    conn = psycopg2.connect(args.dsn)
    try:
        report = seed(conn, args.scale)
    finally:
        conn.close()
    what = "built" if report.created else "already there"
    print(
        f"legacy database {what}: {report.total_rows:,} rows in {report.seconds:.1f} s "
        + ", ".join(f"{t} {n:,}" for t, n in report.rows.items())
    )


if __name__ == "__main__":
    main()
