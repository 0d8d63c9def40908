"""The chunked COPY engine against a real PostgreSQL: type fidelity, keys and chunk plans, where
subsets, modes, exactly-once re-runs, checksum verification and parallelism.

Every test copies between two databases of its own (``env.db["src"]`` -> ``env.db["dst"]``) and
checks outcomes: row-for-row digests of both sides, the run's summary and the ledger.
"""

from __future__ import annotations

import threading
import time
from decimal import Decimal
from typing import Any

import psycopg2
import psycopg2.errors
import pytest
from copy_helpers import EARLIER_LEDGER_DDL, CopyEnv, expected_chunks, icu_collation
from psycopg2 import sql

from airflow_pool_provider.copy import CopyError, CopySpec, TableCopy
from airflow_pool_provider.copy.ledger import CHUNK_LEDGER_TABLE, Ledger
from airflow_pool_provider.errors import ChunkFailed, ChunkMismatch
from airflow_pool_provider.pool import ConnectionPool

SIMPLE = "CREATE TABLE t (id int PRIMARY KEY, note text, n numeric(12, 2))"
SIMPLE_ROWS = "INSERT INTO t SELECT g, 'note ' || g, g * 1.25 FROM generate_series(1, %s) g"


def simple(env: CopyEnv, rows: int = 1000) -> None:
    env.both(SIMPLE)
    env.sql("src", SIMPLE_ROWS, (rows,))


def int_bounds(chunk: dict) -> tuple[int, int]:
    """A ledger chunk's (lower, upper] bounds on an integer key, open ends as +-2**62."""
    lower, upper = chunk["lower_bound"], chunk["upper_bound"]
    return (int(lower[0]) if lower else -(2**62), int(upper[0]) if upper else 2**62)


def python_values(rows: list[tuple]) -> list[tuple]:
    """Rows with bytea as bytes and numerics as text (Decimal('NaN') != Decimal('NaN'))."""

    def norm(value: object) -> object:
        if isinstance(value, memoryview):
            return bytes(value)
        if isinstance(value, Decimal):
            return str(value)
        return value

    return [tuple(norm(v) for v in row) for row in rows]


def assert_same(env: CopyEnv, table: str = "t", order: str = "id", target: str | None = None) -> None:
    src = env.digest("src", table, order)
    dst = env.digest("dst", target or table, order)
    assert src == dst
    assert src[0] > 0


# -- 1. type fidelity ---------------------------------------------------------------------------

MOOD = "CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy', 'ünï 😀')"
FIDELITY_TABLE = """
CREATE TABLE t (
    id bigint PRIMARY KEY,
    j jsonb,
    js json,
    tags text[],
    moods mood[],
    b bytea,
    amount numeric(20, 6),
    ts timestamptz,
    iv interval,
    u uuid,
    ip inet,
    m mood,
    pos posint,
    note text,
    doubled numeric GENERATED ALWAYS AS (amount * 2) STORED
)"""
FIDELITY_COLUMNS = [
    "id",
    "j",
    "js",
    "tags",
    "moods",
    "b",
    "amount",
    "ts",
    "iv",
    "u",
    "ip",
    "m",
    "pos",
    "note",
    "doubled",
]
FIDELITY_ROWS = r"""
INSERT INTO t (id, j, js, tags, moods, b, amount, ts, iv, u, ip, m, pos, note)
SELECT g,
       jsonb_build_object('g', g, 'nested', jsonb_build_array(g, 'x' || g, NULL, true, g / 7.0),
                          'ünï', '😀 "q" \ ' || g),
       ('{"b": 1,   "a": [' || g || ', "dup"],' || E'\n' || ' "a": "duplicate key kept by json"}')::json,
       ARRAY['a,b', 'quote"d', 'brace{}', NULL, '', 'back\slash', E'tab\tnl\n', 'g' || g],
       (ARRAY[ARRAY['sad', 'happy', NULL], ARRAY['ünï 😀', 'ok', 'sad']])[1 + g % 2:1 + g % 2][1:3]::mood[],
       decode(md5(g::text), 'hex') || '\x00ff5c0a0d'::bytea,
       round(g * 98765432.1234567 + g / 1000000.0, 6),
       timestamptz '2000-01-01 00:00:00.123456+00' + g * interval '37 days 1 hour 1.000001 second',
       make_interval(years => g % 3, months => g % 13, days => -g, secs => g * 1.000001),
       md5(g::text)::uuid,
       CASE WHEN g % 2 = 0 THEN ('10.' || g % 256 || '.0.' || g % 7 || '/24')::inet
            ELSE ('2001:db8::' || to_hex(g) || '/64')::inet END,
       (ARRAY['sad', 'ok', 'happy', 'ünï 😀'])[1 + g % 4]::mood,
       g,
       CASE g % 6
            WHEN 0 THEN 'emoji 😀👨‍👩‍👧‍👦🏳️‍🌈 ' || g
            WHEN 1 THEN 'combining e' || U&'\0301' || ' a' || U&'\030A' || ' ' || g
            WHEN 2 THEN 'RTL שָׁלוֹם مرحبا ' || g || ' ‏mark'
            WHEN 3 THEN E'tab\there\nnewline\\backslash\r\rcarriage ' || g
            WHEN 4 THEN 'null-looking \N NULL ' || g
            ELSE repeat('ü', g) END
  FROM generate_series(1, 400) g;

-- every nullable column NULL
INSERT INTO t (id) VALUES (1000);

-- TOASTed values: a 200 kB text, a large jsonb and a large bytea
INSERT INTO t (id, j, js, b, note, tags, amount)
SELECT 1001,
       (SELECT jsonb_agg(jsonb_build_object('k', i, 'v', repeat('y', 50), 'u', '😀')) FROM generate_series(1, 5000) i),
       (SELECT json_agg(json_build_object('k', i)) FROM generate_series(1, 3000) i),
       decode(repeat('deadbeef00', 40000), 'hex'),
       repeat('x', 200000) || '😀',
       ARRAY[repeat('z', 100000)],
       0.000001;

-- extremes and empties
INSERT INTO t (id, j, js, tags, moods, b, amount, ts, iv, u, ip, m, pos, note) VALUES
  (1002, '{}', '[]', '{{a,b},{c,NULL}}', '{}', '\x', 99999999999999.999999, 'infinity',
   '-1 day -02:03:04.000001', '00000000-0000-0000-0000-000000000000', '::1', 'sad', 2147483647, ''),
  (1003, 'null', 'null', '{}', '{NULL}', '\x00', -99999999999999.999999, '-infinity',
   '-5000 years -11 mons -29 days -23:59:59.999999', 'ffffffff-ffff-ffff-ffff-ffffffffffff',
   '255.255.255.255/32', 'ünï 😀', 1, ' '),
  (1004, '"\u00e9\ud83d\ude00"', '"\u00e9\ud83d\ude00"', '{" spaced "}', '{happy}', '\xff', 'NaN',
   '1999-12-31 23:59:59.999999+14', '0', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '0.0.0.0/0', 'happy', 5,
   '-0.000001');
"""


def test_type_fidelity_every_column_byte_identical(env: CopyEnv) -> None:
    # Source: mood first. Target: another enum and the domain first, so every OID differs.
    env.sql("src", MOOD)
    env.sql("src", "CREATE TYPE weather AS ENUM ('sun', 'rain')")
    env.sql("src", "CREATE DOMAIN posint AS int CHECK (VALUE > 0)")
    env.sql("dst", "CREATE TYPE weather AS ENUM ('rain', 'sun', 'snow')")
    env.sql("dst", "CREATE DOMAIN posint AS int CHECK (VALUE > 0)")
    env.sql("dst", "CREATE TYPE other_first AS ENUM ('x')")
    env.sql("dst", MOOD)
    env.both(FIDELITY_TABLE)
    env.sql("src", FIDELITY_ROWS)
    oid = "SELECT %s::regtype::oid"
    assert env.one("src", oid, ("mood",)) != env.one("dst", oid, ("mood",))
    assert env.one("src", oid, ("mood[]",)) != env.one("dst", oid, ("mood[]",))
    total = env.count("src")
    assert total == 405

    summary = env.copy(CopySpec("t", chunk_size=50, parallelism=3))

    src = env.column_digests("src", "t", FIDELITY_COLUMNS, "id")
    dst = env.column_digests("dst", "t", FIDELITY_COLUMNS, "id")
    assert {c: dst[c] for c in FIDELITY_COLUMNS if src[c] != dst[c]} == {}
    assert src == dst
    # The generated column was computed by the target, from the copied values.
    assert env.one("dst", "SELECT count(*) FROM t WHERE doubled IS DISTINCT FROM amount * 2") == 0
    # NULLs stayed NULLs, in every nullable column.
    nulls = "SELECT " + ", ".join(f"count(*) FILTER (WHERE {c} IS NULL)" for c in FIDELITY_COLUMNS) + " FROM t"
    assert env.rows("src", nulls) == env.rows("dst", nulls)
    assert all(n >= 1 for n in env.rows("dst", nulls)[0][1:])
    # The TOASTed values arrived whole.
    big = "SELECT length(note), length(j::text) > 100000, length(b), length(tags[1]) FROM t WHERE id = 1001"
    assert env.rows("dst", big) == [(200001, True, 200000, 100000)]
    # Python values as well (psycopg2 parses both sides the same way).
    everything = "SELECT * FROM t ORDER BY id"
    assert python_values(env.rows("src", everything)) == python_values(env.rows("dst", everything))

    assert summary["format"] == "text"  # user-defined types force text COPY
    assert summary["verification"]["checksums"] == "match (text hash)"
    assert summary["verification"]["chunks_verified"] == summary["chunks"]
    assert summary["key"] == ["id"]
    assert summary["rows"] == summary["total_rows"] == total
    assert summary["chunks"] == expected_chunks(total, 50)
    assert summary["chunks_skipped"] == 0
    assert summary["bytes"] > 400_000
    env.assert_ledger_complete("copy-1", total)


BUILTIN_TABLE = """
CREATE TABLE {name} (
    id bigint PRIMARY KEY, n numeric(20, 6), t text, ts timestamptz, arr int[], j jsonb, b bytea,
    iv interval, u uuid, ip inet, f float8, d date{extra}
)"""
BUILTIN_ROWS = """
INSERT INTO {name} (id, n, t, ts, arr, j, b, iv, u, ip, f, d{extra_col})
SELECT g, g * 1234.567891, E'text\\t' || g || ' 😀', now() - g * interval '1 hour', ARRAY[g, NULL, -g],
       jsonb_build_object('g', g), decode(md5(g::text), 'hex'), g * interval '1.5 seconds',
       md5(g::text)::uuid, '192.168.0.1'::inet + g, g / 3.0::float8 + 0.1, date '2000-01-01' + g{extra_val}
  FROM generate_series(1, 700) g
"""


@pytest.mark.parametrize(
    ("extra", "extra_col", "extra_val", "checksum"),
    [
        ("", "", "", "match (record hash)"),
        # json is built in but has no hash function: still binary COPY, but a text hash.
        (", js json", ", js", ", json_build_object('g', g, 'g', 'dup')", "match (text hash)"),
    ],
    ids=["builtin-hashable", "builtin-json"],
)
def test_builtin_types_use_binary_format(
    env: CopyEnv, extra: str, extra_col: str, extra_val: str, checksum: str
) -> None:
    env.both(BUILTIN_TABLE.format(name="t", extra=extra))
    env.sql("src", BUILTIN_ROWS.format(name="t", extra_col=extra_col, extra_val=extra_val))

    summary = env.copy(CopySpec("t", chunk_size=100, parallelism=2))

    assert summary["format"] == "binary"
    assert summary["verification"]["checksums"] == checksum
    assert summary["rows"] == 700
    assert summary["chunks"] == 7
    assert_same(env)
    assert env.rows("src", "SELECT * FROM t ORDER BY id") == env.rows("dst", "SELECT * FROM t ORDER BY id")
    env.assert_ledger_complete("copy-1", 700)


# -- 2. keys and chunk plans --------------------------------------------------------------------


def test_composite_primary_key(env: CopyEnv) -> None:
    env.both("CREATE TABLE t (a int, b text, v text, PRIMARY KEY (a, b))")
    env.sql(
        "src",
        "INSERT INTO t SELECT a, b || a, a || '/' || b FROM generate_series(1, 20) a, "
        "unnest(ARRAY['x', 'X', 'y', 'Zed', 'zed', 'é', 'e', '10', '9', ' sp', 'ab', 'Ab', 'aB', 'AB', "
        "'😀', 'ß', 'ss', 'a b', 'a-b', 'a_b', 'q', 'Q', 'r', 'R', 's', 'S', 't', 'T', 'u', 'U']) b",
    )
    assert env.count("src") == 600

    summary = env.copy(CopySpec("t", chunk_size=70, parallelism=3))

    assert summary["key"] == ["a", "b"]
    assert summary["rows"] == 600
    assert summary["chunks"] == expected_chunks(600, 70)
    assert_same(env, order="a, b")
    chunks = env.assert_ledger_complete("copy-1", 600)
    assert [c["rows_copied"] for c in chunks[:-1]] == [70] * (len(chunks) - 1)


def test_uuid_primary_key(env: CopyEnv) -> None:
    env.both("CREATE TABLE t (u uuid PRIMARY KEY, n int)")
    env.sql("src", "INSERT INTO t SELECT md5(g::text)::uuid, g FROM generate_series(1, 900) g")

    summary = env.copy(CopySpec("t", chunk_size=100, parallelism=2))

    assert summary["key"] == ["u"]
    assert summary["chunks"] == 9
    assert_same(env, order="u")
    chunks = env.assert_ledger_complete("copy-1", 900)
    assert [c["rows_copied"] for c in chunks] == [100] * 9


def text_keys() -> list[str]:
    stems = [
        "apple",
        "Apple",
        "APPLE",
        "äpfel",
        "Äpfel",
        "zebra",
        "Zebra",
        "éclair",
        "eclair",
        "Eclair",
        "😀",
        "ß",
        "ss",
        "SS",
        " space",
        "a b",
        "a-b",
        "a_b",
        "ǅ",
        "ﬁ",
        "שלום",
        "مرحبا",
        "e\u0301",
        "\u00e9",
        "Z",
        "z",
        "_",
        "-",
        "0",
        "9",
        "10",
    ]
    return [f"{stem}{i}" if i else stem for i in range(20) for stem in stems]


def test_text_primary_key_mixed_case_and_unicode(env: CopyEnv) -> None:
    # An ICU collation sorts 'apple' < 'Apple' < 'b', unlike byte order: chunk ranges must use it.
    collation = icu_collation(env)
    collate = f'COLLATE "{collation}"' if collation else ""
    env.both(f"CREATE TABLE t (k text {collate} PRIMARY KEY, n int)")
    keys = text_keys()
    assert len(set(keys)) == len(keys) == 620
    env.sql("src", "INSERT INTO t SELECT k, n FROM unnest(%s::text[]) WITH ORDINALITY AS x(k, n)", (keys,))

    summary = env.copy(CopySpec("t", chunk_size=37, parallelism=3))

    assert summary["key"] == ["k"]
    assert summary["chunks"] == expected_chunks(620, 37)
    assert env.sorted_rows("src") == env.sorted_rows("dst")
    assert_same(env, order="k")
    chunks = env.assert_ledger_complete("copy-1", 620)
    assert [c["rows_copied"] for c in chunks[:-1]] == [37] * (len(chunks) - 1)
    # Every chunk's bounds enclose exactly its rows under the column's collation.
    for chunk in chunks:
        lower = chunk["lower_bound"][0] if chunk["lower_bound"] else None
        upper = chunk["upper_bound"][0] if chunk["upper_bound"] else None
        n = env.one(
            "dst",
            "SELECT count(*) FROM t WHERE (%(lo)s::text IS NULL OR k > %(lo)s) "
            "AND (%(hi)s::text IS NULL OR k <= %(hi)s)",
            {"lo": lower, "hi": upper},
        )
        assert n == chunk["rows_copied"]


def test_text_key_with_a_different_collation_on_the_target(env: CopyEnv) -> None:
    collation = icu_collation(env)
    if collation is None:
        pytest.skip("the server has no ICU collation")
    env.sql("src", f'CREATE TABLE t (k text COLLATE "{collation}" PRIMARY KEY, n int)')
    env.sql("dst", 'CREATE TABLE t (k text COLLATE "C" PRIMARY KEY, n int)')
    env.sql("src", "INSERT INTO t SELECT k, n FROM unnest(%s::text[]) WITH ORDINALITY AS x(k, n)", (text_keys(),))

    summary = env.copy(CopySpec("t", chunk_size=50, parallelism=1))

    assert summary["rows"] == 620
    assert env.sorted_rows("src") == env.sorted_rows("dst")


def test_unique_not_null_index_is_the_key_without_primary_key(env: CopyEnv) -> None:
    # alt is unique but nullable (unusable); (code, part) is a unique index on NOT NULL columns.
    env.both("CREATE TABLE t (alt int UNIQUE, code text NOT NULL, part int NOT NULL, v text)")
    env.both("CREATE UNIQUE INDEX t_code_part ON t (code, part)")
    env.both("CREATE INDEX t_v ON t (v)")
    env.sql(
        "src",
        "INSERT INTO t SELECT CASE WHEN g % 3 = 0 THEN NULL ELSE g END, 'c' || g % 17, g, 'v' || g "
        "FROM generate_series(1, 800) g",
    )

    summary = env.copy(CopySpec("t", chunk_size=64, parallelism=2))

    assert summary["key"] == ["code", "part"]
    assert summary["chunks"] == expected_chunks(800, 64)
    assert_same(env, order="code, part")
    env.assert_ledger_complete("copy-1", 800)


def test_keyless_table_uses_ctid_and_keeps_duplicates(env: CopyEnv) -> None:
    env.both("CREATE TABLE t (n int, note text)")
    # Every row three times, plus some all-NULL duplicates.
    env.sql(
        "src",
        "INSERT INTO t SELECT g % 1000, 'dup ' || (g % 1000) || repeat('.', g % 50) FROM generate_series(1, 3000) g",
    )
    env.sql("src", "INSERT INTO t SELECT NULL, NULL FROM generate_series(1, 5)")
    env.sql("src", "ANALYZE t")
    total = 3005

    summary = env.copy(CopySpec("t", chunk_size=300, parallelism=3))

    assert summary["key"] == "ctid"
    assert summary["rows"] == summary["total_rows"] == total
    assert summary["chunks"] > 3
    assert env.sorted_rows("src") == env.sorted_rows("dst")
    assert env.digest("src") == env.digest("dst")
    assert env.one("dst", "SELECT count(*) FROM t WHERE n IS NULL AND note IS NULL") == 5
    dups = "SELECT count(*) FROM (SELECT n, note FROM t GROUP BY 1, 2 HAVING count(*) > 1) x"
    assert env.one("dst", dups) == env.one("src", dups) > 0
    chunks = env.assert_ledger_complete("copy-1", total)
    assert all(c["key_kind"] == "ctid" for c in chunks)


def test_sparse_keys_give_chunks_of_equal_rows(env: CopyEnv) -> None:
    env.both("CREATE TABLE t (id bigint PRIMARY KEY, v text)")
    sparse = [1, 2, 3, 10**6, 10**9, 10**12, 10**12 + 1, 10**15, 2**62, 2**63 - 1, -(2**63), -5]
    env.sql("src", "INSERT INTO t SELECT id, 'sparse' FROM unnest(%s::bigint[]) id", (sparse,))
    env.sql("src", "INSERT INTO t SELECT g, 'dense' FROM generate_series(5000, 5999) g")
    env.sql("src", "INSERT INTO t SELECT g * 1000003, 'spread' FROM generate_series(1, 250) g")
    total = env.count("src")
    assert total == 1262

    summary = env.copy(CopySpec("t", chunk_size=100, parallelism=2))

    assert summary["chunks"] in (expected_chunks(total, 100), expected_chunks(total, 100) + 1)
    assert_same(env)
    chunks = env.assert_ledger_complete("copy-1", total)
    for chunk in chunks[:-1]:
        assert chunk["expected_rows"] == chunk["rows_copied"] == 100, chunk
    assert 0 < chunks[-1]["rows_copied"] <= 100
    assert chunks[-1]["rows_copied"] == chunks[-1]["expected_rows"]


# -- 3. where subsets ---------------------------------------------------------------------------


def test_where_subset_copies_exactly_the_matching_rows(env: CopyEnv, make_reader) -> None:
    simple(env, 1000)

    summary = env.copy(CopySpec("t", where="mod(id, 3) = 0", chunk_size=50), source_user=make_reader(env.db["src"]))

    assert summary["rows"] == 333
    assert summary["chunks"] == expected_chunks(333, 50)
    ids = [r[0] for r in env.rows("dst", "SELECT id FROM t ORDER BY id")]
    assert ids == list(range(3, 1001, 3))
    assert env.digest("dst", order="id") == env.digest("src", "(SELECT * FROM t WHERE id % 3 = 0)", "id")
    env.assert_ledger_complete("copy-1", 333)


def test_where_with_percent_operator(env: CopyEnv, make_reader) -> None:
    simple(env, 1000)

    summary = env.copy(CopySpec("t", where="id % 3 = 0", chunk_size=50), source_user=make_reader(env.db["src"]))

    assert summary["rows"] == 333
    assert [r[0] for r in env.rows("dst", "SELECT id FROM t ORDER BY id")] == list(range(3, 1001, 3))


def test_where_on_a_keyless_table(env: CopyEnv, make_reader) -> None:
    # Page (ctid) plans run the condition without query parameters, so '%' works there.
    env.both("CREATE TABLE t (n int, note text)")
    env.sql("src", "INSERT INTO t SELECT g % 700, 'row ' || g FROM generate_series(1, 2100) g")

    spec = CopySpec("t", where="n % 2 = 0 AND note LIKE 'row %'", chunk_size=200)
    summary = env.copy(spec, source_user=make_reader(env.db["src"]))

    assert summary["key"] == "ctid"
    assert summary["rows"] == 1050
    subset = "(SELECT * FROM t WHERE n % 2 = 0)"
    assert env.digest("dst") == env.digest("src", subset)
    env.assert_ledger_complete("copy-1", 1050)


def test_where_incremental_copies_add_up_to_the_table(env: CopyEnv, make_reader) -> None:
    simple(env, 1000)

    reader = make_reader(env.db["src"])
    first = env.copy(CopySpec("t", where="id <= 500", chunk_size=64), copy_id="incr-1", source_user=reader)
    assert first["rows"] == 500
    assert env.one("dst", "SELECT max(id) FROM t") == 500
    second = env.copy(CopySpec("t", where="id > 500", chunk_size=64), copy_id="incr-2", source_user=reader)

    assert second["rows"] == 500
    assert second["chunks_skipped"] == 0
    assert_same(env)
    env.assert_ledger_complete("incr-1", 500)
    env.assert_ledger_complete("incr-2", 500)


# -- 4. modes -----------------------------------------------------------------------------------


def test_append_twice_without_target_key_doubles_rows(env: CopyEnv) -> None:
    env.sql("src", SIMPLE)
    env.sql("src", SIMPLE_ROWS, (600,))
    env.sql("dst", "CREATE TABLE t (id int, note text, n numeric(12, 2))")

    env.copy(CopySpec("t", chunk_size=100), copy_id="append-1")
    env.copy(CopySpec("t", chunk_size=100), copy_id="append-2")

    assert env.count("dst") == 1200
    twice = "SELECT count(*) FROM (SELECT id, note, n FROM t GROUP BY 1, 2, 3 HAVING count(*) = 2) x"
    assert env.one("dst", twice) == 600
    once = env.digest("src", "(SELECT * FROM t UNION ALL SELECT * FROM t)", "id")
    assert env.digest("dst", order="id") == once


def test_append_twice_with_target_primary_key_fails_and_changes_nothing(env: CopyEnv) -> None:
    simple(env, 600)
    env.copy(CopySpec("t", chunk_size=100, parallelism=2), copy_id="append-1")
    before = env.digest("dst", order="id")

    with pytest.raises(CopyError, match="duplicate key value.*use mode='upsert'") as caught:
        env.copy(CopySpec("t", chunk_size=100, parallelism=2), copy_id="append-2")
    assert isinstance(caught.value.__cause__, psycopg2.errors.UniqueViolation)

    assert env.digest("dst", order="id") == before
    env.assert_ledger_complete("append-1", 600)
    second = env.ledger("append-2")
    assert len(second) == 6  # the plan was stored, no chunk finished
    assert all(c["finished_at"] is None and c["rows_copied"] is None for c in second)


def test_replace_truncates_once(env: CopyEnv) -> None:
    simple(env, 700)
    env.sql("dst", "INSERT INTO t SELECT g, 'junk', -1 FROM generate_series(1, 2000, 3) g")

    summary = env.copy(CopySpec("t", mode="replace", chunk_size=100), copy_id="rep")

    assert summary["rows"] == 700
    assert_same(env)
    assert env.one("dst", "SELECT count(*) FROM t WHERE note = 'junk'") == 0
    chunks = env.assert_ledger_complete("rep", 700)

    # A row written after the copy survives a re-run of the same copy: no second TRUNCATE.
    env.sql("dst", "INSERT INTO t VALUES (100000, 'after', 0)")
    again = env.copy(CopySpec("t", mode="replace", chunk_size=100), copy_id="rep")

    assert again["rows"] == 0
    assert again["chunks"] == 0
    assert again["chunks_skipped"] == len(chunks) == 7
    assert again["total_rows"] == 700
    assert env.count("dst") == 701
    assert env.digest("dst", "(SELECT * FROM t WHERE id <> 100000)", "id") == env.digest("src", order="id")


INHERITED = """
CREATE TABLE t (id int{key}, note text);
CREATE TABLE t_child (extra int) INHERITS (t);
"""


@pytest.mark.parametrize(
    "key, spec",
    [
        (" PRIMARY KEY", CopySpec("t", mode="replace", chunk_size=70, parallelism=2)),
        (" PRIMARY KEY", CopySpec("t", mode="upsert", chunk_size=70)),
        ("", CopySpec("t", chunk_size=70, parallelism=2)),  # no key: page ranges
    ],
    ids=["replace", "upsert", "keyless-append"],
)
def test_a_parent_table_is_copied_without_the_rows_of_its_children(env: CopyEnv, key: str, spec: CopySpec) -> None:
    """Like pg_dump, a copy reads ONLY the table: the rows of tables inheriting from it are
    theirs, and the target's children (with ids like the parent's) are left as they were."""
    env.both(INHERITED.format(key=key))
    env.sql("src", "INSERT INTO t SELECT g, 'parent ' || g FROM generate_series(1, 500) g")
    env.sql("src", "INSERT INTO t_child SELECT g, 'child ' || g, g FROM generate_series(1001, 1300) g")
    env.sql("dst", "INSERT INTO t_child SELECT g, 'target child ' || g, g FROM generate_series(1, 20) g")
    children = env.digest("dst", "ONLY t_child", "id")

    summary = env.copy(spec)

    assert summary["rows"] == summary["total_rows"] == 500 and summary["verified"]
    assert env.digest("dst", "ONLY t", "id") == env.digest("src", "ONLY t", "id")
    assert env.digest("dst", "ONLY t_child", "id") == children
    env.assert_ledger_complete("copy-1", 500)


def test_a_partitioned_table_is_copied_with_every_partition(env: CopyEnv) -> None:
    """A partitioned table holds no rows of its own: its copy reads them all, through it."""
    env.both(
        "CREATE TABLE t (id int PRIMARY KEY, note text) PARTITION BY RANGE (id);"
        "CREATE TABLE t_low PARTITION OF t FOR VALUES FROM (0) TO (400);"
        "CREATE TABLE t_high PARTITION OF t FOR VALUES FROM (400) TO (10000)"
    )
    env.sql("src", "INSERT INTO t SELECT g, 'note ' || g FROM generate_series(1, 900) g")
    env.sql("dst", "INSERT INTO t VALUES (1, 'junk'), (500, 'junk')")

    summary = env.copy(CopySpec("t", mode="replace", chunk_size=200, parallelism=2))

    assert summary["rows"] == 900 and summary["verified"]
    for partition in ("t_low", "t_high"):
        assert env.digest("dst", partition, "id") == env.digest("src", partition, "id")


UPSERT_TARGET = """
INSERT INTO t SELECT g, 'stale ' || g, -g FROM generate_series(1, 100) g;       -- overlapping keys
INSERT INTO t SELECT g, 'extra ' || g, g FROM generate_series(10001, 10050) g;  -- target-only keys
"""


def expected_upsert(env: CopyEnv) -> tuple[int, str]:
    return env.digest(
        "src",
        "(SELECT * FROM t UNION ALL SELECT g, 'extra ' || g, g::numeric(12, 2) FROM generate_series(10001, 10050) g)",
        "id",
    )


def test_upsert_updates_inserts_and_keeps_extra_rows(env: CopyEnv) -> None:
    simple(env, 600)
    env.sql("dst", UPSERT_TARGET)

    summary = env.copy(CopySpec("t", mode="upsert", chunk_size=80, parallelism=2), copy_id="up-1")

    assert summary["rows"] == 600
    assert summary["verification"]["checksums"].startswith("match")
    assert env.count("dst") == 650
    assert env.digest("dst", order="id") == expected_upsert(env)
    assert env.one("dst", "SELECT count(*) FROM t WHERE note LIKE 'stale%'") == 0
    env.assert_ledger_complete("up-1", 600)
    final = env.digest("dst", order="id")

    again = env.copy(CopySpec("t", mode="upsert", chunk_size=80, parallelism=2), copy_id="up-1")
    assert (again["rows"], again["chunks"], again["chunks_skipped"]) == (0, 0, expected_chunks(600, 80))
    assert env.digest("dst", order="id") == final

    fresh = env.copy(CopySpec("t", mode="upsert", chunk_size=80, parallelism=2), copy_id="up-2")
    assert fresh["rows"] == 600
    assert fresh["chunks_skipped"] == 0
    assert env.digest("dst", order="id") == final


def test_upsert_on_a_unique_index_other_than_the_primary_key(env: CopyEnv) -> None:
    env.sql("src", "CREATE TABLE t (code text PRIMARY KEY, val int, note text)")
    env.sql("src", "INSERT INTO t SELECT 'code-' || g, g, 'fresh ' || g FROM generate_series(1, 500) g")
    env.sql("dst", "CREATE TABLE t (tid serial PRIMARY KEY, code text NOT NULL, val int, note text)")
    env.sql("dst", "CREATE UNIQUE INDEX t_code ON t (code)")
    env.sql("dst", "INSERT INTO t (code, val, note) SELECT 'code-' || g, -g, 'stale' FROM generate_series(1, 500, 5) g")
    env.sql("dst", "INSERT INTO t (code, val, note) SELECT 'other-' || g, g, 'extra' FROM generate_series(1, 30) g")
    tids = env.rows("dst", "SELECT code, tid FROM t ORDER BY code")

    summary = env.copy(
        CopySpec(
            "t", mode="upsert", columns=["code", "val", "note"], conflict_columns=["code"], chunk_size=60, parallelism=2
        )
    )

    assert summary["rows"] == 500
    assert env.count("dst") == 530
    copied = "SELECT code, val, note FROM t WHERE code LIKE 'code-%' ORDER BY code"
    assert env.rows("dst", copied) == env.rows("src", "SELECT code, val, note FROM t ORDER BY code")
    assert env.one("dst", "SELECT count(*) FROM t WHERE note = 'extra'") == 30
    # Existing rows were updated in place (same tid); only new codes got new tids.
    after = dict(env.rows("dst", "SELECT code, tid FROM t"))
    assert all(after[code] == tid for code, tid in tids)
    env.assert_ledger_complete("copy-1", 500)


# -- 5. re-runs and exactly-once ----------------------------------------------------------------


def test_rerun_with_the_same_copy_id_copies_nothing(env: CopyEnv) -> None:
    simple(env, 900)
    first = env.copy(CopySpec("t", chunk_size=100, parallelism=3), copy_id="once")
    before = env.digest("dst", order="id")
    ledger = env.ledger("once")

    second = env.copy(CopySpec("t", chunk_size=100, parallelism=3), copy_id="once")

    assert first["rows"] == 900 and first["chunks"] == 9
    assert (second["rows"], second["chunks"], second["chunks_skipped"]) == (0, 0, 9)
    assert second["total_rows"] == 900 and second["total_chunks"] == 9
    assert env.digest("dst", order="id") == before == env.digest("src", order="id")
    assert env.ledger("once") == ledger


FAIL_ON_ID = """
CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.id = 777 THEN RAISE EXCEPTION 'refusing id %', NEW.id; END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER refuse BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION refuse();
"""


@pytest.mark.parametrize("parallelism", [1, 3])
def test_failed_chunk_resumes_exactly_once(env: CopyEnv, parallelism: int) -> None:
    simple(env, 1000)
    env.sql("dst", FAIL_ON_ID)
    spec = CopySpec("t", chunk_size=100, parallelism=parallelism)

    with pytest.raises(ChunkFailed, match="refusing id 777") as caught:
        env.copy(spec, copy_id="resume")
    assert isinstance(caught.value.__cause__, psycopg2.errors.RaiseException)  # a fault: Airflow may retry

    ledger = env.ledger("resume")
    assert len(ledger) == 10
    done = [c for c in ledger if c["finished_at"] is not None]
    failed = next(c for c in ledger if int_bounds(c)[0] < 777 <= int_bounds(c)[1])
    assert failed["finished_at"] is None
    assert env.one("dst", "SELECT count(*) FROM t WHERE id > %s AND id <= %s", int_bounds(failed)) == 0
    assert env.count("dst") == sum(c["rows_copied"] for c in done)
    if parallelism == 1:
        assert len(done) == 7  # chunks 0-6 committed, in order, before chunk 7 failed
    # Committed chunks are complete and in the target.
    for chunk in done:
        assert env.one("dst", "SELECT count(*) FROM t WHERE id > %s AND id <= %s", int_bounds(chunk)) == 100

    env.sql("dst", "DROP TRIGGER refuse ON t")
    summary = env.copy(spec, copy_id="resume")

    assert summary["chunks_skipped"] == len(done)
    assert summary["chunks"] == 10 - len(done)
    assert summary["rows"] == 1000 - 100 * len(done)
    assert summary["total_rows"] == 1000
    assert_same(env)
    assert env.one("dst", "SELECT count(DISTINCT id) FROM t") == 1000
    env.assert_ledger_complete("resume", 1000)


def test_concurrent_runs_of_one_copy_id_copy_each_chunk_once(env: CopyEnv, make_reader) -> None:
    # Two attempts of one copy at once (a zombie task and its retry): the ledger lets one copy each chunk.
    env.sql("src", SIMPLE)
    env.sql("src", SIMPLE_ROWS, (2000,))
    env.sql("dst", "CREATE TABLE t (id int, note text, n numeric(12, 2))")  # no key: duplicates would show
    # The ledger table exists already (see test_concurrent_first_copies_create_the_ledger_once).
    env.copy(CopySpec("t", where="id < 0"), copy_id="warm-up", source_user=make_reader(env.db["src"]))
    results: list = []

    def attempt() -> None:
        try:
            results.append(env.copy(CopySpec("t", chunk_size=100, parallelism=2), copy_id="zombie"))
        except BaseException as exc:  # noqa: BLE001 - reported below
            results.append(exc)

    threads = [threading.Thread(target=attempt, daemon=True) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(t.is_alive() for t in threads)
    assert all(isinstance(r, dict) for r in results), results
    assert sum(r["rows"] for r in results) == 2000
    assert sum(r["chunks"] for r in results) == 20
    assert env.digest("dst", order="id") == env.digest("src", order="id")
    env.assert_ledger_complete("zombie", 2000)


def test_concurrent_first_copies_create_the_ledger_once(env: CopyEnv) -> None:
    simple(env, 200)
    # Another copy is creating the ledger right now: its transaction is open.
    other = psycopg2.connect(env.server.dsn(env.db["dst"]))
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["summary"] = env.copy(CopySpec("t", chunk_size=50), copy_id="second")
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    try:
        with other.cursor() as cur:
            Ledger("public").ensure(cur)
        thread.start()
        waiting = (
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
        )
        deadline = time.monotonic() + 10
        while env.one("dst", waiting) == 0 and thread.is_alive():
            assert time.monotonic() < deadline, "the copy never reached the ledger creation"
            time.sleep(0.02)
        other.commit()  # the other copy is done creating the ledger
        thread.join(30)
    finally:
        other.close()
    assert not thread.is_alive()
    if "error" in outcome:
        raise outcome["error"]
    assert outcome["summary"]["rows"] == 200
    assert_same(env)


def _fail_a_keyless_copy_then_update_the_source(env: CopyEnv, spec: CopySpec) -> None:
    env.both("CREATE TABLE t (n int, note text)")
    env.sql("src", "INSERT INTO t SELECT g, 'n' || g FROM generate_series(1, 3000) g")
    env.sql("dst", FAIL_ON_ID.replace("NEW.id", "NEW.n").replace("777", "2000"))
    with pytest.raises(ChunkFailed, match="refusing id 2000"):
        env.copy(spec, copy_id="ctid-resume")
    assert any(c["finished_at"] is not None for c in env.ledger("ctid-resume"))
    # Rows of the first, finished chunk grow, so their new versions go to the table's last pages.
    env.sql("src", "UPDATE t SET note = note || repeat('u', 200) WHERE n <= 10")
    env.sql("dst", "DROP TRIGGER refuse ON t")


def test_keyless_append_refuses_to_resume_rather_than_double_moved_rows(env: CopyEnv) -> None:
    # Page ranges read from a new snapshot would copy a moved row twice: refuse, loudly.
    spec = CopySpec("t", chunk_size=300, parallelism=1)
    _fail_a_keyless_copy_then_update_the_source(env, spec)
    before = env.count("dst")

    with pytest.raises(CopyError, match="cannot resume exactly once"):
        env.copy(spec, copy_id="ctid-resume")

    assert env.count("dst") == before


def test_keyless_replace_resume_starts_over_and_ends_exactly_once(env: CopyEnv) -> None:
    spec = CopySpec("t", chunk_size=300, parallelism=1, mode="replace")
    _fail_a_keyless_copy_then_update_the_source(env, spec)

    summary = env.copy(spec, copy_id="ctid-resume")

    assert summary["chunks_skipped"] == 0
    assert env.count("dst") == 3000
    assert env.sorted_rows("src") == env.sorted_rows("dst")


#: The target, while it loads the row with id 250, ends the source backend (by pid) that holds the
#: copy's snapshot, and waits until it is gone: the chunks after that one must read a new snapshot.
_END_HOLDER_AT_250 = """
CREATE FUNCTION end_holder() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.id = 250 THEN PERFORM pg_terminate_backend({pid}, 10000); END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER end_holder BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION end_holder();
"""


def _export_snapshot(env: CopyEnv) -> tuple[Any, str]:
    """A source connection holding an exported snapshot, and the snapshot's id."""
    holder = psycopg2.connect(env.server.dsn(env.db["src"]))
    with holder.cursor() as cur:
        cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        cur.execute("SELECT pg_export_snapshot()")
        return holder, cur.fetchone()[0]


def test_each_chunk_records_the_instant_of_the_snapshot_it_read(env: CopyEnv) -> None:
    env.note_table(500)
    first, first_id = _export_snapshot(env)
    holders, instants = [first], {first_id: 1}

    def replace(lost: str) -> str:
        holder, snapshot = _export_snapshot(env)
        holders.append(holder)
        instants[snapshot] = len(instants) + 1
        return snapshot

    env.sql("dst", _END_HOLDER_AT_250.format(pid=first.info.backend_pid))
    spec = CopySpec("t", chunk_size=100, parallelism=1)
    try:
        with env.pools() as (src, dst):
            summary = TableCopy(
                src,
                dst,
                spec,
                copy_id="instants",
                snapshot=first_id,
                replace_snapshot=replace,
                read_instant=instants.get,
            ).run()
    finally:
        for holder in holders:
            holder.close()
    assert summary.snapshots == 2
    chunks = env.assert_ledger_complete("instants", 500)
    # The chunk that ended the first snapshot's holder had read it already; those after read the new one.
    assert [(int_bounds(c), c["read_instant"]) for c in chunks] == [
        (int_bounds(c), 1 if int_bounds(c)[0] < 250 else 2) for c in chunks
    ]
    assert {c["read_instant"] for c in chunks} == {1, 2}
    assert_same(env)


def test_a_ledger_made_by_an_earlier_version_is_given_the_read_instant_column(env: CopyEnv) -> None:
    env.note_table(300)
    env.sql("dst", sql.SQL(EARLIER_LEDGER_DDL).format(sql.Identifier("public", CHUNK_LEDGER_TABLE)))
    with env.pools() as (src, dst):
        TableCopy(src, dst, CopySpec("t", chunk_size=100), copy_id="old", read_instant=lambda _: 7).run()
    assert [c["read_instant"] for c in env.assert_ledger_complete("old", 300)] == [7, 7, 7]
    assert_same(env)


# -- 6. checksum verification -------------------------------------------------------------------

CORRUPT_ONE = """
CREATE FUNCTION corrupt() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.id = 250 THEN NEW.note := upper(NEW.note); END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER corrupt BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION corrupt();
"""


@pytest.mark.parametrize(
    ("extra", "how"), [("", "record"), (", m mood DEFAULT 'ok'", "text")], ids=["record-hash", "text-hash"]
)
def test_checksum_catches_a_trigger_that_changes_values(env: CopyEnv, extra: str, how: str) -> None:
    env.both(MOOD)
    env.both(f"CREATE TABLE t (id int PRIMARY KEY, note text{extra})")
    env.sql("src", "INSERT INTO t (id, note) SELECT g, 'note ' || g FROM generate_series(1, 500) g")
    env.sql("dst", CORRUPT_ONE)

    with pytest.raises(ChunkMismatch, match="checksum mismatch") as caught:
        env.copy(CopySpec("t", chunk_size=100, parallelism=1), copy_id="strict")

    assert "chunk 3" in str(caught.value)  # chunks are numbered from 1 in messages and logs
    assert isinstance(caught.value, CopyError)
    # Chunks 0 and 1 committed; nothing of chunk 2 (ids 201-300) is in the target.
    assert env.rows("dst", "SELECT min(id), max(id), count(*) FROM t") == [(1, 200, 200)]
    assert [c["finished_at"] is not None for c in env.ledger("strict")] == [True, True, False, False, False]

    env.sql("dst", "TRUNCATE t")
    summary = env.copy(CopySpec("t", chunk_size=100, parallelism=1, verify_checksums=False), copy_id="lax")

    assert summary["verification"]["checksums"] == "off"
    assert summary["format"] == ("binary" if how == "record" else "text")
    assert summary["verification"]["counts"] == "match"
    assert summary["rows"] == 500
    assert env.one("dst", "SELECT note FROM t WHERE id = 250") == "NOTE 250"  # counts only: not caught
    assert env.one("dst", "SELECT count(*) FROM t WHERE note <> 'note ' || id") == 1
    env.assert_ledger_complete("lax", 500)
    assert all(c["checksum"] is None for c in env.ledger("lax"))


def test_count_check_catches_a_trigger_that_drops_rows(env: CopyEnv) -> None:
    simple(env, 300)
    env.sql(
        "dst",
        """
        CREATE FUNCTION skip() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN IF NEW.id = 150 THEN RETURN NULL; END IF; RETURN NEW; END $$;
        CREATE TRIGGER skip BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION skip();
    """,
    )

    with pytest.raises(ChunkMismatch, match="source sent 100 rows but the target loaded 99"):
        env.copy(CopySpec("t", chunk_size=100, parallelism=1, verify_checksums=False))

    assert env.rows("dst", "SELECT min(id), max(id), count(*) FROM t") == [(1, 100, 100)]


def test_text_copy_without_checksums_is_independent_of_session_settings(env: CopyEnv) -> None:
    env.both(MOOD)
    env.both("CREATE TABLE t (id int PRIMARY KEY, m mood, iv interval, f float8)")
    env.sql(
        "src",
        "INSERT INTO t VALUES (1, 'ok', '-1 day -02:03:04', pi()), "
        "(2, 'sad', '1 day 02:00:00', 0.1::float8 + 0.2::float8)",
    )
    src = env.db["src"]
    env.sql("src", f"ALTER DATABASE \"{src}\" SET IntervalStyle = 'sql_standard'")
    env.sql("src", f'ALTER DATABASE "{src}" SET extra_float_digits = 0')

    summary = env.copy(CopySpec("t", chunk_size=100, verify_checksums=False))

    assert summary["format"] == "text"
    assert env.rows("dst", "SELECT * FROM t ORDER BY id") == env.rows("src", "SELECT * FROM t ORDER BY id")


# -- 7. parallelism -----------------------------------------------------------------------------


def test_parallelism_levels_give_identical_targets(env: CopyEnv) -> None:
    env.sql("src", SIMPLE)
    env.sql("src", SIMPLE_ROWS, (3000,))
    for p in (1, 2, 4):
        env.sql("dst", SIMPLE.replace("TABLE t ", f"TABLE t{p} "))

    summaries = {
        p: env.copy(CopySpec("t", target_table=f"t{p}", chunk_size=150, parallelism=p), copy_id=f"par-{p}")
        for p in (1, 2, 4)
    }

    source = env.digest("src", order="id")
    for p, summary in summaries.items():
        assert summary["rows"] == 3000 and summary["chunks"] == 20
        assert env.digest("dst", f"t{p}", "id") == source
        env.assert_ledger_complete(f"par-{p}", 3000)


def test_copying_a_table_onto_itself_is_refused(env: CopyEnv) -> None:
    simple(env, 300)
    dsn = env.server.dsn(env.db["src"])
    pool = ConnectionPool(lambda: psycopg2.connect(dsn, options="-c lock_timeout=2000"), name="self", timeout=10)
    try:
        with pytest.raises((ValueError, CopyError), match="same"):
            TableCopy(pool, pool, CopySpec("t", mode="replace", chunk_size=100), copy_id="self").run()
    finally:
        pool.close()
        assert env.count("src") == 300


def test_same_database_same_pool_runs_the_workers_its_max_size_allows(env: CopyEnv, caplog) -> None:
    env.sql("src", SIMPLE)
    env.sql("src", SIMPLE_ROWS, (4000,))
    env.sql("src", SIMPLE.replace("TABLE t ", "TABLE t_copy "))
    pool = env.pool("src", max_size=5, timeout=20)
    outcome: dict = {}

    def run() -> None:
        try:
            copy = TableCopy(
                pool, pool, CopySpec("t", target_table="t_copy", chunk_size=200, parallelism=4), copy_id="same-db"
            )
            outcome["summary"] = copy.run()
        except BaseException as exc:  # noqa: BLE001 - reported below
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    try:
        with caplog.at_level("WARNING"):
            thread.start()
            thread.join(60)
        assert not thread.is_alive(), "the copy did not finish in 60 s: deadlock?"
        assert "error" not in outcome, outcome.get("error")
        summary = outcome["summary"]
        assert summary.rows == 4000 and summary.workers == 2  # 2 x 2 + 1 = 5 connections
        stats = pool.stats()
        assert stats["max_size"] == 5 and stats["peak_in_use"] <= 5  # a hard cap: never grown
        assert stats["timeouts"] == 0 and stats["waits"] == 0
        assert "2 worker(s) instead of 4" in caplog.text and "max_size=5" in caplog.text
        assert env.digest("src", "t", "id") == env.digest("src", "t_copy", "id")
        env.assert_ledger_complete("same-db", 4000, side="src")
    finally:
        if not thread.is_alive():
            pool.close()
