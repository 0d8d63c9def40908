"""Test harness: a real PostgreSQL, a temporary Airflow home, connections through the environment.

PostgreSQL: the server named by ``AIRFLOW_POOL_PROVIDER_PG_DSN`` (a superuser DSN or URI), else a
throwaway server started for the session. Every test gets its own database(s) with unique names
and drops them, so the server may be shared.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import psycopg2
import pytest
from psycopg2 import sql

# Airflow reads AIRFLOW_HOME at import time: set it before anything imports airflow.
_AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="pool-provider-airflow-"))
os.environ["AIRFLOW_HOME"] = str(_AIRFLOW_HOME)
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(Path(__file__).parent / "dags")
os.environ["AIRFLOW__OPENLINEAGE__DISABLED"] = "True"  # tests/test_lineage_and_metrics.py enables it

from copy_helpers import CopyEnv  # noqa: E402

from airflow_pool_provider import registry  # noqa: E402
from airflow_pool_provider.testing.data import create_events  # noqa: E402
from airflow_pool_provider.testing.legacy_db import seed  # noqa: E402
from airflow_pool_provider.testing.postgres import Server, TemporaryPostgres, server_from_env  # noqa: E402

FAST_SERVER_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Server]:
    """The shared PostgreSQL of the session (given, or a throwaway one)."""
    given = server_from_env()
    if given is not None:
        yield given
        return
    temp = TemporaryPostgres(FAST_SERVER_SETTINGS)
    try:
        yield temp.start()
    finally:
        temp.cleanup()


@pytest.fixture
def own_server() -> Iterator[TemporaryPostgres]:
    """A private server for tests that stop or restart it."""
    temp = TemporaryPostgres(FAST_SERVER_SETTINGS)
    temp.start()
    try:
        yield temp
    finally:
        temp.cleanup()


@pytest.fixture
def make_database(request: pytest.FixtureRequest) -> Iterator[Callable[..., str]]:
    """Create uniquely named databases (on the shared server unless given another); all are
    dropped after the test."""
    made: list[tuple[Server, str]] = []

    def make(server: Server | None = None, prefix: str = "t", template: str | None = None) -> str:
        server = server or request.getfixturevalue("pg_server")
        name = server.create_database(prefix, template)
        made.append((server, name))
        return name

    yield make
    registry.close_all()
    for server, name in made:
        try:
            server.drop_database(name)
        except Exception:  # noqa: BLE001 - a private server may already be gone
            pass


@pytest.fixture
def database(make_database: Callable[..., str]) -> str:
    return make_database()


@pytest.fixture
def make_reader(pg_server: Server, make_database: Callable[..., str]) -> Iterator[Callable[..., str]]:
    """Login roles that may only read the tables and sequences in ``public`` of one database (on
    ``server``, default the shared one), as they are when made: what a copy with a row filter reads
    as, since a filter is refused to a superuser. Dropped after the test, before its databases."""
    made: list[tuple[Server, str, str]] = []

    def make(dbname: str, server: Server | None = None) -> str:
        server = server or pg_server
        role = sql.Identifier(f"reader_{uuid.uuid4().hex[:8]}")
        server.execute(sql.SQL("CREATE ROLE {} LOGIN").format(role))
        made.append((server, dbname, role.string))
        grant = (
            "GRANT SELECT ON ALL TABLES IN SCHEMA public TO {0}; GRANT SELECT ON ALL SEQUENCES IN SCHEMA public TO {0}"
        )
        server.execute(sql.SQL(grant).format(role), dbname=dbname)
        return role.string

    yield make
    for server, dbname, role in made:
        server.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)), dbname=dbname)
        server.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


@pytest.fixture
def copy_server(pg_server: Server) -> Server:
    """The server of the ``env`` fixture's databases; a test module may name another."""
    return pg_server


@pytest.fixture
def env(copy_server: Server, make_database: Callable[..., str]) -> Iterator[CopyEnv]:
    """A source and a target database of this test's own (``env.db["src"]``, ``env.db["dst"]``),
    empty; modules that want a table in them build on this fixture."""
    e = CopyEnv(copy_server, make_database(copy_server, prefix="src"), make_database(copy_server, prefix="dst"))
    yield e
    e.close()


@pytest.fixture
def make_conn_id(monkeypatch: pytest.MonkeyPatch, pg_server: Server) -> Iterator[Callable[..., str]]:
    """Register an Airflow connection (``AIRFLOW_CONN_*``) to a database; returns its id."""
    from airflow_pool_provider.hooks.pooled_postgres import forget_cached_connections

    forget_cached_connections()

    def make(
        dbname: str,
        server: Server | None = None,
        conn_id: str | None = None,
        password: str | None = None,
        extra: dict | None = None,
        user: str | None = None,
    ) -> str:
        server = server or pg_server
        conn_id = conn_id or f"pg_{uuid.uuid4().hex[:8]}"
        monkeypatch.setenv(
            f"AIRFLOW_CONN_{conn_id.upper()}",
            server.airflow_connection(
                dbname, {"application_name": f"test-{conn_id}", **(extra or {})}, password=password, user=user
            ),
        )
        forget_cached_connections()
        return conn_id

    yield make
    forget_cached_connections()


@pytest.fixture
def conn_id(make_conn_id: Callable[..., str], database: str) -> str:
    """A connection to this test's own database on the shared server."""
    return make_conn_id(database)


class EventsDatabases(NamedTuple):
    src_db: str
    dst_db: str
    src: Any  # psycopg2 connections to them
    dst: Any


@pytest.fixture
def make_events(pg_server: Server, make_database: Callable[..., str]) -> Iterator[Callable[..., EventsDatabases]]:
    """Make a source database whose ``events`` table (testing.data.create_events) has ``rows``
    rows, on ``source_server`` if given, and a target database on the shared server with an empty
    one; their connections are closed after the test."""
    conns: list[Any] = []

    def make(rows: int, source_server: Server | None = None) -> EventsDatabases:
        source_server = source_server or pg_server
        src_db, dst_db = make_database(source_server, prefix="src"), make_database(prefix="dst")
        src, dst = psycopg2.connect(source_server.dsn(src_db)), psycopg2.connect(pg_server.dsn(dst_db))
        conns.extend((src, dst))
        create_events(src, rows)
        create_events(dst, 0)
        return EventsDatabases(src_db, dst_db, src, dst)

    yield make
    for conn in conns:
        conn.close()


@pytest.fixture
def migration_source_template() -> str | None:
    """The database the ``migration_databases`` source is a copy of (None: an empty one); a test
    module may name one it built once."""
    return None


@pytest.fixture
def migration_databases(
    pg_server: Server,
    make_database: Callable[..., str],
    make_conn_id: Callable[..., str],
    migration_source_template: str | None,
):
    """A source and a target database as the example DAGs' connections migration_source and
    migration_target; yields autocommit connections to them."""
    src_db, dst_db = make_database(prefix="src", template=migration_source_template), make_database(prefix="dst")
    src, dst = psycopg2.connect(pg_server.dsn(src_db)), psycopg2.connect(pg_server.dsn(dst_db))
    src.autocommit = dst.autocommit = True
    make_conn_id(src_db, conn_id="migration_source")
    make_conn_id(dst_db, conn_id="migration_target")
    yield src, dst
    with dst.cursor() as cur:  # no snapshot holder of this source may outlive the test (a killed run leaves one)
        cur.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
            "AND application_name LIKE 'pool-provider snapshot %%'",
            (src_db,),
        )
    src.close()
    dst.close()


@pytest.fixture
def legacy_scale() -> float:
    """The scale the ``legacy`` fixture seeds its source at; a test module may name another."""
    return 0.01  # about 10,000 rows


@pytest.fixture
def legacy(migration_databases, legacy_scale: float):
    """The migration's databases: the source seeded with the legacy schema, the target empty."""
    src, dst = migration_databases
    seed(src, legacy_scale)
    yield src, dst


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """A migrated SQLite metadata DB, once per session (needed by dag.test)."""
    subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        check=True,
        env=os.environ.copy(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    return _AIRFLOW_HOME
