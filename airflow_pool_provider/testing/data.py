"""The ``events`` table that the tests, the demo and the benchmarks copy.

The same definition and generator as the project's benchmark table (2,000,000 rows of bigint key,
int, short text, small jsonb, numeric(12,2), timestamptz and nullable unicode text; about 250 MB
as COPY text), so figures compare across runs.
"""

from __future__ import annotations

from psycopg2 import sql

EVENTS_DDL = """
CREATE TABLE {table} (
    id          bigint PRIMARY KEY,
    account_id  integer       NOT NULL,
    kind        text          NOT NULL,
    payload     jsonb         NOT NULL,
    amount      numeric(12,2) NOT NULL,
    created_at  timestamptz   NOT NULL,
    note        text
)
"""

EVENTS_FILL = """
SELECT setseed(0.42);
INSERT INTO {table}
SELECT i,
       (random() * 100000)::int,
       (ARRAY['click','view','purchase','signup','logout'])[1 + (i %% 5)],
       jsonb_build_object('v', i %% 997,
                          'src', (ARRAY['web','ios','android'])[1 + (i %% 3)],
                          'ok', (i %% 2 = 0),
                          'tags', jsonb_build_array('a', 'b')),
       round((random() * 100000)::numeric, 2),
       timestamptz '2024-01-01 00:00:00+00' + i * interval '15 seconds',
       CASE WHEN random() < 0.30 THEN NULL
            ELSE (ARRAY['plain note ', 'Grüße aus Köln – ', '日本語のメモ ', 'émoji ✓ 🚀 ',
                        'naïve café '])[1 + (i %% 5)] || i
       END
FROM generate_series(1, %(rows)s) AS i;
"""


def create_events(conn, rows: int, table: str = "events") -> None:
    """Create ``table`` on a psycopg2 connection and fill it with ``rows`` rows (0: empty)."""
    ident = sql.Identifier(table)
    with conn.cursor() as cur:
        cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(ident))
        cur.execute(sql.SQL(EVENTS_DDL).format(table=ident))
        if rows:
            cur.execute(sql.SQL(EVENTS_FILL).format(table=ident), {"rows": rows})
    conn.commit()
    if rows:
        autocommit, conn.autocommit = conn.autocommit, True
        with conn.cursor() as cur:
            cur.execute(sql.SQL("VACUUM (ANALYZE) {}").format(ident))
        conn.autocommit = autocommit


def table_digest(
    conn, table: str = "events", key: str | None = "id", *, schema: str | None = None, only: bool = False
) -> tuple[int, str | None]:
    """Row count and an md5 over every row's text in key order (``key`` None: in the order of
    the rows' text, for a table without a one-column key): equal digests, equal tables.
    ``only``: the table's own rows, without those of tables inheriting from it."""
    order = sql.Identifier(key) if key else sql.SQL("t::text")
    name = sql.Identifier(schema, table) if schema else sql.Identifier(table)
    with conn.cursor() as cur:
        cur.execute(
            sql.SQL("SELECT count(*), md5(string_agg(t::text, E'\\n' ORDER BY {})) FROM {}{} t").format(
                order, sql.SQL("ONLY " if only else ""), name
            )
        )
        count, digest = cur.fetchone()
    conn.commit()
    return count, digest
