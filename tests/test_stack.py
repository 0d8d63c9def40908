"""The native stack (``./dev stack``): api-server, scheduler, dag-processor, triggerer and two Celery
workers on a PostgreSQL metadata DB and a Redis broker. ``migrate_tables`` is triggered through the
REST API as the UI does, and through the UI itself in a real browser; the connection budget is
shown to hold when the Airflow pool allows fewer copy tasks than the run has.

The second tier (``-m stack``): ``.ci/run`` runs it after the default suite."""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from datetime import datetime
from pathlib import Path

import psycopg2
import pytest

from airflow_pool_provider.testing import stack as native
from airflow_pool_provider.testing.data import table_digest
from airflow_pool_provider.testing.legacy_db import TABLES

pytestmark = pytest.mark.stack

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
BATCH_ROWS = 4000  # about six copy tasks for the 21,000-row source


class Api:
    """The REST API v2 of the stack, as a logged-in user."""

    def __init__(self, state: native.StackState) -> None:
        self.url = state.api_url
        self.token = self.call("POST", "/auth/token", {"username": state.user, "password": state.password}, auth=False)[
            "access_token"
        ]

    def call(self, method: str, path: str, body: dict | None = None, auth: bool = True) -> dict:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if auth:
            headers["Authorization"] = f"Bearer {self.token}"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.load(response)

    def resize_pool(self, slots: int) -> None:
        self.call(
            "PATCH", f"/api/v2/pools/{native.POOL}", {"name": native.POOL, "slots": slots, "include_deferred": False}
        )

    def run_path(self, run_id: str) -> str:
        return f"/api/v2/dags/migrate_tables/dagRuns/{urllib.parse.quote(run_id, safe='')}"

    def wait_for_dag(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.call("GET", "/api/v2/dags/migrate_tables")
                return
            except urllib.error.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)

    def trigger(self, conf: dict) -> str:
        return self.call("POST", "/api/v2/dags/migrate_tables/dagRuns", {"logical_date": None, "conf": conf})[
            "dag_run_id"
        ]

    def wait_for_run(self, run_id: str, timeout: float = 420) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self.call("GET", self.run_path(run_id))
            if run["state"] in ("success", "failed"):
                return run
            time.sleep(2)
        raise AssertionError(f"run {run_id} did not finish in {timeout} s: {self.task_states(run_id)}")

    def task_instances(self, run_id: str) -> list[dict]:
        return self.call("GET", self.run_path(run_id) + "/taskInstances?limit=100")["task_instances"]

    def task_states(self, run_id: str) -> dict:
        return {(t["task_id"], t["map_index"]): t["state"] for t in self.task_instances(run_id)}

    def log(self, run_id: str, task: dict) -> str:
        path = (
            f"{self.run_path(run_id)}/taskInstances/{task['task_id']}/logs/{task['try_number']}"
            f"?map_index={task['map_index']}"
        )
        return "\n".join(str(line.get("event", "")) for line in self.call("GET", path)["content"])


@pytest.fixture(scope="module")
def stack(tmp_path_factory, pg_server):
    home = tmp_path_factory.mktemp("stack")
    name = f"stk_{uuid.uuid4().hex[:8]}"
    state = native.up(
        home,
        name=name,
        scale=0.02,
        workers=2,
        worker_concurrency=1,
        pool_slots=18,
        batch_rows=BATCH_ROWS,
        server=pg_server,
    )
    try:
        api = Api(state)
        api.wait_for_dag()
        api.call("PATCH", "/api/v2/dags/migrate_tables", {"is_paused": False})
        yield state, api
    finally:
        started = native.StackState.load(home).processes
        native.down(home, purge=True)
        # Every process it started is gone, and nothing of them is left in their process groups.
        for process in started:
            assert not native.group_alive(process.pid), f"{process.name} or a child of it outlived down"


def _digest(dsn: str, table: str) -> tuple:
    conn = psycopg2.connect(dsn)
    try:
        return table_digest(conn, table, key=None)
    finally:
        conn.close()


def _assert_target_equals_source(state: native.StackState) -> None:
    server = state.postgres()
    for table in TABLES:
        source = _digest(server.dsn(state.databases["source"]), table)
        assert source[0] > 0
        assert _digest(server.dsn(state.databases["target"]), table) == source, table


def test_a_conf_the_form_would_refuse_is_refused_by_the_api(stack):
    _, api = stack
    with pytest.raises(urllib.error.HTTPError) as refused:
        api.trigger({"chunk_size": 0})
    assert refused.value.code == 400
    assert "chunk_size" in refused.value.read().decode()


def test_migrate_tables_triggered_through_the_api_runs_on_both_workers(stack):
    state, api = stack
    run_id = api.trigger({"chunk_size": 1000, "parallelism": 2})
    run = api.wait_for_run(run_id)
    assert run["state"] == "success", api.task_states(run_id)
    _assert_target_equals_source(state)

    tasks = api.task_instances(run_id)
    copies = [t for t in tasks if t["task_id"] == "copy_data"]
    assert len(copies) >= 4
    assert all(t["rendered_map_index"].startswith("batch ") for t in copies), [t["rendered_map_index"] for t in copies]
    # Each worker names itself ([core] hostname_callable): the mapped copies ran on both.
    assert {t["hostname"] for t in copies} == {f"{state.name}-worker-1", f"{state.name}-worker-2"}
    log = api.log(run_id, copies[0])
    assert "pool migration_source: size=" in log and "pool migration_target: size=" in log
    verify = next(t for t in tasks if t["task_id"] == "verify")
    assert "verified" in api.log(run_id, verify)


class BackendSampler(threading.Thread):
    """Counts the stack connections' backends (by application_name) on both databases, every 20 ms."""

    def __init__(self, state: native.StackState) -> None:
        super().__init__(daemon=True)
        self.dsn = state.postgres().dsn()
        self.databases = [state.databases["source"], state.databases["target"]]
        self.peak = 0
        self.samples = 0
        self.stopped = threading.Event()

    def run(self) -> None:
        conn = psycopg2.connect(self.dsn, application_name="budget-sampler")
        conn.autocommit = True
        with conn.cursor() as cur:
            while not self.stopped.is_set():
                cur.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s AND datname = ANY(%s)",
                    (native.APPLICATION, self.databases),
                )
                self.peak = max(self.peak, cur.fetchone()[0])
                self.samples += 1
                time.sleep(0.02)
        conn.close()


def _overlapping(tasks: list[dict]) -> int:
    """The most task instances that ran at the same time."""
    events = sorted(
        [(datetime.fromisoformat(t["start_date"]), 1) for t in tasks]
        + [(datetime.fromisoformat(t["end_date"]), -1) for t in tasks]
    )
    running = most = 0
    for _, change in events:
        running += change
        most = max(most, running)
    return most


def test_the_budget_holds_with_more_copy_tasks_than_the_pool_allows(stack):
    state, api = stack
    slots_per_copy = 9  # 2 x parallelism + 1 at the form's highest parallelism, 4
    api.resize_pool(slots_per_copy)
    sampler = BackendSampler(state)
    sampler.start()
    try:
        run_id = api.trigger({"chunk_size": 500, "parallelism": 4, "mode": "replace"})
        run = api.wait_for_run(run_id)
    finally:
        sampler.stopped.set()
        sampler.join()
        api.resize_pool(18)
    assert run["state"] == "success", api.task_states(run_id)
    _assert_target_equals_source(state)
    copies = [t for t in api.task_instances(run_id) if t["task_id"] == "copy_data"]
    # More copy tasks than the pool lets run, and the DAG alone would let two run at once.
    assert len(copies) >= 3
    assert _overlapping(copies) == 1
    print(
        f"budget: {len(copies)} copy tasks, at most {_overlapping(copies)} at once; peak {sampler.peak} "
        f"backends in {sampler.samples} samples (allowed {slots_per_copy})"
    )
    # Concurrent task instances (1) x connections per task (9): never more backends than that.
    assert sampler.samples > 100
    assert 3 <= sampler.peak <= 1 * slots_per_copy, sampler.peak


def _browser():
    """Playwright driving the system's Chromium, or why it cannot."""
    if not Path(CHROMIUM).exists():
        message = (
            "no Chromium at /usr/bin/chromium: install it with "
            "`apt-get install chromium chromium-driver` (Debian) to run the UI test"
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    return sync_playwright()


def _empty_target(state: native.StackState) -> None:
    """A new migration of other tables may not touch tables an earlier one made: start empty."""
    with psycopg2.connect(state.postgres().dsn(state.databases["target"])) as conn, conn.cursor() as cur:
        # public as PostgreSQL makes it: owned by pg_database_owner, so the database owner (the
        # target connection's role) may create in it
        cur.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public AUTHORIZATION pg_database_owner")


def test_migrate_tables_triggered_from_the_ui_form_in_a_browser(stack):
    state, api = stack
    ARTIFACTS.mkdir(exist_ok=True)
    _empty_target(state)
    with _browser() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{state.api_url}/auth/login")
            page.fill("input[name=username]", state.user)
            page.fill("input[name=password]", state.password)
            page.click("button[type=submit]")
            page.wait_for_url(lambda url: "/auth/login" not in url, timeout=60_000)

            page.goto(f"{state.api_url}/dags/migrate_tables")
            page.click("[data-testid=trigger-dag-button]", timeout=60_000)
            form = page.locator("[data-testid=config-form]")
            form.wait_for(timeout=60_000)
            form.locator("textarea[name=element_tables]").fill("customers\norders\norder_items")
            form.locator("input[name=element_chunk_size]").fill("2000")
            page.screenshot(path=str(ARTIFACTS / "trigger-form.png"), full_page=True)
            page.click("[data-testid=trigger-dag-submit]")
            page.wait_for_url("**/dags/migrate_tables/runs/**", timeout=60_000)
            run_id = urllib.parse.unquote(page.url.split("/runs/")[1].split("/")[0].split("?")[0])

            run = api.wait_for_run(run_id)
            assert run["state"] == "success", api.task_states(run_id)
            assert run["conf"]["tables"] == ["customers", "orders", "order_items"]
            assert run["conf"]["chunk_size"] == 2000
            page.reload()
            page.get_by_text("success").first.wait_for(timeout=60_000)
            page.screenshot(path=str(ARTIFACTS / "finished-run.png"), full_page=True)
        finally:
            browser.close()
    server = state.postgres()
    for table in ("customers", "orders", "order_items"):
        assert _digest(server.dsn(state.databases["target"]), table) == _digest(
            server.dsn(state.databases["source"]), table
        )
