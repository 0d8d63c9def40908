"""The example DAGs of dags/ through Airflow itself (dag.test): copy_table and incremental_sync
(migrate_tables has tests/test_migration.py); none touches a database when parsed."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

from dag_runs import load_dag, run_dag, tries

from airflow_pool_provider.testing.data import create_events, table_digest

ORDERS = """
CREATE TYPE order_status AS ENUM ('new', 'paid', 'shipped', 'cancelled');
CREATE TABLE orders (id bigint PRIMARY KEY, status order_status NOT NULL, total numeric(12,2) NOT NULL,
                     updated_at timestamptz NOT NULL);
"""


def test_dag_files_parse_without_touching_a_database(monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    # No connection is defined and no server is named: parsing must not need either.
    monkeypatch.delenv("AIRFLOW_CONN_MIGRATION_SOURCE", raising=False)
    monkeypatch.delenv("AIRFLOW_CONN_MIGRATION_TARGET", raising=False)
    bag = DagBag(dag_folder=str(Path(__file__).parent.parent / "dags"))
    assert bag.import_errors == {}
    assert set(bag.dag_ids) == {"copy_table", "migrate_tables", "incremental_sync"}


def test_copy_table_copies_one_table(airflow_db, migration_databases):
    src, dst = migration_databases
    create_events(src, 3000)
    create_events(dst, 0)
    src.autocommit = dst.autocommit = False
    run, summary = run_dag(load_dag("copy_table", "copy_table.py"), {"chunk_size": 1000, "mode": "replace"})
    assert run.state == "success" and summary["verified"] and summary["rows"] == 3000
    assert table_digest(dst) == table_digest(src)


def _at(hour: int, minute: int = 0) -> datetime:
    return datetime(2025, 1, 1, hour, minute, tzinfo=timezone.utc)


def _sync(interval_end: datetime, conf: dict | None = None) -> tuple:
    dag = load_dag("incremental_sync", "incremental_sync.py")
    run = dag.test(logical_date=interval_end, run_conf=conf)
    from airflow.models.xcom import XComModel
    from airflow.settings import Session

    query = XComModel.get_many(run_id=run.run_id, dag_ids=dag.dag_id, task_ids="upsert", key="return_value")
    with Session() as session:
        row = session.scalars(query).first()
    return run, XComModel.deserialize_value(row) if row is not None else None


def _orders(src, dst, make_reader, make_conn_id) -> None:
    """orders in both databases; 500 rows in the source, stamped long before the runs' intervals."""
    for conn in (src, dst):
        with conn.cursor() as cur:
            cur.execute(ORDERS)
    # The source read as a role that may only read it: a row filter is refused to a superuser.
    make_conn_id(src.info.dbname, conn_id="migration_source", user=make_reader(src.info.dbname))
    with src.cursor() as cur:
        cur.execute(
            "INSERT INTO orders SELECT g, 'new', g, timestamptz '2024-12-01' + g * interval '1 minute' "
            "FROM generate_series(1, 500) g"
        )


def test_incremental_sync_loads_in_full_then_only_what_changed_in_the_interval(
    airflow_db, migration_databases, make_reader, make_conn_id
):
    src, dst = migration_databases
    _orders(src, dst, make_reader, make_conn_id)
    first, full = _sync(_at(10))
    assert first.state == "success" and full["rows"] == 500  # an empty target: the whole table
    interval = (first.data_interval_start, first.data_interval_end)

    # After the first run: new rows and changes stamped inside the next interval, one stamped just
    # before it (a late commit, within the lookback), one stamped long before (outside it).
    start = interval[1]
    with src.cursor() as cur:
        cur.execute(
            "INSERT INTO orders SELECT g, 'new', g, %s FROM generate_series(501, 520) g", (start + _minutes(30),)
        )
        cur.execute("UPDATE orders SET status = 'paid', updated_at = %s WHERE id <= 10", (start,))
        cur.execute("UPDATE orders SET status = 'shipped', updated_at = %s WHERE id = 100", (start - _minutes(5),))
        cur.execute("UPDATE orders SET status = 'cancelled', updated_at = %s WHERE id = 200", (start - _minutes(120),))
    second, delta = _sync(start + (interval[1] - interval[0]))
    assert second.state == "success"
    assert second.data_interval_start == start
    assert delta["rows"] == 20 + 10 + 1  # inserted, updated, committed late; not the one outside the lookback
    with dst.cursor() as cur:
        cur.execute("SELECT status, count(*) FROM orders GROUP BY 1 ORDER BY 1")
        assert cur.fetchall() == [("new", 509), ("paid", 10), ("shipped", 1)]  # id 200's change not seen

    again, repeat = _sync(start + (interval[1] - interval[0]))  # the same interval again: safe
    assert again.state == "success" and repeat["rows"] == 31
    with dst.cursor() as cur:
        cur.execute("SELECT count(*) FROM orders")
        assert cur.fetchone()[0] == 520


def _minutes(n: int) -> timedelta:
    return timedelta(minutes=n)


# The first upsert of the row with id 450 (the last chunk of 100) fails, as a mistake (not retried).
FAIL_ONCE = """
CREATE SEQUENCE fail_once;
CREATE FUNCTION fail_once() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.id = 450 AND nextval('fail_once') = 1 THEN
        RAISE EXCEPTION 'injected failure' USING ERRCODE = '23514';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER fail_once BEFORE INSERT ON orders FOR EACH ROW EXECUTE FUNCTION fail_once();
"""


def _one(conn, query: str, params: tuple = ()):
    with conn.cursor() as cur:
        cur.execute(query, params)
        return cur.fetchone()[0]


def test_a_first_load_stopped_after_some_chunks_is_finished_by_the_next_run(
    airflow_db, migration_databases, make_reader, make_conn_id
):
    """The target has rows after a stopped first load: the next run still loads every row (the
    ledger says the first load is not done), and the run after it reads the changes made since the
    first load began, also to rows that load had copied before it stopped."""
    src, dst = migration_databases
    _orders(src, dst, make_reader, make_conn_id)
    with dst.cursor() as cur:
        cur.execute(FAIL_ONCE)
    conf = {"chunk_size": 100}
    first, _ = _sync(_at(10), conf)
    assert first.state == "failed"
    assert 0 < _one(dst, "SELECT count(*) FROM orders") < 500
    # The first load began at 10:05 (the ledger's clock set back to the runs' made-up hours); then
    # a row it had copied changed.
    changed = _one(dst, "SELECT min(id) FROM orders")
    with dst.cursor() as cur:
        cur.execute("UPDATE airflow_pool_provider_copy_chunks SET planned_at = %s", (_at(10, 5),))
    with src.cursor() as cur:
        cur.execute("UPDATE orders SET status = 'paid', updated_at = %s WHERE id = %s", (_at(10, 20), changed))

    second, _ = _sync(_at(11), conf)  # the interval [10:00, 11:00) with a target not empty
    assert second.state == "success"
    assert _one(dst, "SELECT count(*) FROM orders") == 500  # the first load finished, not just its hour

    third, delta = _sync(_at(12), conf)  # [11:00, 12:00), and what changed since the first load began
    assert third.state == "success" and delta["rows"] == 1
    assert table_digest(dst, "orders") == table_digest(src, "orders")


def test_incremental_sync_fails_once_on_a_table_name_that_cannot_be_read(airflow_db, migration_databases, capsys):
    dag = load_dag("incremental_sync", "incremental_sync.py")
    run = dag.test(logical_date=_at(10), run_conf={"table": "a.b.c"})
    assert run.state == "failed" and tries(run, "changed_rows") == 1  # a mistake: the DAG's retries are not used
    output = capsys.readouterr().out
    assert "cannot read table name 'a.b.c'" in output and "not retried: trying again cannot help" in output
