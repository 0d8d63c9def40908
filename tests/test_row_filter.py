"""The row filter is one boolean expression: it cannot close the parentheses around it, end the
statement or hide text in comments, and PostgreSQL checks it before anything is written. A ';'
or a parenthesis inside a string literal is just data."""

from __future__ import annotations

import re
from pathlib import Path

import psycopg2
import pytest
from psycopg2 import sql

from airflow_pool_provider.copy import CopySpec
from airflow_pool_provider.copy.row_filter import RowFilter
from airflow_pool_provider.errors import FilterError

DAGS = Path(__file__).parent.parent / "dags"


@pytest.mark.parametrize(
    ("where", "problem"),
    [
        ("1=1) OR (1=1", "closes more parentheses than were opened"),
        ("id > 0) OR (true", "closes more parentheses than were opened"),
        ("(id > 0", "a '(' is never closed"),
        ("id > 0; DELETE FROM t", "';' outside a string ends the statement"),
        ("id > 0 -- and the rest", "comments are not allowed"),
        ("id > 0 /* ) OR (1=1 */", "comments are not allowed"),
        ("note = 'unterminated", "cannot read it"),
        # sqlparse reads \' as an escaped quote; PostgreSQL (standard strings) ends the string there.
        (r"note = '\' ) OR ( '\' = note", "backslash in a string"),
        ('"we\\" ) OR (1=1 OR "x" = 1', "backslash or back-quote in a quoted name"),
        # Where sqlparse and PostgreSQL read a character differently (found in review):
        ("(SELECT true AS \u00b4)) OR ((SELECT true AS \u00b4)", "beyond ASCII"),  # an identifier letter to PG
        ("(SELECT 1 AS \u00a0$a$) = 1) OR (true) OR ((SELECT 1 AS \u00a0$a$) = 1", "beyond ASCII"),  # NBSP
        ("id > 0 +/* ( */ 0) OR (true OR id > 0 +/* ) */ 0", "comments are not allowed"),  # '+/' then '*'
        ("id > 0 +-- (\n 0) OR (true OR id > 0 +-- )\n 0", "comments are not allowed"),
        ("`id` = 1", "back-quotes"),
        ("x" * 4001, "at most 4000"),
    ],
)
def test_a_filter_that_is_not_one_expression_is_refused_when_the_spec_is_made(where, problem):
    with pytest.raises(FilterError, match=re.escape(problem)) as caught:
        CopySpec("t", where=where)
    if len(where) < 100:
        assert repr(where) in str(caught.value)  # the message quotes the filter
    assert isinstance(caught.value, ValueError)  # so the operator refuses it when the DAG is parsed


@pytest.mark.parametrize(
    "where",
    [
        "note <> 'a;b'",
        "note LIKE '%;%' OR note = ')'",
        "note = $$a;b)$$",
        r"note = E'it\'s'",
        "id IN (SELECT id FROM t WHERE id % 2 = 0)",
        "coalesce(note, '') <> '(' AND id BETWEEN 1 AND 1000",
        '"id" >= 10',
    ],
)
def test_semicolons_and_parentheses_inside_literals_are_accepted(where):
    assert RowFilter.parse(where).text == where


@pytest.mark.parametrize("escape", ["1=1) OR (1=1", "id > 5) OR (id > 0", "id = 1) OR NOT (id = 1"])
def test_the_source_refuses_a_filter_that_reaches_outside_its_parentheses(env, make_reader, escape):
    # Whatever a tokenizer makes of the text, the plan of "false AND (filter)" is a constant
    # false only if the filter stays inside its parentheses.
    env.both("CREATE TABLE t (id int PRIMARY KEY)")
    conn = psycopg2.connect(env.server.dsn(env.db["src"], user=make_reader(env.db["src"])))
    try:
        with conn.cursor() as cur:
            with pytest.raises(FilterError, match="reaches outside its parentheses"):
                RowFilter(escape).check(cur, sql.Identifier("t"))  # past the tokenizer, to the server
            RowFilter("id > 5 OR id < 2").check(cur, sql.Identifier("t"))  # an OR inside is fine
    finally:
        conn.close()


def test_a_filter_is_refused_when_the_source_role_is_a_superuser(env):
    # Before: the filter read a file of the source server (and could end other sessions).
    env.note_table(100)
    with pytest.raises(FilterError) as refused:
        env.copy(CopySpec("t", where="id > 0 AND pg_read_file('PG_VERSION') <> ''"), copy_id="su")
    message = str(refused.value)
    assert f'the source connection\'s role "{env.server.user}" is (or may become) a superuser' in message
    assert "SQL written by whoever triggers the copy, and it runs with that role's powers" in message
    assert "Use a source connection whose role has none of them" in message
    assert env.count("dst") == 0 and env.ledger("su") == []


def test_a_filter_composed_by_the_dag_is_allowed_whatever_the_source_role_may_do(env):
    env.note_table(100)
    env.copy(CopySpec("t", where="id > 50", where_from_dag=True), copy_id="dag")  # as the superuser
    assert env.count("dst") == 50


@pytest.mark.parametrize(
    ("power", "said"),
    [
        ("pg_read_server_files", "read any file of the server"),
        ("pg_signal_backend", "end other sessions"),
        ("pg_execute_server_program", "run programs on the server"),
    ],
)
def test_a_filter_is_refused_when_the_source_role_may_do_more_than_read(env, make_reader, pg_server, power, said):
    env.note_table(100)
    reader = make_reader(env.db["src"])
    pg_server.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(power), sql.Identifier(reader)))
    with pytest.raises(FilterError, match=f'role "{reader}" is a member of {power}: a filter could {said}'):
        env.copy(CopySpec("t", where="id > 0"), source_user=reader)
    assert env.count("dst") == 0


def test_a_filter_check_that_times_out_is_not_called_a_mistake(env, make_reader):
    env.both("CREATE TABLE t (id int PRIMARY KEY, v text)")
    # Canceled while the check plans it (an immutable function is run then), as a timeout or a
    # DBA's pg_cancel_backend would: the copy's sessions turn statement_timeout off themselves.
    env.sql(
        "src",
        "CREATE FUNCTION canceled() RETURNS boolean IMMUTABLE LANGUAGE plpgsql AS $$ BEGIN "
        "RAISE EXCEPTION 'canceling statement due to statement timeout' USING ERRCODE = 'query_canceled'; END $$",
    )
    with pytest.raises(psycopg2.errors.QueryCanceled):  # a fault (retried), not a FilterError (not retried)
        env.copy(CopySpec("t", where="canceled()"), source_user=make_reader(env.db["src"]))


def test_a_breakout_on_a_keyless_table_is_refused_and_nothing_is_copied(env):
    # Before: every ctid chunk selected the whole table, and the copy reported success with the
    # rows 25 times over.
    env.both("CREATE TABLE t (n int, note text)")
    env.sql("src", "INSERT INTO t SELECT g, 'n' FROM generate_series(1, 5000) g")
    with pytest.raises(FilterError, match="closes more parentheses"):
        env.copy(CopySpec("t", where="1=1) OR (1=1", chunk_size=200))
    assert env.count("dst") == 0


def test_a_filter_with_a_semicolon_in_a_literal_copies_exactly_the_matching_rows(env, make_reader):
    env.both("CREATE TABLE t (id int PRIMARY KEY, note text)")
    env.sql(
        "src", "INSERT INTO t SELECT g, CASE WHEN g % 3 = 0 THEN 'a;b' ELSE 'c)d' END FROM generate_series(1, 900) g"
    )
    spec = CopySpec("t", where="note <> 'a;b' AND note = 'c)d'", chunk_size=100)
    summary = env.copy(spec, source_user=make_reader(env.db["src"]))
    assert summary["rows"] == 600
    assert env.rows("dst", "SELECT count(*), count(*) FILTER (WHERE note = 'a;b') FROM t") == [(600, 0)]


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ("id + 1", "argument of AND must be type boolean"),
        ("no_such_column = 1", 'column "no_such_column" does not exist'),
        ("id = 'abc'", "invalid input syntax for type integer"),
        ("id > 0 OR DROP TABLE t", "syntax error"),
    ],
)
def test_the_source_checks_the_filter_before_anything_is_written(env, make_reader, where, message):
    env.note_table(100, note="'n'")
    env.sql("dst", "INSERT INTO t VALUES (1000, 'keep')")
    reader = make_reader(env.db["src"])
    with pytest.raises(FilterError, match=re.escape(message)) as caught:
        env.copy(CopySpec("t", where=where, mode="replace", chunk_size=10), copy_id="checked", source_user=reader)
    assert repr(where) in str(caught.value)
    assert env.rows("dst", "SELECT * FROM t") == [(1000, "keep")]  # not truncated
    assert env.ledger("checked") == []


def test_the_example_dags_form_restricts_the_filter():
    from airflow.dag_processing.dagbag import DagBag
    from airflow.sdk.exceptions import ParamValidationError

    bag = DagBag(dag_folder=str(DAGS))
    assert bag.import_errors == {}
    dag = next(d for d in bag.dags.values() if "where" in d.params)
    param = dag.params.get_param("where")
    assert param.schema.get("maxLength") and param.schema.get("pattern")
    assert "source connection's rights" in param.description
    for bad in ("id > 0; DROP TABLE t", "id > 0 -- comment", "id > 0 /* c */", "x" * 1000):
        with pytest.raises(ParamValidationError):
            param.resolve(bad)
    assert param.resolve("created_at >= '2024-06-01'") == "created_at >= '2024-06-01'"
