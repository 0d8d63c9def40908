"""OpenLineage and StatsD through Airflow itself: the copy DAG runs with ``dag.test()`` and the
lineage events and metric datagrams are read back from where Airflow sends them."""

from __future__ import annotations

import json
import socket
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from dag_runs import load_dag, run_dag

from airflow_pool_provider.testing.data import table_digest

OPENLINEAGE_PLUGIN_MODULE = "airflow.providers.openlineage.plugins.openlineage"


@pytest.fixture
def copy_dag():
    return load_dag("copy_table_test")


@dataclass
class Tables:
    src: Any
    dst: Any
    src_db: str
    dst_db: str
    src_id: str
    dst_id: str


@pytest.fixture
def tables(make_events, make_conn_id) -> Tables:
    """A source ``events`` table of 5000 rows and an empty target, each in its own database."""
    src_db, dst_db, src, dst = make_events(5000)
    return Tables(src, dst, src_db, dst_db, make_conn_id(src_db), make_conn_id(dst_db))


# -- OpenLineage -------------------------------------------------------------------------------


def _reload_task_plugins() -> None:
    """Make the next task load its plugins, and so decide on OpenLineage, anew.

    The provider decides once, when its plugin module is imported: ``OpenLineageProviderPlugin``
    has its listener only if ``conf.is_disabled()`` is false then (``[openlineage] disabled`` unset
    and some transport configured). The task SDK loads the plugins and builds its listener manager
    once per process, and a registered listener emits whatever the config says later. So the
    module is imported again and those caches are emptied, before the test and after it. (The
    provider's config readers are cached too, except under pytest >= 8.2, which sets
    ``PYTEST_VERSION``.)
    """
    from airflow.providers.openlineage import conf as ol_conf
    from airflow.providers.openlineage.plugins.listener import get_openlineage_listener
    from airflow.sdk import lineage, listener, plugins_manager

    for reader in vars(ol_conf).values():
        if getattr(reader, "__module__", None) == ol_conf.__name__ and hasattr(reader, "cache_clear"):
            reader.cache_clear()
    sys.modules.pop(OPENLINEAGE_PLUGIN_MODULE, None)
    plugins_manager._get_plugins.cache_clear()
    plugins_manager.get_hook_lineage_readers_plugins.cache_clear()
    lineage.get_hook_lineage_collector.cache_clear()
    listener.get_listener_manager.cache_clear()
    get_openlineage_listener.cache_clear()  # a new adapter, so a client for this test's transport


def _openlineage_listening() -> bool:
    from airflow.providers.openlineage.plugins.listener import OpenLineageListener
    from airflow.sdk.listener import get_listener_manager

    return any(isinstance(p, OpenLineageListener) for p in get_listener_manager().pm.get_plugins())


@pytest.fixture
def openlineage_events(tmp_path: Path) -> Iterator[Path]:
    """OpenLineage enabled for this test only, writing one JSON event a line to the returned file.

    ``execute_in_thread``: the task runner emits each task event in a thread and joins it (up to
    ``[openlineage] execution_timeout``) before going on, instead of forking this pytest process;
    so every event of a task is in the file when ``dag.test()`` returns. DAG-run events come from
    Airflow core's listener manager and a process pool: that manager is built now, while the
    provider is still disabled, so this test emits task events only and starts no processes.
    """
    from airflow.listeners.listener import get_listener_manager as core_listener_manager

    events = tmp_path / "openlineage.jsonl"
    core_listener_manager()
    patch = pytest.MonkeyPatch()
    try:
        patch.setenv("AIRFLOW__OPENLINEAGE__DISABLED", "False")
        patch.setenv(
            "AIRFLOW__OPENLINEAGE__TRANSPORT",
            json.dumps({"type": "file", "log_file_path": str(events), "append": True}),
        )
        patch.setenv("AIRFLOW__OPENLINEAGE__EXECUTE_IN_THREAD", "True")
        _reload_task_plugins()
        assert _openlineage_listening(), "the OpenLineage provider did not enable itself"
        yield events
    finally:
        patch.undo()
        _reload_task_plugins()
    assert not _openlineage_listening(), "OpenLineage is still enabled for the tests that follow"


def _task_events(path: Path, run_id: str) -> dict[str, dict[str, Any]]:
    """The copy task's events of one DAG run, by event type."""
    found: dict[str, dict[str, Any]] = {}
    lines = path.read_text().splitlines() if path.exists() else []
    for event in map(json.loads, lines):
        facets = event["run"]["facets"]
        if event["job"]["name"] == "copy_table_test.copy" and facets["airflow"]["dagRun"]["run_id"] == run_id:
            assert event["eventType"] not in found, f"two {event['eventType']} events for one task run"
            found[event["eventType"]] = event
    return found


def _datasets(items: list[dict[str, Any]]) -> list[dict[str, str]]:
    return [{"namespace": d["namespace"], "name": d["name"]} for d in items]


def test_openlineage_reports_source_and_target_tables(
    airflow_db, copy_dag, tables, pg_server, openlineage_events, capsys
):
    run, summary = run_dag(
        copy_dag, {"source_conn_id": tables.src_id, "target_conn_id": tables.dst_id, "chunk_size": 1000}
    )
    assert run.state == "success" and summary["rows"] == 5000
    assert table_digest(tables.dst) == table_digest(tables.src)

    events = _task_events(openlineage_events, run.run_id)
    assert set(events) == {"START", "COMPLETE"}
    namespace = f"postgres://{pg_server.host}:{pg_server.port}"
    complete = events["COMPLETE"]
    assert _datasets(complete["inputs"]) == [{"namespace": namespace, "name": f"{tables.src_db}.public.events"}]
    assert _datasets(complete["outputs"]) == [{"namespace": namespace, "name": f"{tables.dst_db}.public.events"}]
    output = capsys.readouterr()
    assert "OpenLineage method failed" not in output.out + output.err


def test_failed_copy_emits_a_fail_event_and_the_listener_keeps_working(
    airflow_db, copy_dag, tables, make_database, make_conn_id, openlineage_events, capsys
):
    no_table_id = make_conn_id(make_database(prefix="empty"))  # a database without ``events``
    failed, _ = run_dag(copy_dag, {"source_conn_id": tables.src_id, "target_conn_id": no_table_id})
    assert failed.state == "failed"
    fail = _task_events(openlineage_events, failed.run_id)["FAIL"]
    assert 'target table "events" does not exist' in fail["run"]["facets"]["errorMessage"]["message"]
    assert fail["inputs"] == [] and fail["outputs"] == []  # nothing was copied: no lineage claimed
    output = capsys.readouterr()
    assert "OpenLineage method failed" not in output.out + output.err
    assert "Failed to extract OpenLineage metadata" not in output.out + output.err

    # The same listener, in the same process, still reports the next copy.
    run, _ = run_dag(copy_dag, {"source_conn_id": tables.src_id, "target_conn_id": tables.dst_id})
    assert run.state == "success"
    complete = _task_events(openlineage_events, run.run_id)["COMPLETE"]
    assert [d["name"] for d in complete["outputs"]] == [f"{tables.dst_db}.public.events"]


# -- StatsD ------------------------------------------------------------------------------------


@dataclass
class Metric:
    name: str
    value: float
    kind: str
    tags: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, line: str) -> Metric:
        """``name[,tag=value...]:value|type`` (StatsD with InfluxDB-style tags)."""
        stat, _, rest = line.rpartition(":")
        value, kind = rest.split("|")[:2]
        name, *tags = stat.split(",")
        return cls(name, float(value), kind, dict(tag.split("=", 1) for tag in tags))


class StatsdReceiver:
    """A UDP socket on a free loopback port; a thread reads datagrams until :meth:`stop`."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.lines: list[str] = []
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._read, name="statsd-receiver", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while True:
            try:
                data = self.sock.recv(65535)
            except TimeoutError:
                if self._stopping.is_set():  # nothing more queued after stop(): done
                    return
                continue
            self.lines.extend(data.decode().splitlines())

    def stop(self) -> list[Metric]:
        """Everything received; datagrams sent before the call are all read first."""
        self._stopping.set()
        self._thread.join(timeout=10)
        assert not self._thread.is_alive()
        return [Metric.parse(line) for line in self.lines]

    def close(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=10)
        self.sock.close()


@pytest.fixture
def statsd_receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[StatsdReceiver]:
    """Airflow's task-side ``Stats`` sending to a StatsD receiver of this test, with tags.

    The task runner's ``main()`` initializes ``Stats`` from the config; ``dag.test()`` runs tasks
    in-process without it, so this does what ``main()`` does, and puts the old backend back after.
    """
    from airflow.sdk._shared.observability.metrics import stats
    from airflow.sdk.configuration import conf
    from airflow.sdk.observability.metrics import stats_utils

    receiver = StatsdReceiver()
    for key, value in {
        "STATSD_ON": "True",
        "STATSD_HOST": "127.0.0.1",
        "STATSD_PORT": str(receiver.port),
        "STATSD_PREFIX": "airflow",
        "STATSD_INFLUXDB_ENABLED": "True",
    }.items():
        monkeypatch.setenv(f"AIRFLOW__METRICS__{key}", value)
    for attr in ("_factory", "_backend", "_export_legacy_names"):
        monkeypatch.setattr(stats, attr, getattr(stats, attr))  # restored after the test
    stats.initialize(
        factory=stats_utils.get_stats_factory(), export_legacy_names=conf.getboolean("metrics", "legacy_names_on")
    )
    try:
        yield receiver
    finally:
        backend = stats._backend
        if backend is not None and hasattr(backend, "statsd"):
            backend.statsd.close()
        receiver.close()


def test_copy_and_pool_metrics_go_out_through_airflow_statsd(airflow_db, copy_dag, tables, statsd_receiver):
    from airflow_pool_provider import registry

    run, summary = run_dag(
        copy_dag,
        {"source_conn_id": tables.src_id, "target_conn_id": tables.dst_id, "chunk_size": 500, "parallelism": 2},
    )
    assert run.state == "success"
    metrics = statsd_receiver.stop()

    copy_tags = {"source": tables.src_id, "target": tables.dst_id, "table": "public.events"}

    def total(name: str) -> float:
        sent = [m for m in metrics if m.name == f"airflow.pooled_postgres.copy.{name}"]
        assert sent and all(m.kind == "c" and m.tags == copy_tags for m in sent), sent
        return sum(m.value for m in sent)

    assert total("rows") == 5000
    assert total("chunks") == 10
    assert total("bytes") == summary["bytes"]
    assert not [m for m in metrics if m.name == "airflow.pooled_postgres.copy.chunk_retries"]

    for conn_id in (tables.src_id, tables.dst_id):
        last = {
            m.name.rsplit(".", 1)[1]: m.value
            for m in metrics
            if m.name.startswith("airflow.pooled_postgres.pool.") and m.tags == {"conn_id": conn_id}
        }
        assert {"size", "idle", "in_use", "waiting", "max_size"} <= set(last), (conn_id, last)
        assert last["max_size"] == registry.pools()[conn_id].stats()["max_size"]
        assert last["in_use"] == 0 and last["waiting"] == 0  # sent at task end: all given back
        assert 1 <= last["size"] <= last["max_size"]
        assert all(m.kind == "g" for m in metrics if m.name.startswith("airflow.pooled_postgres.pool."))


def test_the_hooks_copy_expert_reports_to_the_hook_lineage_collector(tables, openlineage_events, tmp_path):
    from airflow.providers.common.compat.lineage.hook import get_hook_lineage_collector

    from airflow_pool_provider.hooks.pooled_postgres import PooledPostgresHook

    dump = tmp_path / "events.tsv"
    PooledPostgresHook(tables.src_id).copy_expert("COPY events TO STDOUT", str(dump))
    assert len(dump.read_text().splitlines()) == 5000
    extras = [e.value for e in get_hook_lineage_collector().collected_assets.extra if e.key == "sql_job"]
    assert any(e.get("sql") == "COPY events TO STDOUT" for e in extras), extras
