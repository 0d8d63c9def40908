"""A migration never widens access, and runs with roles that have only the privileges it names.

Functions the source keeps from PUBLIC stay kept from it; a SECURITY DEFINER function restored
without its owner is refused unless accepted. The plan names the GRANTs either role lacks; a
privilege refused later fails once, with the same hint.
"""

from __future__ import annotations

import logging
import uuid

import psycopg2
import pytest
from dag_runs import load_dag, run_dag, states, tries
from psycopg2 import sql

from airflow_pool_provider.errors import MigrationMistake, is_mistake
from airflow_pool_provider.migration import definitions
from airflow_pool_provider.testing.data import table_digest


@pytest.fixture
def migrate():
    return load_dag("migrate_tables", "migrate_tables.py")


def _run(conn, statements) -> None:
    with conn.cursor() as cur:
        cur.execute(statements)


def _one(conn, query, params=None):
    with conn.cursor() as cur:
        cur.execute(query, params)
        return cur.fetchone()[0]


SECRET = """
CREATE TABLE t (id int PRIMARY KEY, note text);
INSERT INTO t SELECT g, 'note ' || g FROM generate_series(1, 100) g;
CREATE FUNCTION secret() RETURNS int LANGUAGE sql SECURITY DEFINER AS $$ SELECT count(*)::int FROM t $$;
REVOKE EXECUTE ON FUNCTION secret() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION secret() TO pg_monitor;
CREATE PROCEDURE hidden() LANGUAGE sql AS $$ SELECT 1 $$;
REVOKE EXECUTE ON PROCEDURE hidden() FROM PUBLIC;
CREATE FUNCTION shown() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$;
CREATE TYPE mood AS ENUM ('calm', 'cross');
CREATE FUNCTION "Judge ""it"" now"(m mood, n int) RETURNS boolean LANGUAGE sql AS $$ SELECT m = 'calm' $$;
REVOKE EXECUTE ON FUNCTION "Judge ""it"" now"(mood, int) FROM PUBLIC;
"""


def _public_executes(conn, signature: str) -> bool:
    return _one(conn, "SELECT has_function_privilege('public', %s::regprocedure, 'EXECUTE')", (signature,))


def test_a_security_definer_function_is_refused_unless_accepted_and_arrives_kept_from_public(
    airflow_db, migration_databases, migrate, capsys
):
    src, dst = migration_databases
    _run(src, SECRET)

    run, _ = run_dag(migrate, {}, task_id="plan")
    assert run.state == "failed" and states(run)["plan"] == "failed" and tries(run, "plan") == 1
    output = capsys.readouterr()
    assert 'SECURITY DEFINER function "public"."secret"()' in output.out + output.err
    assert "allow_security_definer" in output.out + output.err
    assert _one(dst, "SELECT to_regprocedure('public.secret()')") is None

    run, plan = run_dag(migrate, {"allow_security_definer": True}, task_id="plan")
    assert run.state == "success" and states(run)["verify"] == "success"
    assert not _public_executes(dst, "public.secret()")  # kept from PUBLIC, as on the source
    assert not _public_executes(dst, "public.hidden()")
    assert _public_executes(dst, "public.shown()")
    assert not _public_executes(dst, 'public."Judge ""it"" now"(public.mood, int)')
    assert any(
        '"public"."secret"() granted to pg_monitor (grants to roles are not migrated' in s for s in plan["left_out"]
    )
    assert any('the owner of SECURITY DEFINER function "public"."secret"()' in s for s in plan["left_out"])

    _run(dst, "GRANT EXECUTE ON FUNCTION secret() TO PUBLIC")  # widened in the target: the verify stage sees it
    with src.cursor() as scur, dst.cursor() as tcur:
        found = [d.describe() for d in definitions.schema_differences(scur, tcur, ("public",))]
    assert found == ["EXECUTE by PUBLIC of function secret() defined otherwise ('granted', not 'revoked')"]


@pytest.fixture
def roles(pg_server, migration_databases):
    """Login roles; what they own or were granted, in both databases, goes before they do."""
    made: list[str] = []

    def make(kind: str) -> str:
        role = f"{kind}_{uuid.uuid4().hex[:8]}"
        pg_server.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        made.append(role)
        return role

    yield make
    for conn in migration_databases:
        # no session of the roles may outlive them (a snapshot holder)
        with conn.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = ANY(%s)", (made,))
        for role in made:
            _run(conn, sql.SQL("REASSIGN OWNED BY {} TO CURRENT_USER").format(sql.Identifier(role)))
            _run(conn, sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
    for role in made:
        pg_server.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


TABLES = """
CREATE TABLE t (id serial PRIMARY KEY, note text);
INSERT INTO t (note) SELECT 'note ' || g FROM generate_series(1, 500) g;
CREATE TABLE other (id int);
CREATE SEQUENCE free;
"""


@pytest.fixture
def least_privileged(migration_databases, roles, make_conn_id):
    """migration_source connects as a role with SELECT on t and its sequence only; migration_target
    as a role that owns the target database (so its public schema), no superuser."""
    src, dst = migration_databases
    _run(src, TABLES)
    reader, owner = roles("reader"), roles("owner")
    _run(src, sql.SQL("GRANT SELECT ON t, t_id_seq TO {}").format(sql.Identifier(reader)))
    _run(src, sql.SQL("ALTER DATABASE {} OWNER TO {}").format(sql.Identifier(dst.info.dbname), sql.Identifier(owner)))
    make_conn_id(src.info.dbname, conn_id="migration_source", user=reader)
    make_conn_id(dst.info.dbname, conn_id="migration_target", user=owner)
    return reader, owner


def test_a_least_privileged_source_is_refused_by_the_plan_naming_the_grants_then_migrates(
    airflow_db, migration_databases, least_privileged, migrate, capsys
):
    src, dst = migration_databases
    reader, owner = least_privileged

    run, _ = run_dag(migrate, {"tables": ["t"]}, task_id="plan")
    assert run.state == "failed" and states(run)["plan"] == "failed" and tries(run, "plan") == 1
    output = capsys.readouterr().out
    grants = [
        f'GRANT SELECT ON TABLE "public"."other" TO "{reader}";',
        f'GRANT SELECT ON SEQUENCE "public"."free" TO "{reader}";',
    ]
    for grant in grants:
        assert grant in output
    assert 'GRANT SELECT ON TABLE "public"."t"' not in output and owner not in output  # what it has is not named

    for grant in grants:  # what the plan said, as an administrator runs it
        _run(src, grant)
    run, report = run_dag(migrate, {"tables": ["t"]}, task_id="verify")
    assert run.state == "success" and report["verified"]
    assert table_digest(dst, "t", "id") == table_digest(src, "t", "id")
    assert _one(dst, "SELECT tableowner FROM pg_tables WHERE tablename = 't'") == owner


def test_a_target_role_without_create_is_named_in_the_plan(
    airflow_db, migration_databases, roles, make_conn_id, migrate, capsys
):
    src, dst = migration_databases
    _run(src, "CREATE SCHEMA sales; CREATE TABLE sales.t (id int PRIMARY KEY)")
    writer = roles("writer")
    make_conn_id(dst.info.dbname, conn_id="migration_target", user=writer)

    run, _ = run_dag(migrate, {"schemas": ["sales"]}, task_id="plan")
    assert run.state == "failed" and tries(run, "plan") == 1
    output = capsys.readouterr().out
    assert f'GRANT CREATE ON DATABASE "{dst.info.dbname}" TO "{writer}";' in output
    assert f'GRANT USAGE, CREATE ON SCHEMA "public" TO "{writer}";' in output  # the ledgers' schema


def test_a_dump_refused_a_privilege_is_a_mistake_naming_the_grants(migration_databases, least_privileged):
    from airflow_pool_provider.migration import stages
    from airflow_pool_provider.migration.request import MigrationRequest
    from airflow_pool_provider.pool import ConnectionPool

    src, dst = migration_databases
    reader, owner = least_privileged
    source_dsn = src.dsn + f" user={reader}"
    request = MigrationRequest(tables=("t",), run_id="run-1").resolved("privileges")
    source_pool = ConnectionPool(lambda: psycopg2.connect(source_dsn), max_size=4)
    target_pool = ConnectionPool(lambda: psycopg2.connect(dst.dsn + f" user={owner}"), max_size=4)
    m = stages.Migration(
        request, source_pool, target_pool, psycopg2.extensions.parse_dsn(source_dsn), logging.getLogger("t"), 60.0
    )
    try:
        m.snapshots.ensure()
        with pytest.raises(Exception) as refused:  # pg_dump: LOCK TABLE other, refused
            stages.pre_data(m)
    finally:
        m.snapshots.release()
        source_pool.close()
        target_pool.close()
    assert is_mistake(refused.value)  # fails once
    assert "permission denied for table other" in str(refused.value)
    assert f'GRANT SELECT ON TABLE "public"."other" TO "{reader}";' in str(refused.value)


def test_a_statement_refused_a_privilege_is_a_mistake_naming_role_and_database(migration_databases, least_privileged):
    from airflow_pool_provider.migration import privileges

    src, _ = migration_databases
    reader, _ = least_privileged
    conn = psycopg2.connect(src.dsn + f" user={reader}")
    try:
        with pytest.raises(Exception) as refused, privileges.explaining_refusals(), conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM other")
    finally:
        conn.close()
    assert is_mistake(refused.value) and isinstance(refused.value, MigrationMistake)
    assert f'the role "{reader}" on database "{src.info.dbname}" was refused a privilege: ' in str(refused.value)
    assert "permission denied for table other" in str(refused.value)
