"""The migrate_tables DAG through Airflow itself (dag.test) against a real source and target:
the plan (and dry run), the source snapshot's holder, the pre-data stage and the refusals."""

from __future__ import annotations

import psycopg2
import pytest
from dag_runs import load_dag, run_dag

from airflow_pool_provider.errors import CopyMistake, ToolMissing
from airflow_pool_provider.migration import catalog, selection
from airflow_pool_provider.migration.tools import find_tools
from airflow_pool_provider.testing.legacy_db import seed

SCALE = 0.01  # about 10,000 rows


@pytest.fixture
def legacy(pg_server, make_database, make_conn_id):
    """A seeded source and an empty target, as the DAG's connections migration_source/target."""
    src_db, dst_db = make_database(prefix="src"), make_database(prefix="dst")
    src, dst = psycopg2.connect(pg_server.dsn(src_db)), psycopg2.connect(pg_server.dsn(dst_db))
    dst.autocommit = True
    seed(src, SCALE)
    make_conn_id(src_db, conn_id="migration_source")
    make_conn_id(dst_db, conn_id="migration_target")
    yield src, dst
    with dst.cursor() as cur:  # no holder may outlive the test
        cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name LIKE "
                    "'pool-provider snapshot %%'")
    src.close()
    dst.close()


@pytest.fixture
def migrate():
    return load_dag("migrate_tables", "migrate_tables.py")


def _one(conn, query, params=None):
    with conn.cursor() as cur:
        cur.execute(query, params)
        return cur.fetchone()[0]


def _states(run) -> dict[str, str]:
    from airflow.models.taskinstance import TaskInstance
    from airflow.settings import Session
    from sqlalchemy import select as sa_select

    with Session() as session:
        rows = session.execute(sa_select(TaskInstance.task_id, TaskInstance.state).where(
            TaskInstance.dag_id == run.dag_id, TaskInstance.run_id == run.run_id)).all()
    return {task: str(state) for task, state in rows}


def test_a_dry_run_plans_and_writes_nothing(airflow_db, legacy, migrate):
    src, dst = legacy
    run, plan = run_dag(migrate, {"dry_run": True}, task_id="plan")
    assert run.state == "success"
    assert [t["name"] for t in plan["tables"]] == [
        '"public"."customers"', '"public"."events"', '"public"."order_items"', '"public"."orders"',
        '"public"."payments"', '"public"."products"']
    payments = next(t for t in plan["tables"] if t["name"].endswith('"payments"'))
    assert payments["partitions"] == 3 and payments["chunks"] >= 3
    orders = next(t for t in plan["tables"] if t["name"].endswith('"orders"'))
    assert orders["estimated_rows"] == 2500 and orders["in_target"] == "no"
    assert set(orders["indexes"]) == {"orders_pkey", "orders_customer", "orders_ordered_at"}
    assert plan["views"] == ['"public"."customer_order_totals"'] and plan["budget"]["fits"]
    assert _states(run)["pre_data"] == "skipped"
    assert _one(dst, "SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace") == 0


def test_pre_data_restores_the_schema_once_through_the_migrations_snapshot(airflow_db, legacy, migrate):
    src, dst = legacy
    run, _ = run_dag(migrate, {}, task_id="plan")
    assert run.state == "success", _states(run)
    assert _one(dst, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tablename <> "
                     "'airflow_pool_provider_migrations'") == 9  # 6 tables and 3 partitions
    assert _one(dst, "SELECT count(*) FROM pg_views WHERE viewname = 'customer_order_totals'") == 1
    assert _one(dst, "SELECT enum_range(NULL::order_status)::text") == "{new,paid,shipped,cancelled}"
    assert _one(dst, "SELECT count(*) FROM pg_constraint WHERE contype = 'c' AND conrelid > 0 AND connamespace = "
                     "'public'::regnamespace") >= 3  # CHECKs came with their tables
    assert _one(dst, "SELECT count(*) FROM pg_constraint WHERE contype IN ('p', 'f') AND connamespace = "
                     "'public'::regnamespace AND conrelid <> 'airflow_pool_provider_migrations'::regclass") == 0
    assert _one(dst, "SELECT to_regclass('invoice_number_seq') IS NOT NULL")
    assert _one(dst, "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE "
                     "'pool-provider snapshot %%'") == 0  # released at the end
    stages = {(r[0], r[1]) for r in _rows(dst, "SELECT stage, object FROM airflow_pool_provider_migrations")}
    assert ("pre_data", "*") in stages and ("snapshot", "*") in stages

    again, plan = run_dag(migrate, {}, task_id="plan")  # the same migration: confirmed, nothing redone
    assert again.state == "success"
    assert {t["in_target"] for t in plan["tables"]} == {"created by this migration"}
    assert "pre_data" in plan["resumed_stages"]


def _rows(conn, query):
    with conn.cursor() as cur:
        cur.execute(query)
        return cur.fetchall()


def test_resume_refuses_a_target_table_it_did_not_create(airflow_db, legacy, migrate, capsys):
    src, dst = legacy
    with dst.cursor() as cur:
        cur.execute("CREATE TABLE orders (id int)")
    run, _ = run_dag(migrate, {"tables": ["orders", "customers"]}, task_id="plan")
    assert run.state == "failed" and _states(run)["plan"] == "failed"
    output = capsys.readouterr()
    assert 'target table "public"."orders" exists and this migration did not create it' in output.out + output.err
    assert _one(dst, "SELECT to_regclass('customers')") is None  # nothing written


def test_replace_refuses_when_objects_outside_the_selection_depend_on_its_tables(airflow_db, legacy, migrate,
                                                                                   capsys):
    src, dst = legacy
    with dst.cursor() as cur:
        cur.execute("CREATE TABLE customers (id int PRIMARY KEY); CREATE VIEW mine AS SELECT id FROM customers")
    run, _ = run_dag(migrate, {"tables": ["customers"], "mode": "replace"}, task_id="plan")
    assert run.state == "failed"
    output = capsys.readouterr()
    assert "mode='replace' would have to drop objects outside the selection" in output.out + output.err
    assert "public.mine (a view)" in output.out + output.err or "mine (a view)" in output.out + output.err
    assert _one(dst, "SELECT count(*) FROM customers") == 0  # untouched


def test_invalid_params_are_refused_by_the_form(airflow_db, legacy, migrate):
    from airflow.sdk.exceptions import ParamValidationError

    for conf in ({"parallelism": 99}, {"chunk_size": 0}, {"mode": "merge"}, {"source_conn_id": "somewhere_else"},
                 {"migration_id": "no spaces allowed"}):
        with pytest.raises(ParamValidationError):
            migrate.test(run_conf=conf)


def test_a_selection_of_tables_brings_only_what_they_need(legacy):
    src, _ = legacy
    with src.cursor() as cur:
        chosen = selection.select(catalog.load(cur, ("public",)), ("orders", "customers"), ())
    src.rollback()
    assert [str(t.name) for t in chosen.tables] == ['"public"."customers"', '"public"."orders"']
    assert [str(v.name) for v in chosen.views] == ['"public"."customer_order_totals"']  # reads only these two
    assert {str(s.name) for s in chosen.sequences} == {'"public"."customers_id_seq"', '"public"."orders_id_seq"',
                                                      '"public"."invoice_number_seq"'}  # not products'
    with src.cursor() as cur:
        cat = catalog.load(cur, ("public",))
        with pytest.raises(CopyMistake, match=r"\['payments_2024h1'\] are partitions"):
            selection.select(cat, ("payments_2024h1",), ())
        with pytest.raises(CopyMistake, match=r"\['nope'\] not found as tables"):
            selection.select(cat, ("orders", "nope"), ())
        without_orders = selection.select(cat, (), ("orders",))
    src.rollback()
    assert '"public"."orders"' not in [str(t.name) for t in without_orders.tables]
    assert without_orders.views == ()  # the view reads orders


def test_a_missing_or_too_old_pg_dump_gives_a_clear_error(tmp_path):
    with pytest.raises(ToolMissing, match=f"no pg_dump and pg_restore in {tmp_path}"):
        find_tools(15, 15, str(tmp_path))
    with pytest.raises(ToolMissing, match="no pg_dump of major 99 or later .* Install postgresql-client-99"):
        find_tools(99, 15)
    assert find_tools(15, 15).major >= 15
