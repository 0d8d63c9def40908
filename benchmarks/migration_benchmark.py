"""Migration benchmark: ``migrate_tables`` under ``airflow dags test`` against pgcopydb clone and
pg_dump/pg_restore, into empty targets on the same server; one table from one run.

Cases: the demo's legacy database (about 1,000,000 rows in 6 related tables), and the
2,000,000-row ``events`` table with a primary key and three secondary indexes
(``--events-rows``; ``--big`` adds a 10,000,000-row one, where Airflow's fixed overhead stops
mattering; ``--only-big`` runs only that). For our migration, the time inside its tasks (the
task instances' durations, less those of a chain of as many no-op tasks, whose first includes
the in-process API server's start) and Airflow's own overhead (the rest: the process start, each
task's start and end) are separate lines; the peak RSS of the ``airflow dags test`` process is
noted, to show it does not grow with the table.

Run: ``python benchmarks/migration_benchmark.py`` (uses ``AIRFLOW_POOL_PROVIDER_PG_DSN`` if set, else
a throwaway server; pgcopydb is Debian's ``pgcopydb`` package).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg2
from external import available, pg_dump_restore, pgcopydb_clone

ROOT = Path(__file__).resolve().parent.parent
#: As many trivial tasks as the migration of one batch runs, in a chain: Airflow's own overhead.
NOOP_DAG = """
import pendulum
from airflow.sdk import DAG, task

with DAG(dag_id="noop_chain", schedule=None, start_date=pendulum.datetime(2024, 1, 1, tz="UTC"), catchup=False):
    previous = None
    for n in range({tasks}):
        current = task(lambda: None, task_id=f"step_{{n}}")()
        if previous is not None:
            previous >> current
        previous = current
"""
SECONDARY_INDEXES = (
    "CREATE INDEX events_account ON events (account_id)",
    "CREATE INDEX events_created ON events (created_at)",
    "CREATE INDEX events_kind_amount ON events (kind, amount)",
)


@dataclass
class Result:
    case: str
    method: str
    seconds: float
    note: str = ""
    tasks_seconds: float | None = None  # its task instances' durations, less those of as many no-op tasks
    startup_seconds: float | None = None  # the rest: Airflow's own overhead
    peak_rss_mb: float | None = None
    extra: dict = field(default_factory=dict)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events-rows", type=int, default=2_000_000)
    parser.add_argument("--demo-scale", type=float, default=1.0)
    parser.add_argument("--big", action="store_true", help="also a 10,000,000-row events table")
    parser.add_argument("--only-big", action="store_true", help="only the 10,000,000-row events table")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="migration-benchmark-airflow-"))
    dags = home / "dags"
    dags.mkdir()
    (dags / "migrate_tables.py").symlink_to(ROOT / "dags" / "migrate_tables.py")
    os.environ.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
            "AIRFLOW__OPENLINEAGE__DISABLED": "True",
        }
    )
    from airflow_pool_provider.testing.postgres import TemporaryPostgres, server_from_env

    server, temp = server_from_env(), None
    if server is None:
        temp = TemporaryPostgres()
        server = temp.start()
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True, capture_output=True)
    made: list[str] = []
    results: list[Result] = []
    try:
        cases = (
            []
            if args.only_big
            else [
                ("demo database", lambda db: _demo(server, db, args.demo_scale)),
                (f"events {args.events_rows:,}", lambda db: _events(server, db, args.events_rows)),
            ]
        )
        if args.big or args.only_big:
            cases.append(("events 10,000,000", lambda db: _events(server, db, 10_000_000)))
        for case, build in cases:
            source = server.create_database("bench_mig_src")
            made.append(source)
            print(f"building the source of '{case}' ...", flush=True)
            build(source)
            results += _run_case(server, case, source, made)
            server.drop_database(source)
            made.remove(source)
    finally:
        for name in made:
            server.drop_database(name)
        if temp is not None:
            temp.cleanup()
    _report(results, server)


def _demo(server, db: str, scale: float) -> None:
    from airflow_pool_provider.testing.legacy_db import seed

    conn = psycopg2.connect(server.dsn(db))
    seed(conn, scale)
    conn.close()


def _events(server, db: str, rows: int) -> None:
    from airflow_pool_provider.testing.data import create_events

    conn = psycopg2.connect(server.dsn(db))
    create_events(conn, rows)
    with conn.cursor() as cur:
        for statement in SECONDARY_INDEXES:
            cur.execute(statement)
    conn.commit()
    conn.close()


def _run_case(server, case: str, source: str, made: list[str]) -> list[Result]:
    expected = _counts(server, source)
    results = []
    methods = [("ours: migrate_tables, airflow dags test", _ours)]
    if _pgcopydb_usable(server):  # the baseline, then with its table splitting on too
        methods.append(
            (
                "pgcopydb clone, 2 table + 2 index jobs",
                lambda s, src, dst: Result(case, "", pgcopydb_clone(s, src, dst, split=False)),
            )
        )
        methods.append(
            (
                "pgcopydb clone, same, tables > 50 MB split",
                lambda s, src, dst: Result(case, "", pgcopydb_clone(s, src, dst)),
            )
        )
    methods.append(
        ("pg_dump -Fd -j 2 + pg_restore -j 2", lambda s, src, dst: Result(case, "", pg_dump_restore(s, src, dst)))
    )
    for name, run in methods:
        target = server.create_database("bench_mig_dst")
        made.append(target)
        server.execute("CHECKPOINT")
        print(f"  {name} ...", flush=True)
        result = run(server, source, target)
        result.case, result.method = case, name
        got = _counts(server, target)
        if got != expected:
            raise SystemExit(f"{name}: the target's row counts differ from the source's: {got} != {expected}")
        result.note = (result.note + "; " if result.note else "") + f"{sum(got.values()):,} rows checked"
        results.append(result)
        server.drop_database(target)
        made.remove(target)
    return results


def _pgcopydb_usable(server) -> bool:
    """pgcopydb runs the pg_dump on PATH, which refuses a newer server."""
    if not available("pgcopydb"):
        print("  (pgcopydb not installed: apt-get install pgcopydb)")
        return False
    found = subprocess.run(["pg_dump", "--version"], capture_output=True, text=True).stdout
    dump_major = int(found.split()[2].split(".")[0]) if found else 0
    server_major = int(server.execute("SHOW server_version_num")[0][0]) // 10000
    if dump_major < server_major:
        print(
            f"  (pgcopydb left out: the pg_dump on PATH is {dump_major}, the server {server_major}; "
            "set AIRFLOW_POOL_PROVIDER_PG_DSN to a server pg_dump can read)"
        )
        return False
    return True


def _ours(server, source: str, target: str) -> Result:
    env = os.environ.copy()
    for conn_id, db in (("MIGRATION_SOURCE", source), ("MIGRATION_TARGET", target)):
        env[f"AIRFLOW_CONN_{conn_id}"] = server.airflow_connection(db)
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "airflow", "dags", "test", "migrate_tables"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"migrate_tables failed:\n{output[-4000:]}")
    each = _task_durations()
    inside = sum(each.values()) - sum(_airflow_task_overhead(len(each)).values())
    per_task: dict[str, float] = {}
    for (task_id, _), duration in each.items():
        per_task[task_id] = per_task.get(task_id, 0.0) + duration
    return Result(
        "",
        "",
        seconds,
        f"{len(each)} task instances, verified",
        tasks_seconds=inside,
        startup_seconds=seconds - inside,
        peak_rss_mb=usage.ru_maxrss / 1024,
        extra={"tasks": per_task},
    )


def _airflow_task_overhead(tasks: int) -> dict[tuple[str, int], float]:
    """The task instances' own durations when they do nothing: ``airflow dags test`` of a chain of
    ``tasks`` trivial tasks (the first includes the in-process API server's start)."""
    (Path(os.environ["AIRFLOW__CORE__DAGS_FOLDER"]) / "noop_chain.py").write_text(NOOP_DAG.format(tasks=tasks))
    subprocess.run([sys.executable, "-m", "airflow", "dags", "test", "noop_chain"], check=True, capture_output=True)
    return _task_durations()


def _task_durations() -> dict[tuple[str, int], float]:
    """The last run's task instances (task id, map index) and their durations in seconds."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.settings import Session
    from sqlalchemy import select

    with Session() as session:
        run_id = session.scalars(select(TaskInstance.run_id).order_by(TaskInstance.start_date.desc()).limit(1)).one()
        query = select(TaskInstance.task_id, TaskInstance.map_index, TaskInstance.start_date, TaskInstance.end_date)
        rows = session.execute(
            query.where(TaskInstance.run_id == run_id, TaskInstance.start_date.is_not(None)).order_by(
                TaskInstance.start_date
            )
        ).all()
    return {(task_id, index): (end - start).total_seconds() for task_id, index, start, end in rows}


def _counts(server, db: str) -> dict[str, int]:
    conn = psycopg2.connect(server.dsn(db))
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = 'public' AND c.relkind = 'r' AND c.relname NOT LIKE 'airflow_pool%%' "
                "ORDER BY 1"
            )
            tables = [r[0] for r in cur.fetchall()]
            counts = {}
            for table in tables:
                cur.execute(f'SELECT count(*) FROM "{table}"')
                counts[table] = cur.fetchone()[0]
        return counts
    finally:
        conn.close()


def _report(results: list[Result], server) -> None:
    print(f"\nPostgreSQL at {server.host}:{server.port}, {os.cpu_count()} CPUs; ratio = time / pgcopydb's\n")
    print(f"{'case':<22}{'method':<44}{'seconds':>9}{'ratio':>8}  note")
    print("-" * 110)
    targets = []
    for case in dict.fromkeys(r.case for r in results):
        rows = [r for r in results if r.case == case]
        pgcopydb = next((r.seconds for r in rows if r.method.startswith("pgcopydb")), None)
        dump = next((r.seconds for r in rows if r.method.startswith("pg_dump")), None)
        for r in rows:
            ratio = f"{r.seconds / pgcopydb:.2f}" if pgcopydb else "-"
            print(f"{case:<22}{r.method:<44}{r.seconds:>9.2f}{ratio:>8}  {r.note}")
            if r.tasks_seconds is not None:
                ratio = f"{r.tasks_seconds / pgcopydb:.2f}" if pgcopydb else "-"
                print(
                    f"{'':<22}{'  of which inside its tasks':<44}{r.tasks_seconds:>9.2f}{ratio:>8}  "
                    f"peak RSS {r.peak_rss_mb:.0f} MB"
                )
                print(f"{'':<22}{'  Airflow itself: start, and each task':<44}{r.startup_seconds:>9.2f}")
                print(
                    f"{'':<24}tasks (s, Airflow's share included): "
                    + ", ".join(f"{task} {s:.1f}" for task, s in r.extra["tasks"].items())
                )
                split = next((x.seconds for x in rows if "split" in x.method), None)
                if pgcopydb and case.startswith("events"):
                    targets.append((f"{case}: tasks' time <= 0.8 x pgcopydb", r.tasks_seconds / pgcopydb, 0.8))
                if split and case.startswith("events"):
                    targets.append(
                        (f"{case}: tasks' time <= 0.8 x pgcopydb with split tables", r.tasks_seconds / split, 0.8)
                    )
                if pgcopydb and dump and case == "events 10,000,000":
                    targets.append((f"{case}: end to end <= pgcopydb", r.seconds / pgcopydb, 1.0))
                    targets.append((f"{case}: end to end < pg_dump/pg_restore", r.seconds / dump, 1.0))
    if targets:
        print("\ntargets:")
        for what, ratio, limit in targets:
            print(f"  {'met' if ratio <= limit else 'NOT met':<8} {what} (ratio {ratio:.2f})")
    rss = [(r.case, r.peak_rss_mb) for r in results if r.peak_rss_mb]
    print("\npeak RSS of airflow dags test: " + ", ".join(f"{c} {m:.0f} MB" for c, m in rss))


if __name__ == "__main__":
    main()
