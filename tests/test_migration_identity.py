"""A migration keeps to itself: its id tells it from every other migration (other databases behind
the same connection ids, ids that share a beginning), its snapshot's holder is ended by no one
else, ``replace`` clears only its own records, and a migration onto its own source is refused."""

from __future__ import annotations

import logging

import psycopg2
import pytest
from copy_helpers import ledger_counts
from migration_tasks import migration_task
from observe import wait_until
from psycopg2 import sql

from airflow_pool_provider.errors import MigrationMistake
from airflow_pool_provider.migration import stages
from airflow_pool_provider.migration.ledger import WHOLE_STAGE, MigrationLedger, Stage
from airflow_pool_provider.migration.records import PreDataRecord
from airflow_pool_provider.migration.request import MigrationRequest, Mode
from airflow_pool_provider.testing.data import table_digest

LOG = logging.getLogger("test")
_ONE_ROW = "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1)"


def _connect(pg_server, database: str):
    conn = psycopg2.connect(pg_server.dsn(database))
    conn.autocommit = True
    return conn


def _one(conn, query, params=None):
    with conn.cursor() as cur:
        cur.execute(query, params)
        return cur.fetchone()[0]


def _holders(conn, src_db: str) -> list[int]:
    """The backends of snapshot holders on ``src_db``."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND application_name LIKE 'pool-provider snapshot %%'",
            (src_db,),
        )
        return [row[0] for row in cur.fetchall()]


def _importable(pg_server, src_db: str, snapshot: str) -> bool:
    conn = psycopg2.connect(pg_server.dsn(src_db))
    try:
        with conn.cursor() as cur:
            cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            cur.execute("SET TRANSACTION SNAPSHOT %s", (snapshot,))
            cur.execute("SELECT count(*) FROM t")
            return cur.fetchone()[0] == 1
    finally:
        conn.close()


def _stage(operator_class, migration_id: str | None):
    """Run one stage's operator as a task would, on the form's default connection ids."""
    operator = operator_class(
        task_id="stage",
        source_conn_id="migration_source",
        target_conn_id="migration_target",
        schemas=["public"],
        migration_id=migration_id,
    )
    return operator.execute({"run_id": "run-1"})


@pytest.mark.parametrize(
    "migration_ids",
    [(None, None), ("x" * 40 + "-first", "x" * 40 + "-second")],
    ids=["derived ids", "ids equal in their first 40 characters"],
)
def test_releasing_one_migrations_snapshot_leaves_another_on_the_same_server_alone(
    pg_server, make_database, make_conn_id, migration_ids
):
    """Two migrations of other databases on one server, behind the same connection ids."""
    from airflow_pool_provider.operators.migration import MigrationReleaseOperator, MigrationSnapshotOperator

    databases = [(make_database(prefix="src"), make_database(prefix="dst")) for _ in migration_ids]
    admin = _connect(pg_server, databases[0][0])
    snapshots = []
    try:
        for (src_db, dst_db), migration_id in zip(databases, migration_ids, strict=True):
            pg_server.execute(_ONE_ROW, dbname=src_db)
            make_conn_id(src_db, conn_id="migration_source")
            make_conn_id(dst_db, conn_id="migration_target")
            snapshots.append(_stage(MigrationSnapshotOperator, migration_id))
        (first_src, _), (second_src, second_dst) = databases
        second_holder = _holders(admin, second_src)
        assert len(second_holder) == 1 and len(_holders(admin, first_src)) == 1

        assert _stage(MigrationReleaseOperator, migration_ids[1]) == 1  # the connections name the second now
        wait_until(lambda: not _holders(admin, second_src), timeout=10, what="the second holder to end")
        assert _holders(admin, first_src)  # the first migration's holder lives on
        assert _importable(pg_server, first_src, snapshots[0])

        make_conn_id(databases[0][0], conn_id="migration_source")
        make_conn_id(databases[0][1], conn_id="migration_target")
        assert _stage(MigrationReleaseOperator, migration_ids[0]) == 1
        wait_until(lambda: not _holders(admin, first_src), timeout=10, what="the first holder to end")
    finally:
        for src_db, _ in databases:  # whatever happened, no holder of this test outlives it
            for pid in _holders(admin, src_db):
                _one(admin, "SELECT pg_terminate_backend(%s)", (pid,))
        admin.close()


def test_a_migration_started_under_the_id_an_earlier_version_derived_goes_on_under_it(pg_server, make_database):
    src_db, dst_db = make_database(prefix="src"), make_database(prefix="dst")
    request = MigrationRequest(tables=("t",))
    earlier = request.earlier_derived_id("migration_source", "migration_target")
    with migration_task(pg_server.dsn(src_db), pg_server.dsn(dst_db), request) as m:
        assert m.migration_id != earlier and m.migration_id.startswith("migration-")  # a new migration
        new = m.migration_id
        with m.target_pool.connection() as conn, conn.cursor() as cur:  # an earlier version's records
            ledger = MigrationLedger(request.ledger_schema, earlier)
            ledger.ensure(cur)
            ledger.record(cur, Stage.PRE_DATA, WHOLE_STAGE, PreDataRecord(1, (), "run-1", ()))
            conn.commit()
    with migration_task(pg_server.dsn(src_db), pg_server.dsn(dst_db), request) as m:
        assert m.migration_id == earlier  # it finds its own records
    with migration_task(pg_server.dsn(src_db), pg_server.dsn(dst_db), MigrationRequest(tables=("t", "u"))) as m:
        assert m.migration_id not in (earlier, new)  # another selection: another migration
    with migration_task(
        pg_server.dsn(src_db), pg_server.dsn(dst_db), MigrationRequest(tables=("t",), migration_id="given")
    ) as m:
        assert m.migration_id == "given"


_TABLES = {"m1": "a", "m10": "b", "m1:x": "c"}


def _migrate(pg_server, src_db: str, dst_db: str, request: MigrationRequest) -> None:
    with migration_task(pg_server.dsn(src_db), pg_server.dsn(dst_db), request) as m:
        try:
            m.snapshots.ensure()
            stages.pre_data(m)
            for batch in stages.plan_data(m):
                stages.copy_data(m, batch)
        finally:
            m.snapshots.release()


def _pending_batches(pg_server, src_db: str, dst_db: str, request: MigrationRequest) -> int:
    with migration_task(pg_server.dsn(src_db), pg_server.dsn(dst_db), request) as m:
        try:
            return len(stages.plan_data(m))
        finally:
            m.snapshots.release()


def test_replace_clears_only_its_own_records_not_those_of_ids_it_begins(pg_server, make_database):
    src_db, dst_db = make_database(prefix="src"), make_database(prefix="dst")
    dst = _connect(pg_server, dst_db)
    try:
        for table in _TABLES.values():
            pg_server.execute(
                sql.SQL("CREATE TABLE {0} (id int PRIMARY KEY); INSERT INTO {0} SELECT generate_series(1, 300)").format(
                    sql.Identifier(table)
                ),
                dbname=src_db,
            )
        requests = {
            i: MigrationRequest(tables=(t,), migration_id=i, chunk_size=100, run_id="run-1") for i, t in _TABLES.items()
        }
        for request in requests.values():
            _migrate(pg_server, src_db, dst_db, request)
        others = {i: ledger_counts(dst, f'{i}:"public"."{_TABLES[i]}"') for i in ("m10", "m1:x")}
        assert all(c.done == c.chunks == 3 for c in others.values())
        digests = {t: table_digest(dst, t, key=None) for t in ("b", "c")}

        replace = MigrationRequest(tables=("a",), migration_id="m1", chunk_size=100, mode=Mode.REPLACE, run_id="run-2")
        _migrate(pg_server, src_db, dst_db, replace)  # in a new run: m1 starts over

        assert _one(dst, "SELECT count(*) FROM a") == 300
        for migration_id in others:  # the others keep their records, rows, and nothing to copy again
            assert ledger_counts(dst, f'{migration_id}:"public"."{_TABLES[migration_id]}"') == others[migration_id]
            assert _one(
                dst,
                "SELECT count(*) FROM airflow_pool_provider_migrations WHERE migration_id = %s AND stage = 'pre_data'",
                (migration_id,),
            )
            assert _pending_batches(pg_server, src_db, dst_db, requests[migration_id]) == 0
        assert {t: table_digest(dst, t, key=None) for t in ("b", "c")} == digests
    finally:
        dst.close()


@pytest.mark.parametrize("mode", [Mode.REPLACE, Mode.RESUME])
def test_a_migration_onto_its_own_source_is_refused_in_the_plan_once(pg_server, make_database, make_conn_id, mode):
    from airflow.providers.common.compat.sdk import AirflowFailException

    from airflow_pool_provider.operators.migration import MigrationPlanOperator

    database = make_database(prefix="src")
    pg_server.execute(_ONE_ROW, dbname=database)
    make_conn_id(database, conn_id="migration_source")
    make_conn_id(database, conn_id="migration_target")
    plan = MigrationPlanOperator(
        task_id="plan", source_conn_id="migration_source", target_conn_id="migration_target", mode=mode.value
    )
    with pytest.raises(AirflowFailException, match="the source and the target are the same database") as raised:
        plan.execute({"run_id": "run-1"})
    assert "not retried" in str(raised.value) and "Point the target connection at another database" in str(raised.value)


@pytest.mark.timeout(60)  # it waited for its own pg_dump forever
def test_pre_data_onto_its_own_source_is_refused_without_waiting(pg_server, make_database):
    database = make_database(prefix="src")
    pg_server.execute(_ONE_ROW, dbname=database)
    request = MigrationRequest(tables=("t",), mode=Mode.REPLACE, run_id="run-1", migration_id="onto-itself")
    with migration_task(pg_server.dsn(database), pg_server.dsn(database), request) as m:
        try:
            with pytest.raises(MigrationMistake, match="the source and the target are the same database"):
                stages.pre_data(m)  # run alone, without the plan
        finally:
            m.snapshots.release()
    assert pg_server.execute("SELECT count(*) FROM t", dbname=database) == [(1,)]
