"""The chunked COPY engine's inputs: spec validation, catalog mismatches refused before anything is
written, column subsets, table name parsing and hostile identifiers against a real PostgreSQL.
"""

from __future__ import annotations

import re
from typing import Any

import psycopg2
import pytest
from copy_helpers import CopyEnv
from psycopg2 import sql

from airflow_pool_provider.copy import CopySpec
from airflow_pool_provider.copy.catalog import CatalogError
from airflow_pool_provider.copy.names import TableName
from airflow_pool_provider.errors import FilterError

# -- spec validation: bad values fail at construction ------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"chunk_size": 0}, "chunk_size must be a positive integer (at most 10,000,000), got 0"),
        ({"chunk_size": -1}, "chunk_size must be a positive integer (at most 10,000,000), got -1"),
        ({"chunk_size": "abc"}, "chunk_size must be a positive integer (at most 10,000,000), got 'abc'"),
        ({"chunk_size": 10**30}, "chunk_size must be a positive integer (at most 10,000,000)"),
        ({"chunk_size": "100"}, "chunk_size must be a positive integer"),
        ({"chunk_size": 1.5}, "chunk_size must be a positive integer"),
        ({"chunk_size": True}, "chunk_size must be a positive integer"),
        ({"parallelism": 0}, "parallelism must be a positive integer (at most 32), got 0"),
        ({"parallelism": 1000}, "parallelism must be a positive integer (at most 32), got 1000"),
        ({"parallelism": -3}, "parallelism must be a positive integer"),
        ({"max_chunk_retries": -1}, "max_chunk_retries must be 0 or more"),
        ({"mode": "merge"}, "mode must be one of append, replace, upsert, got 'merge'"),
        ({"mode": "APPEND"}, "mode must be one of"),
        ({"where": "id > 0; DROP TABLE victim"}, "';' outside a string ends the statement"),
        ({"where": "id > 0;"}, "';' outside a string"),
        ({"columns": []}, "columns must be a non-empty list of column names"),
        ({"columns": "id"}, "columns must be a non-empty list"),
        ({"columns": ["id", ""]}, "columns must be a non-empty list"),
        ({"columns": ["id", "id"]}, "columns lists a column twice"),
        ({"key": []}, "key must be a non-empty list"),
        ({"conflict_columns": ["id"]}, "conflict_columns only applies to mode='upsert'"),
        ({"mode": "upsert", "conflict_columns": []}, "conflict_columns must be a non-empty list"),
        ({"source_table": ""}, "a table name is required"),
        ({"source_table": '"unterminated'}, "cannot read table name"),
        ({"target_table": "a.b.c"}, "cannot read table name"),
    ],
    ids=lambda v: repr(v) if isinstance(v, dict) else None,
)
def test_bad_spec_raises_value_error_at_construction(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        CopySpec(**{"source_table": "t", **kwargs})


def test_spec_defaults() -> None:
    spec = CopySpec("Some_Schema.t")
    assert (spec.chunk_size, spec.parallelism, spec.mode, spec.verify_checksums) == (50_000, 2, "append", True)
    assert spec.source_name == spec.target_name == TableName("Some_Schema", "t")
    assert CopySpec("a", target_table='"B"').target_name == TableName(None, "B")


# -- catalog mismatches: refused before anything is written -------------------------------------

CASES: dict[str, dict[str, Any]] = {
    "missing source table": dict(
        src="CREATE TABLE other (id int)",
        dst="CREATE TABLE t (id int PRIMARY KEY, note text)",
        spec={},
        messages=['source table "t" does not exist in the search_path'],
    ),
    "missing source table in schema": dict(
        src="CREATE SCHEMA s",
        dst="CREATE TABLE t (id int PRIMARY KEY, note text)",
        spec={"source_table": "s.t", "target_table": "t"},
        messages=['source table "s"."t" does not exist in schema \'s\''],
    ),
    "missing target table": dict(
        src="CREATE TABLE t (id int PRIMARY KEY, note text)",
        dst="CREATE TABLE other (id int)",
        spec={},
        messages=['target table "t" does not exist'],
    ),
    "column missing in target": dict(
        src="CREATE TABLE t (id int PRIMARY KEY, note text, extra int)",
        dst="CREATE TABLE t (id int PRIMARY KEY, note text)",
        spec={},
        messages=['column \'extra\' is not in target table "public"."t"'],
    ),
    "column missing in both": dict(
        src="CREATE TABLE t (id int PRIMARY KEY, note text)",
        dst="CREATE TABLE t (id int PRIMARY KEY, note text)",
        spec={"columns": ["id", "nope"]},
        messages=["column 'nope' is not in source table", "column 'nope' is not in target table"],
    ),
    "one type mismatch": dict(
        src="CREATE TABLE t (id int PRIMARY KEY, note text)",
        dst="CREATE TABLE t (id bigint PRIMARY KEY, note text)",
        spec={},
        messages=["column 'id' is integer in the source but bigint in the target"],
        absent=["'note'"],
    ),
    "two type mismatches": dict(
        src="CREATE TABLE t (id int PRIMARY KEY, a int, b text, c numeric(10, 2))",
        dst="CREATE TABLE t (id int PRIMARY KEY, a bigint, b varchar(20), c numeric(10, 2))",
        spec={},
        messages=[
            "column 'a' is integer in the source but bigint in the target",
            "column 'b' is text in the source but character varying(20) in the target",
        ],
        absent=["'c'", "'id'"],
    ),
    "numeric precision mismatch": dict(
        src="CREATE TABLE t (id int PRIMARY KEY, n numeric(20, 6))",
        dst="CREATE TABLE t (id int PRIMARY KEY, n numeric(12, 2))",
        spec={},
        messages=["column 'n' is numeric(20,6) in the source but numeric(12,2) in the target"],
    ),
    "target NOT NULL column not copied": dict(
        src="CREATE TABLE t (id int PRIMARY KEY, note text)",
        dst="CREATE TABLE t (id int PRIMARY KEY, note text, required int NOT NULL)",
        spec={},
        messages=["target column 'required' is NOT NULL, has no default and is not copied"],
        fill="INSERT INTO t VALUES (1000, 'keep', 1)",
    ),
    "generated column named in columns": dict(
        src="CREATE TABLE t (id int PRIMARY KEY, note text, len int GENERATED ALWAYS AS (length(note)) STORED)",
        dst="CREATE TABLE t (id int PRIMARY KEY, note text, len int GENERATED ALWAYS AS (length(note)) STORED)",
        spec={"columns": ["id", "note", "len"]},
        messages=["column 'len' is generated in the source", "column 'len' is generated in the target"],
    ),
    "upsert without a target key": dict(
        src="CREATE TABLE t (id int PRIMARY KEY, note text)",
        dst="CREATE TABLE t (id int, note text)",
        spec={"mode": "upsert"},
        messages=["mode='upsert' needs a key", "has no primary key", "conflict_columns"],
    ),
    "conflict_columns not a unique index": dict(
        src="CREATE TABLE t (id int PRIMARY KEY, code text, note text)",
        dst="CREATE TABLE t (id int PRIMARY KEY, code text, note text); CREATE INDEX t_code ON t (code)",
        spec={"mode": "upsert", "conflict_columns": ["code"]},
        messages=["conflict_columns ['code'] are not a unique index", "unique keys: [['id']]"],
    ),
    "conflict_columns not copied": dict(
        src="CREATE TABLE t (id int PRIMARY KEY, code text, note text)",
        dst="CREATE TABLE t (id int PRIMARY KEY, code text NOT NULL DEFAULT 'c' UNIQUE, note text)",
        spec={"mode": "upsert", "conflict_columns": ["code"], "columns": ["id", "note"]},
        messages=["conflict_columns ['code'] must be copied"],
    ),
    "key not a unique index": dict(
        src="CREATE TABLE t (id int PRIMARY KEY, note text)",
        dst="CREATE TABLE t (id int PRIMARY KEY, note text)",
        spec={"key": ["note"]},
        messages=['key [\'note\'] of "public"."t" is not a unique btree index', "usable keys: [['id']]"],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_catalog_mismatch_is_refused_and_nothing_is_written(env: CopyEnv, case: str) -> None:
    setup = CASES[case]
    env.sql("src", setup["src"])
    env.sql("dst", setup["dst"])
    if env.one("src", "SELECT to_regclass('t')") is not None:
        env.sql("src", "INSERT INTO t (id) SELECT generate_series(1, 50)")
    target_exists = env.one("dst", "SELECT to_regclass('t')") is not None
    if target_exists:
        env.sql("dst", setup.get("fill", "INSERT INTO t (id) VALUES (1000)"))
        before = env.digest("dst")

    with pytest.raises(CatalogError) as caught:
        env.copy(CopySpec(**{"source_table": "t", "chunk_size": 10, **setup["spec"]}), copy_id="bad")

    message = str(caught.value)
    for expected in setup["messages"]:
        assert expected in message
    for unexpected in setup.get("absent", []):
        assert unexpected not in message
    assert isinstance(caught.value, ValueError)
    assert env.ledger("bad") == []
    if target_exists:
        assert env.digest("dst") == before
    else:
        assert env.one("dst", "SELECT to_regclass('t')") is None


def test_where_naming_a_missing_column_fails_before_writing(env: CopyEnv, make_reader) -> None:
    env.both("CREATE TABLE t (id int PRIMARY KEY, note text)")
    env.sql("src", "INSERT INTO t SELECT g, 'n' FROM generate_series(1, 100) g")
    env.sql("dst", "INSERT INTO t VALUES (1000, 'keep')")

    with pytest.raises(FilterError, match='does not work on the source table: column "no_such_column"') as caught:
        spec = CopySpec("t", where="no_such_column > 0", chunk_size=10, mode="replace")
        env.copy(spec, copy_id="bad", source_user=make_reader(env.db["src"]))
    assert "'no_such_column > 0'" in str(caught.value)  # the message quotes the filter

    assert env.ledger("bad") == []
    assert env.rows("dst", "SELECT * FROM t") == [(1000, "keep")]  # not truncated


# -- column subsets -----------------------------------------------------------------------------


def test_column_subset_leaves_target_defaults(env: CopyEnv) -> None:
    env.sql("src", "CREATE TABLE t (id int PRIMARY KEY, note text, secret text)")
    env.sql("src", "INSERT INTO t SELECT g, 'note ' || g, 'secret' FROM generate_series(1, 500) g")
    env.sql(
        "dst", "CREATE TABLE t (id int PRIMARY KEY, note text, loaded_at timestamptz NOT NULL DEFAULT now(), tag text)"
    )

    summary = env.copy(CopySpec("t", columns=["note", "id"], chunk_size=60))

    assert summary["rows"] == 500
    copied = "SELECT id, note FROM t ORDER BY id"
    assert env.rows("dst", copied) == env.rows("src", copied)
    assert env.one("dst", "SELECT count(*) FROM t WHERE loaded_at IS NOT NULL AND tag IS NULL") == 500
    env.assert_ledger_complete("copy-1", 500)


def test_target_columns_in_another_order_with_a_dropped_column(env: CopyEnv) -> None:
    env.sql("src", "CREATE TABLE t (id int PRIMARY KEY, gone text, a text, b numeric, c jsonb)")
    env.sql("src", "ALTER TABLE t DROP COLUMN gone")
    env.sql(
        "src", "INSERT INTO t SELECT g, 'a' || g, g / 3.0, jsonb_build_object('g', g) FROM generate_series(1, 400) g"
    )
    env.sql("dst", "CREATE TABLE t (c jsonb, extra int, b numeric, a text, id int PRIMARY KEY)")
    env.sql("dst", "ALTER TABLE t DROP COLUMN extra")

    summary = env.copy(CopySpec("t", chunk_size=50, parallelism=2))

    assert summary["rows"] == 400
    assert summary["format"] == "binary"
    same = "SELECT id, a, b, c FROM t ORDER BY id"
    assert env.rows("dst", same) == env.rows("src", same)
    env.assert_ledger_complete("copy-1", 400)


def test_column_subset_without_the_source_key(env: CopyEnv) -> None:
    env.sql("src", "CREATE TABLE t (id int PRIMARY KEY, note text)")
    env.sql("src", "INSERT INTO t SELECT g, 'note ' || g FROM generate_series(1000, 1999) g")
    env.sql("dst", "CREATE TABLE t (id serial PRIMARY KEY, note text)")

    summary = env.copy(CopySpec("t", columns=["note"], chunk_size=100, parallelism=1))

    assert summary["rows"] == 1000
    assert env.rows("dst", "SELECT note FROM t ORDER BY note") == env.rows("src", "SELECT note FROM t ORDER BY note")


# -- table names --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "schema", "name"),
    [
        ("table", None, "table"),
        ("schema.table", "schema", "table"),
        ('"S"."T"', "S", "T"),
        ('"a.b"', None, "a.b"),
        ('"x"."y.z"', "x", "y.z"),
        ("  spaced . name  ", "spaced", "name"),
        ("Mixed.Case", "Mixed", "Case"),
        ('public."Quoted Table"', "public", "Quoted Table"),
        ('"Odd ""Schema"""."T"', 'Odd "Schema"', "T"),
        ('""""', None, '"'),
        ('"semi;colon -- x"', None, "semi;colon -- x"),
        ("ünï.😀", "ünï", "😀"),
    ],
)
def test_table_name_parse(text: str, schema: str | None, name: str) -> None:
    parsed = TableName.parse(text)
    assert (parsed.schema, parsed.name) == (schema, name)
    assert TableName.parse(str(parsed)) == parsed  # str() gives a quoted name that parses back


@pytest.mark.parametrize(
    "text", ['"unterminated', 'a."b', '"a"b', "a.b.c", "", "   ", '"', '"".t', ".t", "t.", None, 5]
)
def test_table_name_parse_rejects(text: Any) -> None:
    with pytest.raises(ValueError, match="cannot read table name|a table name is required"):
        TableName.parse(text)


def test_bare_schema_name_is_case_folded(env: CopyEnv) -> None:
    env.both("CREATE TABLE t (id int PRIMARY KEY)")
    env.sql("src", "INSERT INTO t SELECT generate_series(1, 10)")

    summary = env.copy(CopySpec("PUBLIC.t", chunk_size=5))

    assert summary["rows"] == 10


def test_quoted_mixed_case_name_is_not_folded(env: CopyEnv) -> None:
    env.both("CREATE TABLE t (id int PRIMARY KEY)")
    env.sql("src", "INSERT INTO t SELECT generate_series(1, 10)")

    with pytest.raises(CatalogError, match="does not exist"):
        env.copy(CopySpec('"T"', target_table="t", chunk_size=5))


def test_bare_mixed_case_name_finds_exact_then_folded(env: CopyEnv) -> None:
    env.both('CREATE TABLE "Items" (id int PRIMARY KEY, v text)')
    env.both("CREATE TABLE items (id int PRIMARY KEY, v text)")
    env.sql("src", "INSERT INTO \"Items\" SELECT g, 'upper' FROM generate_series(1, 20) g")
    env.sql("src", "INSERT INTO items SELECT g, 'lower' FROM generate_series(1, 30) g")

    exact = env.copy(CopySpec("Items", chunk_size=7), copy_id="exact")
    folded = env.copy(CopySpec("ITEMS", chunk_size=7), copy_id="folded")

    assert (exact["source"], exact["rows"]) == ('"public"."Items"', 20)
    assert (folded["source"], folded["rows"]) == ('"public"."items"', 30)
    assert env.rows("dst", 'SELECT DISTINCT v FROM "Items"') == [("upper",)]
    assert env.rows("dst", "SELECT DISTINCT v FROM items") == [("lower",)]


# -- hostile identifiers ------------------------------------------------------------------------

ODD_SCHEMA = 'Odd "Schema"'
ODD_TABLE = 'Wëird "Table"; DROP TABLE victim; --'
ODD_COLUMNS = ["select", '"quoted"', "Mixed Case", "ünï"]
ODD_SPEC_NAME = '"Odd ""Schema"""."Wëird ""Table""; DROP TABLE victim; --"'
VICTIM = "CREATE TABLE victim (id int); INSERT INTO victim VALUES (1)"


def victims_alive(env: CopyEnv) -> bool:
    return all(env.rows(side, "SELECT id FROM victim") == [(1,)] for side in ("src", "dst"))


def create_odd_table(env: CopyEnv) -> sql.Composed:
    schema, table = sql.Identifier(ODD_SCHEMA), sql.Identifier(ODD_SCHEMA, ODD_TABLE)
    sel, quoted, mixed, uni = (sql.Identifier(c) for c in ODD_COLUMNS)
    env.both(VICTIM)
    env.both(sql.SQL("CREATE SCHEMA {}").format(schema))
    env.both(
        sql.SQL("CREATE TYPE {}.{} AS ENUM ('a', 'b; DROP TABLE victim')").format(schema, sql.Identifier("Odd Enum"))
    )
    env.both(
        sql.SQL(
            "CREATE TABLE {t} ({sel} int, {quoted} text, {mixed} text, {uni} jsonb, "
            "{e} {schema}.{enum}, PRIMARY KEY ({mixed}, {sel}))"
        ).format(
            t=table,
            sel=sel,
            quoted=quoted,
            mixed=mixed,
            uni=uni,
            e=sql.Identifier("ënum"),
            schema=schema,
            enum=sql.Identifier("Odd Enum"),
        )
    )
    env.sql(
        "src",
        sql.SQL(
            "INSERT INTO {t} SELECT g, 'x''); DROP TABLE victim; --' || g, "
            "(ARRAY['Aa', 'aA', 'b', 'B', 'ü', '\"'])[1 + g % 6] || g % 11, "
            "jsonb_build_object('\"k\"', g), (ARRAY['a', 'b; DROP TABLE victim'])[1 + g % 2]::{schema}.{enum} "
            "FROM generate_series(1, 400) g"
        ).format(t=table, schema=schema, enum=sql.Identifier("Odd Enum")),
    )
    return table


@pytest.mark.parametrize("mode", ["append", "replace", "upsert"])
def test_hostile_identifiers_copy_correctly(env: CopyEnv, mode: str) -> None:
    assert TableName.parse(ODD_SPEC_NAME) == TableName(ODD_SCHEMA, ODD_TABLE)
    table = create_odd_table(env)
    if mode != "append":  # rows for replace to remove / upsert to update
        env.sql("dst", sql.SQL("INSERT INTO {} VALUES (1, 'stale', 'aA1', NULL, 'a')").format(table))
    order = sql.SQL("{}, {}").format(sql.Identifier("Mixed Case"), sql.Identifier("select")).as_string(env.conn("src"))
    text = table.as_string(env.conn("src"))

    summary = env.copy(CopySpec(ODD_SPEC_NAME, mode=mode, chunk_size=30, parallelism=3))

    assert summary["source"] == summary["target"] == ODD_SPEC_NAME
    assert summary["key"] == ["Mixed Case", "select"]
    assert summary["format"] == "text"
    assert summary["rows"] == 400
    assert env.digest("src", text, order) == env.digest("dst", text, order)
    assert env.count("dst", text) == 400
    assert victims_alive(env)
    env.assert_ledger_complete("copy-1", 400)


def test_hostile_identifiers_in_a_column_list_and_target_name(env: CopyEnv) -> None:
    table = create_odd_table(env)
    env.sql("dst", sql.SQL("CREATE TABLE {} (LIKE {})").format(sql.Identifier("public", 'T"2; --'), table))
    columns = ["Mixed Case", "select", '"quoted"']

    summary = env.copy(CopySpec(ODD_SPEC_NAME, target_table='"T""2; --"', columns=columns, chunk_size=50))

    assert summary["target"] == '"public"."T""2; --"'
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in columns)
    query = sql.SQL("SELECT {} FROM {} ORDER BY 1, 2")
    assert env.rows("dst", query.format(cols, sql.Identifier('T"2; --'))) == env.rows("src", query.format(cols, table))
    assert victims_alive(env)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"source_table": "t; DROP TABLE victim"}, "does not exist"),
        ({"source_table": "t; DROP TABLE victim; --"}, "does not exist"),
        ({"source_table": "public.t; DROP TABLE victim; --"}, "does not exist"),
        ({"source_table": "t WHERE false; DROP TABLE victim"}, "does not exist"),
        ({"source_table": "t) TO STDOUT; DROP TABLE victim; --"}, "does not exist"),
        ({"source_table": 't"; DROP TABLE victim; --'}, "cannot read table name"),
        ({"source_table": 'public."t"; DROP TABLE victim'}, "cannot read table name"),
        ({"source_table": "t", "target_table": "t; DROP TABLE victim"}, "does not exist"),
        ({"source_table": "t", "columns": ["id", "note); DROP TABLE victim; --"]}, "is not in source table"),
    ],
)
def test_injection_attempts_fail_cleanly(env: CopyEnv, spec: dict[str, Any], message: str) -> None:
    env.both(VICTIM)
    env.both("CREATE TABLE t (id int PRIMARY KEY, note text)")
    env.sql("src", "INSERT INTO t SELECT g, 'n' FROM generate_series(1, 20) g")

    with pytest.raises(ValueError, match=message) as caught:
        env.copy(CopySpec(**spec), copy_id="evil")

    assert not isinstance(caught.value, psycopg2.Error)
    assert victims_alive(env)
    assert env.count("src") == 20
    assert env.count("dst") == 0
    assert env.ledger("evil") == []
