"""ChunkedTableCopyOperator through Airflow itself: parse-time checks, dag.test, XCom summary."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from dag_runs import load_dag, run_dag, tries

from airflow_pool_provider.operators import ChunkedTableCopyOperator
from airflow_pool_provider.testing.data import table_digest

DAGS = Path(__file__).parent / "dags"


@pytest.fixture
def copy_dag():
    return load_dag("copy_table_test")


@pytest.fixture
def source_and_target(make_events, make_conn_id):
    src_db, dst_db, src, dst = make_events(5000)
    return src, dst, make_conn_id(src_db), make_conn_id(dst_db)


def test_dag_copies_table_and_returns_summary(airflow_db, copy_dag, source_and_target):
    src, dst, src_id, dst_id = source_and_target
    run, summary = run_dag(copy_dag, {"source_conn_id": src_id, "target_conn_id": dst_id, "chunk_size": 700})
    assert run.state == "success"
    assert table_digest(dst) == table_digest(src)
    assert summary is not None
    assert summary["rows"] == 5000 and summary["chunks"] == 8
    assert summary["verification"]["counts"] == "match"
    assert summary["verification"]["checksums"].startswith("match")
    assert summary["verified"] is True and summary["verification"]["checksums_match"] is True
    assert summary["rows_per_second"] > 0 and summary["bytes"] > 0


def test_task_log_numbers_chunks_from_one_and_prints_each_pool_line_once(
    airflow_db, copy_dag, source_and_target, capsys, caplog
):
    src, dst, src_id, dst_id = source_and_target
    with caplog.at_level("INFO"):
        run, _ = run_dag(copy_dag, {"source_conn_id": src_id, "target_conn_id": dst_id, "chunk_size": 500})
    assert run.state == "success"
    output = capsys.readouterr()
    log = output.out + output.err + caplog.text  # the task's own lines, and the listener's
    done = re.findall(r"chunk (\d+)/(\d+) done", log)
    assert sorted(int(n) for n, _ in done) == list(range(1, 11)) and {t for _, t in done} == {"10"}
    for conn_id in (src_id, dst_id):  # 10 chunks: the end-of-task line only, not also a 10th-chunk one
        assert len(re.findall(rf"pool {conn_id}: size=", log)) == 1


def test_mapped_copies_are_labelled_source_to_target(airflow_db, source_and_target):
    from airflow.models.taskinstance import TaskInstance
    from airflow.settings import Session
    from sqlalchemy import select

    src, dst, src_id, dst_id = source_and_target
    for conn in (src, dst):
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE more_events AS SELECT * FROM events")
        conn.commit()
    dag = load_dag("mapped_copy", "mapped_copy_dag.py")
    run = dag.test(run_conf={"source_conn_id": src_id, "target_conn_id": dst_id})
    assert run.state == "success"
    with Session() as session:
        labels = session.scalars(
            select(TaskInstance.rendered_map_index)
            .where(TaskInstance.run_id == run.run_id, TaskInstance.dag_id == "mapped_copy")
            .order_by(TaskInstance.map_index)
        ).all()
    assert labels == ["events -> events", "public.more_events -> public.more_events"]
    assert dag.get_task("copy").pool_slots == 5  # what the scheduler reserves: 2 workers x 2 + 1
    assert ChunkedTableCopyOperator.template_fields_renderers["where"] == "sql"


def _reader_conn_id(src, make_reader, make_conn_id) -> str:
    """A connection to the source as a role that may only read it: a row filter is refused to a superuser."""
    return make_conn_id(src.info.dbname, user=make_reader(src.info.dbname))


def test_dag_where_param_copies_subset(airflow_db, copy_dag, source_and_target, make_reader, make_conn_id):
    src, dst, _, dst_id = source_and_target
    src_id = _reader_conn_id(src, make_reader, make_conn_id)
    run, summary = run_dag(copy_dag, {"source_conn_id": src_id, "target_conn_id": dst_id, "where": "id <= 1234"})
    assert run.state == "success"
    assert summary["rows"] == 1234
    with dst.cursor() as cur:
        cur.execute("SELECT count(*), min(id), max(id) FROM events")
        assert cur.fetchone() == (1234, 1, 1234)
    dst.commit()


def test_task_retry_resumes_from_the_ledger_without_duplicates(airflow_db, copy_dag, source_and_target):
    src, dst, src_id, dst_id = source_and_target
    with dst.cursor() as cur:
        # Fails the first time row 3500 arrives (sequences ignore rollbacks), then lets it through.
        cur.execute("""
            CREATE SEQUENCE fail_once;
            CREATE FUNCTION fail_once() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.id = 3500 AND nextval('fail_once') = 1 THEN RAISE EXCEPTION 'injected failure'; END IF;
                RETURN NEW;
            END $$;
            CREATE TRIGGER fail_once BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION fail_once();
        """)
    dst.commit()
    run, summary = run_dag(
        copy_dag, {"source_conn_id": src_id, "target_conn_id": dst_id, "chunk_size": 1000, "parallelism": 1}
    )
    assert run.state == "success"
    assert table_digest(dst) == table_digest(src)  # nothing lost, nothing doubled
    # The retry (same run id, so same copy) skipped the three chunks the first attempt committed.
    assert summary["chunks_skipped"] == 3 and summary["rows"] == 2000 and summary["total_rows"] == 5000


def test_unknown_connection_fails_the_task_once_with_clear_message(airflow_db, copy_dag, source_and_target, capsys):
    src, dst, src_id, dst_id = source_and_target
    run, _ = run_dag(copy_dag, {"source_conn_id": "no_such_conn", "target_conn_id": dst_id})
    assert run.state == "failed"
    assert tries(run) == 1  # a mistake: the task's retries=1 is not used
    captured = capsys.readouterr()
    assert "'no_such_conn' is not defined" in captured.out + captured.err
    assert table_digest(dst)[0] == 0


MISTAKES = {
    "duplicate key": ("INSERT INTO events SELECT * FROM events_seed", "duplicate key value"),
    "missing target table": ("DROP TABLE events", 'target table "events" does not exist'),
    "schema mismatch": (
        "ALTER TABLE events ALTER COLUMN account_id TYPE bigint",
        "is integer in the source but bigint in the target",
    ),
    "checksum mismatch": (
        """
        CREATE FUNCTION corrupt() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN NEW.note := 'changed'; RETURN NEW; END $$;
        CREATE TRIGGER corrupt BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION corrupt();""",
        "checksum mismatch",
    ),
    "bad filter": (None, "does not work on the source table"),
    "filter with a superuser source": (None, "is (or may become) a superuser"),
}


@pytest.mark.parametrize("case", list(MISTAKES))
def test_a_mistake_fails_the_task_once_without_retries(
    airflow_db, copy_dag, source_and_target, make_reader, make_conn_id, capsys, case
):
    src, dst, src_id, dst_id = source_and_target
    setup, message = MISTAKES[case]
    with dst.cursor() as cur:
        cur.execute("CREATE TABLE events_seed AS SELECT * FROM events LIMIT 0")
        cur.execute("INSERT INTO events_seed VALUES (42, 1, 'click', '{}', 1.00, now(), NULL)")
        if setup:
            cur.execute(setup)
    dst.commit()
    conf = {"source_conn_id": src_id, "target_conn_id": dst_id, "chunk_size": 1000}
    if case == "bad filter":
        conf["where"] = "no_such_column = 1"
        conf["source_conn_id"] = _reader_conn_id(src, make_reader, make_conn_id)
    if case == "filter with a superuser source":
        conf["where"] = "id > 0 AND pg_read_file('PG_VERSION') <> ''"
    run, _ = run_dag(copy_dag, conf)
    assert run.state == "failed"
    assert tries(run) == 1  # AirflowFailException: Airflow does not retry it
    output = capsys.readouterr()
    assert message in output.out + output.err
    assert "not retried: trying again cannot help" in output.out + output.err


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"chunk_size": 0}, "chunk_size must be a positive integer"),
        ({"chunk_size": "abc"}, "chunk_size must be a positive integer"),
        ({"parallelism": -2}, "parallelism must be a positive integer"),
        ({"mode": "merge"}, "mode must be one of append, replace, upsert"),
        ({"where": "true; DROP TABLE events"}, "';' outside a string"),
        ({"where": "1=1) OR (1=1"}, "closes more parentheses than were opened"),
        ({"parallelism": 1000}, "at most 32"),
        ({"chunk_size": 10**30}, "at most 10,000,000"),
        ({"pool_slots": 2}, "pool_slots=2 leaves no room for a worker"),
        ({"source_conn_id": ""}, "source_conn_id must name an Airflow connection"),
        ({"source_table": '"unterminated'}, "cannot read table name"),
        ({"conflict_columns": ["id"]}, "conflict_columns only applies to mode='upsert'"),
    ],
)
def test_invalid_parameters_fail_when_the_dag_is_parsed(kwargs, message):
    args = {"task_id": "t", "source_conn_id": "a", "target_conn_id": "b", "source_table": "events", **kwargs}
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ChunkedTableCopyOperator(**args)


def test_templated_values_are_checked_after_rendering():
    op = ChunkedTableCopyOperator(
        task_id="t",
        source_conn_id="a",
        target_conn_id="b",
        source_table="{{ params.t }}",
        chunk_size="{{ params.n }}",
    )
    op.source_table, op.chunk_size = "events", "0"  # what rendering would produce
    with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
        op._spec()
    op.chunk_size = "250"
    assert op._spec().chunk_size == 250


def test_dag_file_parses_without_import_errors():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS))
    assert bag.import_errors == {}
    assert "copy_table_test" in bag.dag_ids


def test_the_example_dag_follows_airflow_conventions():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(Path(__file__).parent.parent / "dags"))
    assert bag.import_errors == {}
    dag = bag.dags["copy_table"]
    assert dag.max_active_runs == 1
    missing = [name for name, param in dag.params.items() if not dag.params.get_param(name).description]
    assert missing == []
    task = dag.get_task("copy")
    assert task.pool_slots == 9  # the connections of its largest parallelism, 4
    assert dag.params.get_param("parallelism").schema["maximum"] == 4
