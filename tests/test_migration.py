"""The migrate_tables DAG through Airflow itself (dag.test) against a real source and target:
the plan (and dry run), the source snapshot's holder, the pre-data stage and the refusals."""

from __future__ import annotations

import logging
import uuid

import psycopg2
import pytest
from dag_runs import load_dag, run_dag, states, tries
from psycopg2 import sql

from airflow_pool_provider.copy.names import TableName
from airflow_pool_provider.errors import InvalidParameter, MigrationError, MigrationMistake, ToolMissing
from airflow_pool_provider.migration import catalog, comments, definitions, selection
from airflow_pool_provider.migration.tools import find_tools
from airflow_pool_provider.testing.data import table_digest


@pytest.fixture
def migrate():
    return load_dag("migrate_tables", "migrate_tables.py")


def _one(conn, query, params=None):
    with conn.cursor() as cur:
        cur.execute(query, params)
        return cur.fetchone()[0]


def test_the_forms_empty_optional_fields_arrive_as_null_and_mean_their_default(airflow_db, legacy, migrate):
    """The UI's trigger form sends an emptied list or text field as null: no tables named means all."""
    run, plan = run_dag(
        migrate, {"tables": None, "exclude_tables": None, "migration_id": None, "dry_run": True}, task_id="plan"
    )
    assert run.state == "success"
    assert len(plan["tables"]) == 6


def test_migration_ids_the_form_allows_stay_the_text_given(airflow_db, legacy, migrate):
    """The DAG renders templates as native objects; an id must not become 123, True or no id."""
    for given in ("123", "True", "None"):
        run, plan = run_dag(migrate, {"migration_id": given, "dry_run": True}, task_id="plan")
        assert run.state == "success" and tries(run, "plan") == 1, given
        assert plan["migration_id"] == given


def test_a_dry_run_plans_and_writes_nothing(airflow_db, legacy, migrate):
    src, dst = legacy
    run, plan = run_dag(migrate, {"dry_run": True}, task_id="plan")
    assert run.state == "success"
    assert [t["name"] for t in plan["tables"]] == [
        '"public"."customers"',
        '"public"."events"',
        '"public"."order_items"',
        '"public"."orders"',
        '"public"."payments"',
        '"public"."products"',
    ]
    payments = next(t for t in plan["tables"] if t["name"].endswith('"payments"'))
    assert payments["partitions"] == 3 and payments["chunks"] >= 3
    orders = next(t for t in plan["tables"] if t["name"].endswith('"orders"'))
    assert orders["estimated_rows"] == 2500 and orders["in_target"] == "no"
    assert set(orders["indexes"]) == {"orders_pkey", "orders_customer", "orders_ordered_at"}
    assert plan["views"] == ['"public"."customer_order_totals"'] and plan["budget"]["fits"]
    assert states(run)["pre_data"] == "skipped"
    # the tests' connections are superusers: the plan warns of both
    assert [w.split(":")[0] for w in plan["warnings"]] == [
        "the source connection's role is a superuser",
        "the target connection's role is a superuser",
    ]
    assert _one(dst, "SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace") == 0


def _objects(conn) -> set[str]:
    """Indexes, constraints, triggers and views of public, by name (the ledgers left out)."""
    return {
        row[0]
        for row in _rows(
            conn,
            """
        SELECT 'index ' || indexname FROM pg_indexes WHERE schemaname = 'public'
           AND tablename NOT LIKE 'airflow_pool_provider%%'
        UNION ALL SELECT 'constraint ' || conname FROM pg_constraint
         WHERE connamespace = 'public'::regnamespace AND conrelid::regclass::text NOT LIKE 'airflow_pool_provider%%'
        UNION ALL SELECT 'trigger ' || tgname FROM pg_trigger WHERE NOT tgisinternal
        UNION ALL SELECT 'view ' || viewname FROM pg_views WHERE schemaname = 'public'""",
        )
    }


def test_a_migration_moves_every_table_with_its_objects_and_verifies_it(airflow_db, legacy, migrate):
    src, dst = legacy
    run, report = run_dag(migrate, {"chunk_size": 700}, task_id="verify")
    assert run.state == "success", states(run)
    assert report["verified"] and report["one_instant"]
    assert {t["checked"] for t in report["tables"]} == {"at load"}  # each table checked right after its load
    for table in ("customers", "products", "orders", "order_items", "events", "payments"):
        # every row, byte for byte as text
        assert table_digest(dst, table, key=None) == table_digest(src, table, key=None), table
    assert _objects(dst) == _objects(src)  # indexes, primary/unique/foreign keys, checks, triggers, views
    assert (
        _one(
            dst,
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = %s AND application_name LIKE 'pool-provider snapshot %%'",
            (src.info.dbname,),
        )
        == 0
    )  # the snapshot was released at the end
    before = {t: table_digest(dst, t, key=None) for t in ("orders", "payments")}

    again, report = run_dag(migrate, {"chunk_size": 700}, task_id="verify")  # the same migration again
    assert again.state == "success" and report["verified"]
    assert {t["checked"] for t in report["tables"]} == {"now"}  # the target read again, not the first run's checks
    # nothing changed, nothing doubled
    assert {t: table_digest(dst, t, key=None) for t in ("orders", "payments")} == before

    with dst.cursor() as cur:  # sequences continue after the source's values
        cur.execute("INSERT INTO customers (email, name) VALUES ('new@example.com', 'New') RETURNING id")
        assert cur.fetchone()[0] == _one(src, "SELECT last_value FROM customers_id_seq") + 1
        cur.execute("INSERT INTO orders (customer_id, ordered_at) VALUES (1, now()) RETURNING id, invoice_no")
        order_id, invoice = cur.fetchone()
        assert order_id == _one(src, "SELECT max(id) FROM orders") + 1
        assert invoice == _one(src, "SELECT last_value FROM invoice_number_seq") + 1
        cur.execute("UPDATE orders SET status = 'paid' WHERE id = %s RETURNING updated_at > ordered_at", (order_id,))
        assert cur.fetchone()[0] is True  # the trigger came along
        with pytest.raises(psycopg2.errors.ForeignKeyViolation):  # and the foreign keys
            cur.execute("INSERT INTO order_items VALUES (%s, 1, 999999, 1, 1)", (order_id,))


def _rows(conn, query):
    with conn.cursor() as cur:
        cur.execute(query)
        return cur.fetchall()


def test_resume_refuses_a_target_table_it_did_not_create(airflow_db, legacy, migrate, capsys):
    src, dst = legacy
    with dst.cursor() as cur:
        cur.execute("CREATE TABLE orders (id int)")
    run, _ = run_dag(migrate, {"tables": ["orders", "customers"]}, task_id="plan")
    assert run.state == "failed" and states(run)["plan"] == "failed"
    output = capsys.readouterr()
    assert 'target table "public"."orders" exists and this migration did not create it' in output.out + output.err
    assert _one(dst, "SELECT to_regclass('customers')") is None  # nothing written


def test_replace_refuses_when_objects_outside_the_selection_depend_on_its_tables(airflow_db, legacy, migrate, capsys):
    src, dst = legacy
    with dst.cursor() as cur:
        cur.execute("CREATE TABLE customers (id int PRIMARY KEY); CREATE VIEW mine AS SELECT id FROM customers")
    run, _ = run_dag(migrate, {"tables": ["customers"], "mode": "replace"}, task_id="plan")
    assert run.state == "failed"
    output = capsys.readouterr()
    assert "mode='replace' would have to drop objects outside the selection" in output.out + output.err
    assert "public.mine (a view)" in output.out + output.err or "mine (a view)" in output.out + output.err
    assert _one(dst, "SELECT count(*) FROM customers") == 0  # untouched


def test_a_table_name_that_cannot_be_read_fails_the_plan_once(airflow_db, legacy, migrate, capsys):
    run, _ = run_dag(migrate, {"tables": ["orders", "a.b.c"], "dry_run": True}, task_id="plan")
    assert run.state == "failed" and states(run)["plan"] == "failed"
    assert tries(run, "plan") == 1  # a mistake: the DAG's retries=2 are not used
    output = capsys.readouterr().out
    assert "cannot read table name 'a.b.c'" in output and "not retried: trying again cannot help" in output


def test_a_connection_a_pool_cannot_use_fails_the_plan_once(airflow_db, legacy, migrate, make_conn_id, capsys):
    src, _ = legacy
    make_conn_id(src.info.dbname, conn_id="migration_source", extra={"iam": True})
    run, _ = run_dag(migrate, {"dry_run": True}, task_id="plan")
    assert run.state == "failed" and tries(run, "plan") == 1
    output = capsys.readouterr().out
    assert "'migration_source' uses IAM tokens" in output and "not retried: trying again cannot help" in output


def test_rendered_sizes_are_read_back_as_integers_or_named_when_they_are_not():
    from airflow_pool_provider.operators.migration import MigrationPlanOperator

    stage = MigrationPlanOperator(task_id="plan", source_conn_id="a", target_conn_id="b", chunk_size=" 700 ")
    assert stage.request().chunk_size == 700
    stage.parallelism = "two"  # what a text field of a form renders to
    with pytest.raises(InvalidParameter, match="parallelism must be a positive integer, got 'two'"):
        stage.request()


def test_invalid_params_are_refused_by_the_form(airflow_db, legacy, migrate):
    from airflow.sdk.exceptions import ParamValidationError

    for conf in (
        {"parallelism": 99},
        {"chunk_size": 0},
        {"mode": "merge"},
        {"source_conn_id": "somewhere_else"},
        {"migration_id": "no spaces allowed"},
        {"allow_security_definer": "maybe"},
    ):
        with pytest.raises(ParamValidationError):
            migrate.test(run_conf=conf)


def test_a_selection_of_tables_brings_only_what_they_need(legacy):
    src, _ = legacy
    with src.cursor() as cur:
        chosen = selection.select(catalog.load(cur, ("public",)), ("orders", "customers"), ())
    src.rollback()
    assert [str(t.name) for t in chosen.tables] == ['"public"."customers"', '"public"."orders"']
    assert [str(v.name) for v in chosen.views] == ['"public"."customer_order_totals"']  # reads only these two
    assert {str(s.name) for s in chosen.sequences} == {
        '"public"."customers_id_seq"',
        '"public"."orders_id_seq"',
        '"public"."invoice_number_seq"',
    }  # not products'
    with src.cursor() as cur:
        cat = catalog.load(cur, ("public",))
        with pytest.raises(MigrationMistake, match=r"\['payments_2024h1'\] are partitions"):
            selection.select(cat, ("payments_2024h1",), ())
        with pytest.raises(MigrationMistake, match=r"\['nope'\] not found as tables"):
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


def test_replace_in_a_new_run_drops_and_migrates_the_selection_again(airflow_db, legacy, migrate):
    src, dst = legacy
    first, _ = run_dag(migrate, {"tables": ["customers", "orders"]}, task_id="verify")
    assert first.state == "success"
    with dst.cursor() as cur:  # the target drifted since
        cur.execute("DELETE FROM orders WHERE id <= 10")
        cur.execute("CREATE TABLE keep_me (id int)")
    again, report = run_dag(migrate, {"tables": ["customers", "orders"], "mode": "replace"}, task_id="verify")
    assert again.state == "success", states(again)
    assert report["verified"]
    assert table_digest(dst, "orders", key=None) == table_digest(src, "orders", key=None)
    assert _one(dst, "SELECT to_regclass('keep_me') IS NOT NULL")  # nothing outside the selection is touched


def test_replace_of_a_whole_schema_with_a_partitioned_table_is_not_refused(airflow_db, legacy, migrate):
    """The partitions of a selected partitioned table (payments, whose leaves hold the foreign key to
    orders) are part of the selection: replacing every table of the schema drops and migrates them."""
    src, dst = legacy
    first, _ = run_dag(migrate, {}, task_id="verify")
    assert first.state == "success", states(first)
    with dst.cursor() as cur:
        cur.execute("DELETE FROM payments WHERE order_id <= 100")
    again, report = run_dag(migrate, {"mode": "replace"}, task_id="verify")
    assert again.state == "success", states(again)
    assert report["verified"]
    assert table_digest(dst, "payments", key=None) == table_digest(src, "payments", key=None)


def test_the_configured_bin_directory_is_where_pg_dump_is_looked_for(
    airflow_db, legacy, migrate, monkeypatch, tmp_path, capsys
):
    monkeypatch.setenv("AIRFLOW__POOLED_POSTGRES__PG_BIN_DIR", str(tmp_path))
    run, _ = run_dag(migrate, {"dry_run": True}, task_id="plan")
    assert run.state == "failed" and states(run)["plan"] == "failed"
    output = capsys.readouterr()
    assert f"no pg_dump and pg_restore in {tmp_path}" in output.out + output.err


def _owner(conn, table: str) -> str:
    return _one(conn, "SELECT tableowner FROM pg_tables WHERE schemaname = 'public' AND tablename = %s", (table,))


@pytest.fixture
def owner_role(pg_server, legacy):
    """A role owning the source's customers table; its objects are handed back before it is dropped."""
    src, dst = legacy
    role = f"owner_{uuid.uuid4().hex[:8]}"
    pg_server.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(role)))
    with src.cursor() as cur:
        cur.execute(sql.SQL("ALTER TABLE customers OWNER TO {}").format(sql.Identifier(role)))
    src.commit()
    yield role
    for conn in (src, dst):
        with conn.cursor() as cur:
            cur.execute(sql.SQL("REASSIGN OWNED BY {} TO CURRENT_USER").format(sql.Identifier(role)))
        conn.commit()
    pg_server.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_owners_are_left_out_unless_asked_to_keep_them(
    airflow_db, legacy, migrate, owner_role, make_database, make_conn_id, pg_server
):
    src, dst = legacy
    connecting_user = _one(dst, "SELECT current_user")
    run, _ = run_dag(migrate, {"tables": ["customers"]}, task_id="pre_data")
    assert run.state == "success"
    assert _owner(dst, "customers") == connecting_user
    kept_db = make_database(prefix="kept")
    make_conn_id(kept_db, conn_id="migration_target")
    run, _ = run_dag(migrate, {"tables": ["customers"], "keep_owners": True}, task_id="pre_data")
    assert run.state == "success"
    kept = psycopg2.connect(pg_server.dsn(kept_db))
    try:
        assert _owner(kept, "customers") == owner_role
    finally:
        with kept.cursor() as cur:
            cur.execute(sql.SQL("REASSIGN OWNED BY {} TO CURRENT_USER").format(sql.Identifier(owner_role)))
        kept.commit()
        kept.close()


def test_an_index_build_memory_the_target_refuses_is_named_before_anything_runs(
    airflow_db, legacy, migrate, monkeypatch, capsys
):
    src, dst = legacy
    monkeypatch.setenv("AIRFLOW__POOLED_POSTGRES__INDEX_BUILD_MEMORY", "64kB")  # below the 1MB minimum
    run, _ = run_dag(migrate, {"tables": ["customers"]}, task_id="plan")
    assert run.state == "failed" and states(run)["plan"] == "failed"
    output = capsys.readouterr()
    assert "index_build_memory '64kB' is not a maintenance_work_mem the target accepts" in output.out + output.err
    assert _one(dst, "SELECT to_regclass('customers')") is None


def test_index_builds_run_with_the_given_memory(legacy):
    from airflow_pool_provider.copy.names import TableName
    from airflow_pool_provider.copy.stopping import StopSignal
    from airflow_pool_provider.migration import postdata
    from airflow_pool_provider.migration.ledger import MigrationLedger, Stage
    from airflow_pool_provider.pool import ConnectionPool

    src, dst = legacy
    with dst.cursor() as cur:  # the build evaluates the expression, which tells what the build's setting is
        cur.execute("CREATE TABLE t (id int); INSERT INTO t VALUES (1)")
        cur.execute(
            "CREATE FUNCTION memory_seen(int) RETURNS int IMMUTABLE LANGUAGE plpgsql AS $$ BEGIN "
            "RAISE EXCEPTION 'built with %', current_setting('maintenance_work_mem'); END $$"
        )
    ledger = MigrationLedger("public", "memory-test")
    setup = psycopg2.connect(dst.dsn)
    with setup, setup.cursor() as cur:
        ledger.ensure(cur)
    setup.close()
    index = postdata.IndexDef(
        TableName("public", "t"),
        "t_memory",
        "CREATE INDEX t_memory ON public.t (public.memory_seen(id))",
        None,
        None,
        False,
        False,
        None,
        False,
    )
    pool = ConnectionPool(lambda: psycopg2.connect(dst.dsn), max_size=2)
    try:
        with pytest.raises(MigrationError, match="built with 3MB"):
            postdata.build_indexes(
                pool, [index], ledger, 1, StopSignal(), logging.getLogger(), index_build_memory="3MB"
            )
    finally:
        pool.close()
    with dst.cursor() as cur:
        assert not ledger.is_done(cur, Stage.POST_DATA, index.key)


def test_a_bare_name_names_the_table_in_every_selected_schema(airflow_db, migration_databases, migrate):
    src, dst = migration_databases
    with src.cursor() as cur:
        for schema in ("sales", "archive"):
            cur.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
            for table in ("audit_log", "orders"):
                cur.execute(
                    sql.SQL("CREATE TABLE {} (id int PRIMARY KEY); INSERT INTO {} VALUES (1), (2)").format(
                        sql.Identifier(schema, table), sql.Identifier(schema, table)
                    )
                )
    conf = {"schemas": ["sales", "archive"], "exclude_tables": ["audit_log"]}
    run, plan = run_dag(migrate, {**conf, "dry_run": True}, task_id="plan")
    assert run.state == "success"
    assert [t["name"] for t in plan["tables"]] == ['"archive"."orders"', '"sales"."orders"']
    run, report = run_dag(migrate, {**conf, "dry_run": False}, task_id="verify")  # dag.test keeps the last conf
    assert run.state == "success" and report is not None and report["verified"], states(run)
    assert [t["table"] for t in report["tables"]] == ['"archive"."orders"', '"sales"."orders"']
    assert _one(dst, "SELECT count(*) FROM pg_class WHERE relname = 'audit_log'") == 0
    assert _one(dst, "SELECT count(*) FROM archive.orders") == _one(dst, "SELECT count(*) FROM sales.orders") == 2


def test_a_finished_migration_run_again_reads_the_target_again(airflow_db, legacy, migrate, capsys):
    src, dst = legacy
    first, report = run_dag(migrate, {"tables": ["customers", "orders"]}, task_id="verify")
    assert first.state == "success" and report["verified"]
    with dst.cursor() as cur:  # the target changed after the migration was verified
        cur.execute("UPDATE customers SET name = name || '!' WHERE id <= 3")
    again, _ = run_dag(migrate, {"tables": ["customers", "orders"]}, task_id="verify")
    assert again.state == "failed" and states(again)["verify"] == "failed"
    assert tries(again, "verify") == 1  # checking again cannot help
    output = capsys.readouterr()
    report = next(
        line for line in (output.out + output.err).splitlines() if '"public"."customers"' in line and "NO" in line
    )
    assert "checksums differ" in report and " now " in report


_COMMENTS = """
SELECT d.classoid::regclass::text, coalesce(c.relname, k.conname), coalesce(a.attname, ''), d.description
  FROM pg_description d
  LEFT JOIN pg_class c ON d.classoid = 'pg_class'::regclass AND c.oid = d.objoid
  LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = d.objsubid AND d.objsubid > 0
  LEFT JOIN pg_constraint k ON d.classoid = 'pg_constraint'::regclass AND k.oid = d.objoid
 WHERE coalesce(c.relnamespace, k.connamespace) = 'public'::regnamespace
"""


def test_comments_on_tables_columns_indexes_constraints_views_and_sequences_arrive(airflow_db, legacy, migrate):
    src, dst = legacy
    with src.cursor() as cur:
        cur.execute("COMMENT ON TABLE orders IS 'one row per order'")
        cur.execute("COMMENT ON COLUMN orders.status IS 'new, paid or shipped; it''s quoted'")
        cur.execute("COMMENT ON INDEX orders_customer IS 'for the customer page'")
        cur.execute("COMMENT ON CONSTRAINT orders_pkey ON orders IS 'the key'")
        cur.execute("COMMENT ON VIEW customer_order_totals IS 'totals'")
        cur.execute("COMMENT ON SEQUENCE invoice_number_seq IS 'invoice numbers'")
        cur.execute("COMMENT ON TABLE payments IS 'partitioned by month'")
    run, report = run_dag(migrate, {}, task_id="verify")
    assert run.state == "success" and report["verified"], states(run)
    source = set(_rows(src, _COMMENTS))
    assert len(source) == 7 and set(_rows(dst, _COMMENTS)) == source
    with dst.cursor() as cur:  # the verify stage compares them: a changed one is a difference
        cur.execute("COMMENT ON COLUMN orders.status IS 'changed'")
    with src.cursor() as scur, dst.cursor() as tcur:
        assert comments.differences(scur, tcur, TableName("public", "orders")) == ["comment on column status of orders"]


def test_tables_naming_large_objects_are_refused_in_the_plan(airflow_db, migration_databases, migrate, capsys):
    src, dst = migration_databases
    with src.cursor() as cur:
        cur.execute("CREATE TABLE docs (id int PRIMARY KEY, body oid)")
        cur.execute("INSERT INTO docs VALUES (1, lo_from_bytea(0, 'hello'))")
    run, _ = run_dag(migrate, {"dry_run": False}, task_id="plan")
    assert run.state == "failed" and tries(run, "plan") == 1
    output = capsys.readouterr()
    assert "1 large object(s), and ['public.docs.body'] hold OIDs that name them" in output.out + output.err
    assert _one(dst, "SELECT to_regclass('docs')") is None  # nothing written


def test_foreign_tables_are_named_in_the_plan_as_not_migrated(airflow_db, migration_databases, migrate):
    src, dst = migration_databases
    with src.cursor() as cur:
        cur.execute("CREATE FOREIGN DATA WRAPPER plan_test_fdw")
        cur.execute("CREATE SERVER plan_test_server FOREIGN DATA WRAPPER plan_test_fdw")
        cur.execute("CREATE FOREIGN TABLE remote_rows (id int) SERVER plan_test_server")
        cur.execute("CREATE TABLE local_rows (id int PRIMARY KEY)")
    run, plan = run_dag(migrate, {"dry_run": True}, task_id="plan")
    assert run.state == "success"
    assert [t["name"] for t in plan["tables"]] == ['"public"."local_rows"']
    assert plan["left_out"] == [
        '"public"."remote_rows" (a foreign table: create its server, user mapping and table in the target by hand)'
    ]


def test_views_over_relations_left_out_are_named_in_the_plan(airflow_db, legacy, migrate):
    run, plan = run_dag(migrate, {"tables": ["products"], "dry_run": True}, task_id="plan")
    assert run.state == "success" and plan["views"] == []
    assert plan["left_out"] == [
        '"public"."customer_order_totals" (a view that reads relations not migrated: select them too to bring it)'
    ]


def test_foreign_keys_to_tables_left_out_are_named_in_the_plan(airflow_db, legacy, migrate):
    run, plan = run_dag(migrate, {"tables": ["orders"], "dry_run": True}, task_id="plan")
    assert run.state == "success"
    keys = [entry for entry in plan["left_out"] if entry.startswith("foreign key ")]
    assert len(keys) == 1 and 'of "public"."orders"' in keys[0] and "REFERENCES public.customers" in keys[0]
    assert "select that table too to keep it" in keys[0]


def test_materialized_views_arrive_populated_with_their_indexes_and_replace_drops_them(airflow_db, legacy, migrate):
    src, dst = legacy
    with src.cursor() as cur:
        cur.execute(
            "CREATE MATERIALIZED VIEW order_counts AS SELECT customer_id, count(*) AS orders FROM orders GROUP BY 1"
        )
        cur.execute("CREATE UNIQUE INDEX order_counts_customer ON order_counts (customer_id)")
        cur.execute("CREATE MATERIALIZED VIEW busy_customers AS SELECT * FROM order_counts WHERE orders > 1")
        cur.execute("CREATE MATERIALIZED VIEW not_yet AS SELECT id FROM customers WITH NO DATA")
    conf = {"tables": ["orders", "customers"]}
    run, report = run_dag(migrate, conf, task_id="verify")
    assert run.state == "success" and report["verified"], states(run)
    for view in ("order_counts", "busy_customers"):
        assert _one(dst, f"SELECT relispopulated FROM pg_class WHERE relname = '{view}'") is True
        assert table_digest(dst, view, key=None) == table_digest(src, view, key=None), view
    assert _one(dst, "SELECT to_regclass('order_counts_customer') IS NOT NULL")
    assert _one(dst, "SELECT relispopulated FROM pg_class WHERE relname = 'not_yet'") is False

    again, report = run_dag(migrate, {**conf, "mode": "replace"}, task_id="verify")  # drops and makes them again
    assert again.state == "success" and report["verified"], states(again)
    assert table_digest(dst, "busy_customers", key=None) == table_digest(src, "busy_customers", key=None)


def _run(conn, statements: str) -> None:
    with conn.cursor() as cur:
        cur.execute(statements)


def _verify_fails_naming(migrate, conf: dict, capsys, *differences: str) -> None:
    """A run whose verify stage fails, its report naming each of ``differences``."""
    run, _ = run_dag(migrate, conf, task_id="verify")
    assert run.state == "failed" and states(run)["verify"] == "failed"
    output = capsys.readouterr().out
    for difference in differences:
        assert difference in output, difference


def test_a_parent_and_its_inheriting_child_each_keep_their_own_rows(airflow_db, migration_databases, migrate):
    """Each table is read, counted and checked ONLY: a child's rows arrive in the child alone, not
    a second time in the parent (whose target count would then take the child's in too)."""
    src, dst = migration_databases
    _run(
        src,
        "CREATE TABLE parent (id int PRIMARY KEY, note text);"
        "CREATE TABLE child (extra int) INHERITS (parent);"
        "INSERT INTO parent SELECT g, 'parent ' || g FROM generate_series(1, 300) g;"
        "INSERT INTO child SELECT g, 'child ' || g, g FROM generate_series(1001, 1200) g",
    )
    run, report = run_dag(migrate, {"chunk_size": 70}, task_id="verify")
    assert run.state == "success", states(run)
    assert report["verified"]
    assert {t["table"]: t["rows"] for t in report["tables"]} == {'"public"."child"': 200, '"public"."parent"': 300}
    for table in ("parent", "child"):
        assert table_digest(dst, table, only=True) == table_digest(src, table, only=True), table
    assert _one(dst, "SELECT count(*) FROM ONLY parent") == 300


PARTITIONS_IN_TWO_SCHEMAS = """
CREATE SCHEMA a; CREATE SCHEMA b;
CREATE TABLE a.t (id int PRIMARY KEY, note text) PARTITION BY RANGE (id);
CREATE TABLE a.t_low PARTITION OF a.t FOR VALUES FROM (0) TO (100);
CREATE TABLE b.t_high PARTITION OF a.t FOR VALUES FROM (100) TO (300);
CREATE TABLE a.t_top PARTITION OF a.t FOR VALUES FROM (300) TO (1000) PARTITION BY RANGE (id);
CREATE TABLE b.t_top_leaf PARTITION OF a.t_top FOR VALUES FROM (300) TO (1000);
INSERT INTO a.t SELECT g, 'note ' || g FROM generate_series(1, 500) g;
"""
PARTITION_LEAVES = [("a", "t_low"), ("b", "t_high"), ("b", "t_top_leaf")]


def test_a_partition_in_a_schema_not_selected_is_named_by_the_plan(airflow_db, migration_databases, migrate, capsys):
    """The catalog holds the selected schemas only: a partition elsewhere (at any depth) would be
    left out, its rows missing, so the plan refuses the migration once, naming it."""
    src, dst = migration_databases
    _run(src, PARTITIONS_IN_TWO_SCHEMAS)
    run, _ = run_dag(migrate, {"schemas": ["a"]}, task_id="plan")
    assert run.state == "failed" and states(run)["plan"] == "failed" and tries(run, "plan") == 1
    output = capsys.readouterr()
    assert (
        'partitioned table "a"."t" has partitions in schemas not selected: "b"."t_high", "b"."t_top_leaf"; '
        "add their schemas ['b'] to schemas, or leave the table out with exclude_tables"
    ) in output.out + output.err
    assert _one(dst, "SELECT count(*) FROM pg_namespace WHERE nspname IN ('a', 'b')") == 0  # nothing written
    assert _one(dst, "SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace") == 0


def test_partitions_in_every_selected_schema_all_arrive(airflow_db, migration_databases, migrate):
    src, dst = migration_databases
    _run(src, PARTITIONS_IN_TWO_SCHEMAS)
    run, report = run_dag(migrate, {"schemas": ["a", "b"], "chunk_size": 70}, task_id="verify")
    assert run.state == "success", states(run)
    assert report["verified"]
    assert {t["table"]: t["rows"] for t in report["tables"]} == {'"a"."t"': 500}
    for schema, leaf in PARTITION_LEAVES:
        digest = table_digest(dst, leaf, schema=schema)
        assert digest == table_digest(src, leaf, schema=schema) and digest[0] > 0, (schema, leaf)


@pytest.fixture
def policed_source(pg_server, migration_databases, make_conn_id):
    """The source's only table t (1000 rows) with row-level security that shows a new login role
    only its even ids; migration_source connects as that role. The role is dropped after."""
    src, _ = migration_databases
    role = f"reader_{uuid.uuid4().hex[:8]}"
    pg_server.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    with src.cursor() as cur:
        cur.execute("CREATE TABLE t (id int PRIMARY KEY, note text)")
        cur.execute("INSERT INTO t SELECT g, 'note ' || g FROM generate_series(1, 1000) g")
        cur.execute("ALTER TABLE t ENABLE ROW LEVEL SECURITY")
        cur.execute(sql.SQL("CREATE POLICY even ON t FOR SELECT TO {} USING (id % 2 = 0)").format(sql.Identifier(role)))
        cur.execute(sql.SQL("GRANT SELECT ON t TO {}").format(sql.Identifier(role)))
    make_conn_id(src.info.dbname, conn_id="migration_source", user=role)
    yield role
    for conn in migration_databases:  # the target too: a migration that ran restored the policy
        with conn.cursor() as cur:
            cur.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
    pg_server.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_a_source_role_a_row_security_policy_applies_to_fails_the_migration_once(
    airflow_db, migration_databases, policed_source, migrate, capsys
):
    src, dst = migration_databases
    run, report = run_dag(migrate, {"tables": ["t"]}, task_id="verify")

    assert run.state == "failed" and report is None  # nothing reported, let alone verified
    assert states(run)["plan_data"] == "failed" and tries(run, "plan_data") == 1
    output = capsys.readouterr()
    assert f'the role "{policed_source}"' in output.out + output.err
    assert 'cannot read every row of table "t"' in output.out + output.err
    assert f'ALTER ROLE "{policed_source}" BYPASSRLS' in output.out + output.err
    assert _one(dst, "SELECT count(*) FROM t") == 0


def test_not_valid_constraints_stay_not_valid_and_the_rows_that_violate_them_arrive(
    airflow_db, migration_databases, migrate
):
    src, dst = migration_databases
    _run(
        src,
        """
        CREATE TABLE readings (id int PRIMARY KEY, value int);
        INSERT INTO readings VALUES (1, -5), (2, 10);
        ALTER TABLE readings ADD CONSTRAINT readings_positive CHECK (value > 0) NOT VALID;
        CREATE TABLE parents (id int PRIMARY KEY);
        INSERT INTO parents VALUES (1);
        CREATE TABLE children (id int PRIMARY KEY, parent_id int);
        INSERT INTO children VALUES (1, 1), (2, 99);
        ALTER TABLE children ADD CONSTRAINT children_parent FOREIGN KEY (parent_id) REFERENCES parents NOT VALID;
        CREATE DOMAIN score AS int;
        CREATE TABLE games (id int PRIMARY KEY, points score);
        INSERT INTO games VALUES (1, -3), (2, 7);
        ALTER DOMAIN score ADD CONSTRAINT score_positive CHECK (VALUE > 0) NOT VALID;
        """,
    )
    run, report = run_dag(migrate, {"dry_run": False}, task_id="verify")
    assert run.state == "success" and report["verified"], states(run)
    for table in ("readings", "children", "games"):
        assert table_digest(dst, table, key=None) == table_digest(src, table, key=None), table
    constraints = (
        "SELECT conname, convalidated FROM pg_constraint "
        "WHERE conname IN ('readings_positive', 'children_parent', 'score_positive')"
    )
    assert sorted(_rows(dst, constraints)) == [
        ("children_parent", False),
        ("readings_positive", False),
        ("score_positive", False),
    ]


def test_cluster_on_markers_arrive(airflow_db, migration_databases, migrate):
    src, dst = migration_databases
    _run(
        src,
        """
        CREATE TABLE visits (id int PRIMARY KEY, at timestamptz);
        CREATE INDEX visits_at ON visits (at);
        ALTER TABLE visits CLUSTER ON visits_at;
        CREATE TABLE pages (id int PRIMARY KEY);
        ALTER TABLE pages CLUSTER ON pages_pkey;
        """,
    )
    run, report = run_dag(migrate, {"dry_run": False}, task_id="verify")
    assert run.state == "success" and report["verified"], states(run)
    clustered = "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indisclustered"
    assert sorted(_rows(dst, clustered)) == sorted(_rows(src, clustered)) == [("pages_pkey",), ("visits_at",)]


def test_a_view_using_an_extension_the_target_lacks_is_refused_in_the_plan(
    airflow_db, migration_databases, migrate, capsys
):
    src, dst = migration_databases
    if not _one(src, "SELECT count(*) FROM pg_available_extensions WHERE name = 'hstore'"):
        pytest.skip("this server has no hstore extension (contrib)")
    _run(
        src,
        """
        CREATE EXTENSION hstore;
        CREATE TABLE people (id int PRIMARY KEY, name text);
        CREATE VIEW people_tags AS SELECT id, array_length(akeys(hstore('name', name)), 1) AS tags FROM people;
        """,
    )
    run, _ = run_dag(migrate, {"dry_run": False}, task_id="plan")
    assert run.state == "failed" and states(run)["plan"] == "failed" and tries(run, "plan") == 1
    output = capsys.readouterr()
    assert "the target lacks the extension(s) ['hstore']" in output.out + output.err
    assert _one(dst, "SELECT to_regclass('people') IS NULL")  # nothing written


def test_an_index_name_the_target_uses_for_another_table_is_refused_in_the_plan(airflow_db, legacy, migrate, capsys):
    src, dst = legacy
    _run(dst, "CREATE TABLE other (customer_id int); CREATE INDEX orders_customer ON other (customer_id)")
    run, _ = run_dag(migrate, {"tables": ["orders", "customers"], "dry_run": False}, task_id="plan")
    assert run.state == "failed" and states(run)["plan"] == "failed" and tries(run, "plan") == 1
    output = capsys.readouterr()
    assert 'taken in the target by other relations: "public"."orders_customer" (an index of "public"."other")' in (
        output.out + output.err
    )
    assert _one(dst, "SELECT to_regclass('orders') IS NULL")  # nothing written


UTIL = """
CREATE SCHEMA util;
CREATE DOMAIN util.positive AS int CHECK (VALUE > 0);
CREATE TYPE util.mood AS ENUM ('calm', 'busy');
CREATE FUNCTION util.slug(t text) RETURNS text LANGUAGE sql IMMUTABLE AS $$ SELECT lower(t) $$;
CREATE FUNCTION util.touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;
"""


def _refused_plan(migrate, conf: dict, capsys) -> str:
    """Run the plan of a migration that is to be refused; the output that says why."""
    run, _ = run_dag(migrate, {"dry_run": False, **conf}, task_id="plan")
    assert run.state == "failed" and states(run)["plan"] == "failed" and tries(run, "plan") == 1
    output = capsys.readouterr()
    return output.out + output.err


def _untouched(dst) -> None:
    assert _one(dst, "SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace") == 0
    assert _one(dst, "SELECT count(*) FROM pg_namespace WHERE nspname IN ('util', 'audit', 'other')") == 0


def test_types_and_functions_of_a_schema_not_selected_are_refused_in_the_plan_unless_the_target_has_them(
    airflow_db, migration_databases, migrate, capsys
):
    """pg_dump -n dumps the selected schemas only: what their tables, views and own functions
    use from another schema must be in the target already, by name and argument types."""
    src, dst = migration_databases
    _run(
        src,
        UTIL
        + """
        CREATE FUNCTION util.valid(int) RETURNS boolean LANGUAGE sql IMMUTABLE AS $$ SELECT $1 > 0 $$;
        CREATE TABLE items (
            id int PRIMARY KEY CHECK (util.valid(id)), qty util.positive, moods util.mood[], name text,
            slug text GENERATED ALWAYS AS (util.slug(name)) STORED);
        CREATE TRIGGER touch BEFORE UPDATE ON items FOR EACH ROW EXECUTE FUNCTION util.touch();
        CREATE VIEW item_names AS SELECT util.slug(name) AS name FROM items;
        CREATE FUNCTION calm(m util.mood) RETURNS boolean LANGUAGE sql AS $$ SELECT m = 'calm' $$;
        """,
    )
    _run(dst, "CREATE SCHEMA util; CREATE DOMAIN util.positive AS int;")  # the target has one of them
    _run(dst, "CREATE FUNCTION util.valid(bigint) RETURNS boolean LANGUAGE sql AS $$ SELECT true $$")
    output = _refused_plan(migrate, {}, capsys)
    options = "add 'util' to schemas, or create it in the target first"
    missing = "in schema 'util' which is not migrated and missing in the target, is used by"
    assert f"type util.mood, {missing} column moods of table items, function calm(util.mood): {options}" in output
    assert f"function util.valid(integer), {missing} constraint items_id_check on table items: {options}" in output
    assert f"function util.slug(text), {missing} default value for column slug of table items, view item_names:" in (
        output
    )
    assert f"function util.touch(), {missing} trigger touch on table items: {options}" in output
    assert "util.positive" not in output  # the target has it: used as it is
    _run(dst, "DROP SCHEMA util CASCADE")
    _untouched(dst)


def test_a_rule_on_a_selected_table_over_a_relation_not_migrated_is_refused_in_the_plan(
    airflow_db, migration_databases, migrate, capsys
):
    src, dst = migration_databases
    _run(
        src,
        """
        CREATE SCHEMA audit;
        CREATE TABLE audit.deletions (id int, at timestamptz);
        CREATE TABLE notes (order_id int, note text);
        CREATE TABLE orders (id int PRIMARY KEY, total numeric);
        CREATE RULE keep_deleted AS ON DELETE TO orders DO ALSO INSERT INTO audit.deletions VALUES (OLD.id, now());
        CREATE RULE drop_notes AS ON DELETE TO orders DO ALSO DELETE FROM notes WHERE order_id = OLD.id;
        CREATE VIEW order_notes AS SELECT o.id, n.note FROM orders o JOIN notes n ON n.order_id = o.id;
        """,
    )
    output = _refused_plan(migrate, {"tables": ["orders"]}, capsys)
    assert (
        "rule keep_deleted on table orders reads or writes table audit.deletions, which is not migrated and missing "
        "in the target: add it to the selection (tables, or 'audit' to schemas), create it in the target first, "
        "or drop the rule"
    ) in output
    assert "rule drop_notes on table orders reads or writes table notes, which is not migrated" in output
    assert "order_notes" not in output  # a view over them is left out and named in the plan, as before
    _untouched(dst)


def test_values_naming_objects_that_are_not_migrated_are_refused_in_the_plan(
    airflow_db, migration_databases, migrate, capsys
):
    """regclass, regtype, regprocedure, regnamespace values are copied as names: what they name
    must arrive with the migration or be in the target already."""
    src, dst = migration_databases
    _run(
        src,
        UTIL
        + """
        CREATE SCHEMA other;
        CREATE TABLE other.lookup (id int PRIMARY KEY);
        CREATE TABLE other.kept (id int);
        CREATE DOMAIN relation AS regclass;
        CREATE TABLE refs (id int PRIMARY KEY, rel regclass, dom relation, typ regtype, fn regprocedure,
                           ns regnamespace);
        INSERT INTO refs VALUES
            (1, 'refs', 'refs_pkey', 'integer', 'lower(text)', 'public'),
            (2, 'pg_class', 'other.kept', 'relation', 'util.slug(text)', 'util'),
            (3, 'other.lookup', 'other.lookup_pkey', 'util.mood', NULL, NULL),
            (4, NULL, NULL, NULL, NULL, NULL);
        """,
    )
    _run(dst, "CREATE SCHEMA other; CREATE TABLE other.kept (id int)")  # the target has it
    output = _refused_plan(migrate, {}, capsys)
    missing = "which are not migrated and missing in the target (the copy writes them as names"
    assert f"column rel of table refs holds values naming table other.lookup, {missing}" in output
    assert f"column dom of table refs holds values naming index other.lookup_pkey, {missing}" in output
    assert f"column typ of table refs holds values naming type util.mood, {missing}" in output
    assert f"column fn of table refs holds values naming function util.slug(text), {missing}" in output
    assert f"column ns of table refs holds values naming schema util, {missing}" in output
    assert "other.kept" not in output and "refs_pkey" not in output  # in the target, or migrated
    _run(dst, "DROP SCHEMA other CASCADE")
    _untouched(dst)


def test_a_migration_from_postgresql_18_compares_not_null_as_a_column_property(
    airflow_db, pg_server, make_database, make_conn_id, migrate
):
    from conftest import FAST_SERVER_SETTINGS

    from airflow_pool_provider.testing.postgres import TemporaryPostgres

    newer = TemporaryPostgres(FAST_SERVER_SETTINGS, major=18)  # 18 makes NOT NULL a constraint too
    server = newer.start()
    try:
        src_db, dst_db = make_database(server, prefix="src18"), make_database(prefix="dst")
        src = psycopg2.connect(server.dsn(src_db))
        src.autocommit = True
        _run(src, "CREATE TABLE t (id int PRIMARY KEY, name text NOT NULL); INSERT INTO t VALUES (1, 'a'), (2, 'b')")
        make_conn_id(src_db, server=server, conn_id="migration_source")
        make_conn_id(dst_db, conn_id="migration_target")
        run, report = run_dag(migrate, {"dry_run": False}, task_id="verify")
        assert run.state == "success" and report["verified"], states(run)
        dst = psycopg2.connect(pg_server.dsn(dst_db))
        not_null = (
            "SELECT attname FROM pg_attribute WHERE attrelid = 't'::regclass AND attnum > 0 AND attnotnull ORDER BY 1"
        )
        assert _rows(dst, not_null) == _rows(src, not_null) == [("id",), ("name",)]
        dst.close()
        src.close()
    finally:
        newer.cleanup()


def test_a_table_truncated_after_the_snapshot_is_refused_not_copied_empty(legacy):
    from airflow_pool_provider.migration import stages
    from airflow_pool_provider.migration.request import MigrationRequest
    from airflow_pool_provider.pool import ConnectionPool

    src, dst = legacy
    request = MigrationRequest(tables=("customers",), run_id="run-1", migration_id="truncated")
    source_pool = ConnectionPool(lambda: psycopg2.connect(src.dsn), max_size=6)
    target_pool = ConnectionPool(lambda: psycopg2.connect(dst.dsn), max_size=6)
    connect = psycopg2.extensions.parse_dsn(src.dsn)
    m = stages.Migration(request, source_pool, target_pool, connect, logging.getLogger("test"), 600.0)
    try:
        m.snapshots.ensure()
        stages.pre_data(m)
        batches = stages.plan_data(m)
        _run(src, "TRUNCATE customers CASCADE")  # after the snapshot: not MVCC-safe
        with pytest.raises(MigrationMistake, match=r'table "public"."customers" was truncated or rewritten'):
            for batch in batches:
                stages.copy_data(m, batch)
    finally:
        m.snapshots.release()
        source_pool.close()
        target_pool.close()


def test_a_finished_migration_of_a_table_without_a_unique_key_runs_again(airflow_db, migration_databases, migrate):
    src, dst = migration_databases
    _run(
        src,
        "CREATE TABLE logs (at int, line text); INSERT INTO logs SELECT g, 'l' || g FROM generate_series(1, 3000) g",
    )
    conf = {"dry_run": False, "chunk_size": 1000}
    run, report = run_dag(migrate, conf, task_id="verify")
    assert run.state == "success" and report["verified"]
    again, report = run_dag(migrate, conf, task_id="verify")  # it failed: "cannot resume exactly once"
    assert again.state == "success" and report["verified"], states(again)
    assert table_digest(dst, "logs", key=None) == table_digest(src, "logs", key=None)  # nothing doubled


def test_an_index_of_the_same_name_but_another_definition_is_a_difference(airflow_db, legacy, migrate, capsys):
    src, dst = legacy
    conf = {"tables": ["orders", "customers"], "dry_run": False}
    first, report = run_dag(migrate, conf, task_id="verify")
    assert first.state == "success" and report["verified"]
    _run(dst, "DROP INDEX orders_ordered_at; CREATE INDEX orders_ordered_at ON orders (status)")
    again, _ = run_dag(migrate, conf, task_id="verify")
    assert again.state == "failed" and states(again)["verify"] == "failed"
    output = capsys.readouterr()
    assert "index orders_ordered_at on orders defined otherwise" in output.out + output.err


def test_types_domains_and_functions_the_target_made_otherwise_are_differences(
    airflow_db, migration_databases, migrate, capsys
):
    src, dst = migration_databases
    _run(
        src,
        """
        CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
        CREATE DOMAIN positive AS int CHECK (VALUE > 0);
        CREATE FUNCTION answer() RETURNS int LANGUAGE sql AS 'SELECT 42';
        CREATE TABLE feelings (id int PRIMARY KEY, how mood, score positive);
        INSERT INTO feelings VALUES (1, 'ok', 3);
        """,
    )
    same = "CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy'); CREATE DOMAIN positive AS int CHECK (VALUE > 0);"
    _run(dst, same + "CREATE FUNCTION answer() RETURNS int LANGUAGE sql AS 'SELECT 42'")
    run, report = run_dag(migrate, {"dry_run": False}, task_id="verify")  # reused as they are: the same
    assert run.state == "success" and report["verified"], states(run)

    _run(dst, "DROP TABLE feelings; DROP TYPE mood; DROP DOMAIN positive; DROP FUNCTION answer()")
    _run(
        dst,
        """
        CREATE TYPE mood AS ENUM ('happy', 'sad', 'ok');
        CREATE DOMAIN positive AS int;
        CREATE FUNCTION answer() RETURNS int LANGUAGE sql AS 'SELECT 41';
        """,
    )
    _verify_fails_naming(
        migrate,
        {"dry_run": False, "mode": "replace"},
        capsys,
        "domain public.positive defined otherwise",
        "enum public.mood defined otherwise",
        "function public.answer() defined otherwise",
    )


_SCHEMA_LEVEL_COMMENTS = """
SELECT d.description, coalesce(t.typname, p.proname, n.nspname) FROM pg_description d
  LEFT JOIN pg_type t ON d.classoid = 'pg_type'::regclass AND t.oid = d.objoid
  LEFT JOIN pg_proc p ON d.classoid = 'pg_proc'::regclass AND p.oid = d.objoid
  LEFT JOIN pg_namespace n ON d.classoid = 'pg_namespace'::regclass AND n.oid = d.objoid
 WHERE coalesce(t.typnamespace, p.pronamespace, n.oid) = 'shop'::regnamespace ORDER BY 1
"""


def test_comments_on_schemas_types_domains_and_functions_arrive(airflow_db, migration_databases, migrate, capsys):
    src, dst = migration_databases
    _run(
        src,
        """
        CREATE SCHEMA shop; COMMENT ON SCHEMA shop IS 'the shop''s tables';
        CREATE TYPE shop.mood AS ENUM ('sad', 'ok'); COMMENT ON TYPE shop.mood IS 'how it went';
        CREATE DOMAIN shop.positive AS int CHECK (VALUE > 0); COMMENT ON DOMAIN shop.positive IS 'above zero';
        CREATE FUNCTION shop.score(shop.mood, int) RETURNS int LANGUAGE sql AS 'SELECT $2';
        COMMENT ON FUNCTION shop.score(shop.mood, int) IS 'scores a visit';
        CREATE TABLE shop.visits (id int PRIMARY KEY, how shop.mood, points shop.positive);
        """,
    )
    run, report = run_dag(migrate, {"dry_run": False, "schemas": ["shop"]}, task_id="verify")
    assert run.state == "success" and report["verified"], states(run)
    assert _rows(dst, _SCHEMA_LEVEL_COMMENTS) == _rows(src, _SCHEMA_LEVEL_COMMENTS)
    assert len(_rows(dst, _SCHEMA_LEVEL_COMMENTS)) == 4

    _run(dst, "COMMENT ON FUNCTION shop.score(shop.mood, int) IS 'changed'; COMMENT ON TYPE shop.mood IS NULL")
    with src.cursor() as scur, dst.cursor() as tcur:  # the verify stage's comparison
        found = [d.describe() for d in definitions.schema_differences(scur, tcur, ("shop",))]
    assert found == [
        "comment on function shop.score(shop.mood,integer) defined otherwise ('changed', not 'scores a visit')",
        "comment on type shop.mood is missing",
    ]


def test_columns_views_sequences_policies_statistics_and_rules_are_compared_by_definition(
    airflow_db, migration_databases, migrate, capsys
):
    src, dst = migration_databases
    _run(
        src,
        """
        CREATE TABLE accounts (
            id int GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
            owner text NOT NULL DEFAULT 'nobody',
            balance numeric(12, 2),
            doubled numeric GENERATED ALWAYS AS (balance * 2) STORED,
            region text, city text
        );
        CREATE TABLE audit (at timestamptz DEFAULT now(), what text);
        CREATE SEQUENCE tickets START 100;
        SELECT nextval('tickets'), nextval('tickets');
        INSERT INTO accounts (owner, balance, region, city) SELECT 'o' || g, g, 'r', 'c' FROM generate_series(1, 20) g;
        CREATE VIEW rich AS SELECT id, owner FROM accounts WHERE balance > 10;
        ALTER TABLE accounts ENABLE ROW LEVEL SECURITY;
        CREATE POLICY own_rows ON accounts FOR SELECT TO PUBLIC USING (owner = current_user);
        CREATE STATISTICS accounts_place (dependencies) ON region, city FROM accounts;
        CREATE RULE no_audit_delete AS ON DELETE TO audit DO INSTEAD NOTHING;
        """,
    )
    run, report = run_dag(migrate, {"dry_run": False}, task_id="verify")
    assert run.state == "success" and report["verified"], states(run)
    capsys.readouterr()

    _run(
        dst,
        """
        ALTER TABLE accounts ALTER COLUMN owner SET DEFAULT 'someone';
        ALTER TABLE accounts ALTER COLUMN city TYPE text COLLATE "C";
        ALTER TABLE accounts ALTER COLUMN id SET GENERATED ALWAYS;
        CREATE OR REPLACE VIEW rich AS SELECT id, owner FROM accounts WHERE balance > 1000;
        ALTER POLICY own_rows ON accounts USING (true);
        DROP STATISTICS accounts_place;
        DROP RULE no_audit_delete ON audit;
        ALTER TABLE accounts FORCE ROW LEVEL SECURITY;
        """,
    )
    _verify_fails_naming(
        migrate,
        {"dry_run": False, "mode": "resume"},
        capsys,
        "column owner on accounts defined otherwise",
        "column city on accounts defined otherwise",
        "column id on accounts defined otherwise",
        "query of rich defined otherwise",
        "policy own_rows on accounts defined otherwise",
        "statistics accounts_place on accounts is missing",
        "rule no_audit_delete on audit is missing",
        "row security of accounts defined otherwise",
    )
    _run(dst, "SELECT setval('tickets', 100, false)")  # post-data would move it on again: compared directly
    with src.cursor() as scur, dst.cursor() as tcur:
        found = definitions.sequence_differences(scur, tcur, TableName("public", "tickets"), None)
    assert [d.describe() for d in found] == [
        'sequence "public"."tickets" is behind the source (next value 100, not 102)'
    ]


def test_a_foreign_key_to_a_partitioned_table_arrives_validated_with_its_per_partition_keys(
    airflow_db, migration_databases, migrate
):
    src, dst = migration_databases
    _run(
        src,
        """
        CREATE TABLE accounts (id int PRIMARY KEY) PARTITION BY RANGE (id);
        CREATE TABLE accounts_low PARTITION OF accounts FOR VALUES FROM (0) TO (100);
        CREATE TABLE accounts_high PARTITION OF accounts FOR VALUES FROM (100) TO (200);
        INSERT INTO accounts VALUES (1), (150);
        CREATE TABLE transfers (id int PRIMARY KEY, account_id int REFERENCES accounts);
        INSERT INTO transfers VALUES (1, 1), (2, 150);
        """,
    )
    run, report = run_dag(migrate, {"dry_run": False}, task_id="verify")
    assert run.state == "success" and report["verified"], states(run)
    keys = (
        "SELECT conname, conrelid::regclass::text, confrelid::regclass::text, convalidated, conparentid <> 0 "
        "FROM pg_constraint WHERE contype = 'f' ORDER BY 1, 2, 3"
    )
    assert _rows(dst, keys) == _rows(src, keys)
    assert len(_rows(dst, keys)) == 3  # the key, and one per partition of the table it references


ODD_SCHEMAS = """
CREATE SCHEMA "Sales Dept"; CREATE SCHEMA "DATA";
CREATE TYPE "Sales Dept".mood AS ENUM ('calm', 'busy');
CREATE TABLE "Sales Dept"."order items" (id serial PRIMARY KEY, mood "Sales Dept".mood NOT NULL, note text);
CREATE TABLE "DATA"."SET" (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                           item int NOT NULL REFERENCES "Sales Dept"."order items" (id), x text);
CREATE INDEX "SET x" ON "DATA"."SET" (x);
INSERT INTO "Sales Dept"."order items" (mood, note)
SELECT (ARRAY['calm', 'busy'])[1 + g % 2]::"Sales Dept".mood, 'note ' || g FROM generate_series(1, 300) g;
INSERT INTO "DATA"."SET" (item, x) SELECT 1 + g % 300, 'x ' || g FROM generate_series(1, 500) g;
"""
ODD_TABLES = [("Sales Dept", "order items"), ("DATA", "SET")]


def test_schemas_and_tables_named_with_spaces_or_dump_words_arrive_and_are_replaced(
    airflow_db, migration_databases, migrate
):
    """The schema dump lists entries as ``<kind> <schema> <tag> <owner>`` without quoting: a schema
    with a space, or named like a kind's last word (``TABLE DATA``), is read by its fields."""
    src, dst = migration_databases
    _run(src, ODD_SCHEMAS)
    _run(dst, 'CREATE SCHEMA "Sales Dept"')  # made empty beforehand
    conf = {"schemas": ["Sales Dept", "DATA"], "chunk_size": 200}
    run, report = run_dag(migrate, conf, task_id="verify")
    assert run.state == "success", states(run)
    assert report["verified"]
    for schema, table in ODD_TABLES:
        digest = table_digest(dst, table, schema=schema)
        assert digest == table_digest(src, table, schema=schema) and digest[0] > 0, (schema, table)
    _run(dst, 'DELETE FROM "DATA"."SET" WHERE id <= 10')
    again, report = run_dag(migrate, {**conf, "mode": "replace"}, task_id="verify")  # a new run
    assert again.state == "success", states(again)
    assert report["verified"]
    for schema, table in ODD_TABLES:
        assert table_digest(dst, table, schema=schema) == table_digest(src, table, schema=schema), (schema, table)
