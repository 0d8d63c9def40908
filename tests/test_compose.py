"""docker-compose.yaml and the Dockerfile, checked as far as a machine without a Docker engine
can: the Compose schema, the references between services, the files they name, and that what
they run and define is what the project tests (its Airflow version, its seed, its DAGs'
connection ids)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml
from dag_runs import load_dag

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = ROOT.parent / "shared" / "schemas" / "compose-spec.json"
AIRFLOW_SERVICES = (
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
)
ONE_SHOT = ("airflow-init", "source-seed")
EXAMPLE_DAGS = {
    "migrate_tables": "migrate_tables.py",
    "copy_table": "copy_table.py",
    "incremental_sync": "incremental_sync.py",
}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yaml").read_text())


@pytest.fixture(scope="module")
def dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text()


def _tested_airflow_version() -> str:
    match = re.search(r'AIRFLOW_VERSION="\$\{AIRFLOW_VERSION:-([0-9.]+)\}"', (ROOT / "dev").read_text())
    assert match, "./dev no longer names the Airflow version it installs"
    return match.group(1)


def _command(service: dict) -> list[str]:
    command = service.get("command", [])
    return shlex.split(command) if isinstance(command, str) else list(command)


def test_the_file_follows_the_compose_schema(compose):
    import jsonschema

    if not SCHEMA.exists():
        if os.environ.get("CI"):
            pytest.fail(f"the Compose schema is missing: {SCHEMA}")
        pytest.skip(f"the Compose schema is not beside the project ({SCHEMA})")
    schema = json.loads(SCHEMA.read_text())
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(compose), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def test_the_schema_check_catches_a_broken_file(compose):
    import jsonschema

    if not SCHEMA.exists():
        pytest.skip(f"the Compose schema is not beside the project ({SCHEMA})")
    broken = json.loads(json.dumps(compose))
    broken["services"]["airflow-init"]["depends_on"]["source-seed"]["condition"] = "service_finished"
    broken["services"]["postgres"]["restart_policy"] = "always"
    errors = list(jsonschema.Draft7Validator(json.loads(SCHEMA.read_text())).iter_errors(broken))
    assert {tuple(e.path)[:2] for e in errors} == {("services", "airflow-init"), ("services", "postgres")}


def test_the_official_layout_and_the_demo_databases_are_there(compose):
    services = compose["services"]
    assert set(services) >= {"postgres", "redis", *AIRFLOW_SERVICES, *ONE_SHOT, "source-db", "target-db"}
    env = services["airflow-scheduler"]["environment"]
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://") and "@redis:" in env["AIRFLOW__CELERY__BROKER_URL"]
    assert "@postgres/" in env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    commands = {name: _command(services[name])[:2] for name in AIRFLOW_SERVICES}
    assert commands == {
        "airflow-apiserver": ["api-server"],
        "airflow-scheduler": ["scheduler"],
        "airflow-dag-processor": ["dag-processor"],
        "airflow-triggerer": ["triggerer"],
        "airflow-worker": ["celery", "worker"],
    }
    init = "\n".join(_command(services["airflow-init"]))
    assert "airflow db migrate" in init and "airflow pools set" in init and "passwords.json" in init
    # What the init makes as root is handed to the services' user last (the api-server writes the passwords file).
    assert init.rindex("chown -R") > init.rindex("passwords.json")


def test_every_long_running_service_has_a_health_check(compose):
    for name, service in compose["services"].items():
        if name not in ONE_SHOT:
            assert service.get("healthcheck", {}).get("test"), f"{name} has no health check"


def test_every_depends_on_names_a_service(compose):
    services = compose["services"]
    for name, service in services.items():
        needs = service.get("depends_on", {})
        for other, condition in needs.items() if isinstance(needs, dict) else ((n, {}) for n in needs):
            assert other in services, f"{name} depends on {other!r}, which is not a service"
            assert other != name
            if condition.get("condition") == "service_completed_successfully":
                assert other in ONE_SHOT, f"{name} waits for {other} to exit, but {other} runs for good"
            if condition.get("condition") == "service_healthy":
                assert "healthcheck" in services[other], f"{name} waits for {other} to be healthy: it has no check"


def test_every_file_the_stack_names_is_in_the_repository(compose):
    tracked = set(
        subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    )
    named_volumes = set(compose.get("volumes", {}))
    for name, service in compose["services"].items():
        build = service.get("build")
        if build is not None:
            context = ROOT / (build if isinstance(build, str) else build.get("context", "."))
            dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
            assert (context / dockerfile).is_file(), f"{name}: no {dockerfile} in {context}"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0] if isinstance(volume, str) else volume["source"]
            if source in named_volumes:
                continue
            assert source.startswith("./"), f"{name} mounts {source}, which is neither a named volume nor ours"
            path = ROOT / source
            assert path.exists() and any(
                t == source[2:] or t.startswith(source[2:].rstrip("/") + "/") for t in tracked
            ), f"{name} mounts {source}, not in the repository"


def test_the_connections_are_the_ones_the_example_dags_use(compose, airflow_db):
    for name in AIRFLOW_SERVICES + ("airflow-init",):
        env = compose["services"][name]["environment"]
        defined = {
            key[len("AIRFLOW_CONN_") :].lower(): json.loads(value)
            for key, value in env.items()
            if key.startswith("AIRFLOW_CONN_")
        }
        for dag_id, filename in EXAMPLE_DAGS.items():
            params = load_dag(dag_id, filename).params
            for param in ("source_conn_id", "target_conn_id"):
                allowed = params.get_param(param).schema.get("enum", [params[param]])
                assert set(allowed) <= set(defined), f"{name} lacks {allowed} that {dag_id} offers"
        assert {c["conn_type"] for c in defined.values()} == {"postgres"}
        assert defined["migration_source"]["host"] == "source-db"
        assert defined["migration_target"]["host"] == "target-db"


def test_the_source_is_seeded_by_the_projects_own_seed(compose):
    seed = compose["services"]["source-seed"]
    command = _command(seed)
    assert command[:3] == ["python", "-m", "airflow_pool_provider.testing.legacy_db"]
    assert (ROOT / "airflow_pool_provider" / "testing" / "legacy_db.py").is_file()
    # The seed reaches source-db through libpq's environment: no password on a command line.
    assert seed["environment"]["PGHOST"] == "source-db"
    assert not any("password" in part.lower() for part in command)
    assert "source-seed" in compose["services"]["airflow-init"]["depends_on"]
    # The image's entrypoint checks the metadata database before it runs the seed.
    assert "postgres" in seed["depends_on"]


def test_the_migrations_pool_fits_the_dag(compose, airflow_db):
    from airflow_pool_provider.copy.budget import connections_for

    env = compose["services"]["airflow-scheduler"]["environment"]
    slots = int(re.fullmatch(r"\$\{MIGRATION_POOL_SLOTS:-(\d+)\}", env["MIGRATION_POOL_SLOTS"]).group(1))
    dag = load_dag("migrate_tables", "migrate_tables.py")
    copy = dag.get_task("copy_data")
    assert copy.pool_slots == connections_for(dag.params.get_param("parallelism").schema["maximum"])
    # At least one copy at the form's highest parallelism, and the DAG's concurrent copies at most.
    assert copy.pool_slots <= slots <= copy.pool_slots * copy.max_active_tis_per_dagrun


def test_the_dockerfile_installs_the_tested_airflow_and_only_repository_files(dockerfile):
    version = _tested_airflow_version()
    assert f"ARG AIRFLOW_VERSION={version}" in dockerfile
    assert re.search(r"^ARG PYTHON_VERSION=3\.\d+$", dockerfile, re.M), "Python is not pinned"
    froms = re.findall(r"^FROM (\S+)", dockerfile, re.M)
    assert froms and all(f == "apache/airflow:${AIRFLOW_VERSION}-python${PYTHON_VERSION}" for f in froms)
    assert '"apache-airflow==${AIRFLOW_VERSION}"' in dockerfile
    for line in re.findall(r"^COPY (.+)$", dockerfile, re.M):
        parts = [p for p in line.split() if not p.startswith("--")]
        if "--from=" in line:
            continue
        for source in parts[:-1]:
            assert (ROOT / source).exists(), f"the Dockerfile copies {source}, which is not in the repository"
    # The build context holds the package's files only.
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ignored[ignored.index("*") + 1 :][:3] == ["!pyproject.toml", "!README.md", "!airflow_pool_provider"]


def test_the_image_has_a_pg_dump_of_the_databases_major(compose, dockerfile):
    majors = {int(compose["services"][name]["image"].split(":")[1]) for name in ("source-db", "target-db")}
    client = int(re.search(r"^ARG POSTGRES_CLIENT_MAJOR=(\d+)$", dockerfile, re.M).group(1))
    assert '"postgresql-client-${POSTGRES_CLIENT_MAJOR}"' in dockerfile
    # pg_dump reads servers up to its own major; the same major as the databases fits exactly.
    assert majors == {client}


def test_the_wheel_builds_from_the_files_the_dockerfile_copies(dockerfile, tmp_path):
    """Only what the Dockerfile copies goes into the image's wheel; it must hold the seed module."""
    import shutil
    import sys
    import zipfile

    build = tmp_path / "provider-src"
    for line in re.findall(r"^COPY --chown=\S+ (.+)$", dockerfile, re.M):
        *sources, destination = line.split()
        inside = build / Path(destination).relative_to("/opt/airflow/provider-src")
        for source in sources:
            target = inside / source if destination.endswith("/") else inside
            if (ROOT / source).is_dir():
                shutil.copytree(ROOT / source, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(ROOT / source, target)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--wheel-dir", str(tmp_path / "wheels"), str(build)],
        check=True,
        capture_output=True,
    )
    (wheel,) = (tmp_path / "wheels").glob("airflow_pool_provider-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "airflow_pool_provider/testing/legacy_db.py" in names
    assert "airflow_pool_provider/provider_info.py" in names


def _run_config(compose: dict, name: str, server, env: dict[str, str]) -> None:
    """A config script as the postgres image runs it from /docker-entrypoint-initdb.d (with bash,
    as its entrypoint does), against ``server``; compose's ``$$`` is a ``$``."""
    script = compose["configs"][name]["content"].replace("$$", "$")
    libpq = {"PGHOST": server.host, "PGPORT": str(server.port), "PGPASSWORD": server.password or ""}
    subprocess.run(["bash", "-c", script], env={**os.environ, **libpq, **env}, check=True, capture_output=True)


def test_the_connections_roles_are_made_by_the_databases_init_scripts_and_are_not_superusers(
    compose, pg_server, make_database
):
    import shutil
    import uuid

    import psycopg2
    from psycopg2 import sql

    if shutil.which("psql") is None:
        pytest.skip("psql is not installed")
    services = compose["services"]
    for db, config in (("source-db", "migration-reader"), ("target-db", "migration-writer")):
        assert config in [c["source"] for c in services[db]["configs"]]
    conns = {
        json.loads(v)["host"]: json.loads(v)["login"]
        for k, v in services["airflow-scheduler"]["environment"].items()
        if k.startswith("AIRFLOW_CONN_")
    }
    assert conns == {"source-db": "migration_reader", "target-db": "migration_writer"}

    source, target = make_database(prefix="src"), make_database(prefix="dst")
    reader, writer = (f"{kind}_{uuid.uuid4().hex[:8]}" for kind in ("reader", "writer"))
    user = {"POSTGRES_USER": pg_server.user}
    try:
        _run_config(
            compose,
            "migration-reader",
            pg_server,
            {**user, "POSTGRES_DB": source, "MIGRATION_READER": reader, "MIGRATION_READER_PASSWORD": "secret"},
        )
        _run_config(
            compose,
            "migration-writer",
            pg_server,
            {**user, "POSTGRES_DB": target, "MIGRATION_WRITER": writer, "MIGRATION_WRITER_PASSWORD": "secret"},
        )
        pg_server.execute("CREATE TABLE seeded (id serial PRIMARY KEY)", dbname=source)  # as the seed, later
        conn = psycopg2.connect(pg_server.dsn(source, user=reader, password="secret"))
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT count(*) FROM seeded")  # tables made after the script: readable
                cur.execute("SELECT last_value FROM seeded_id_seq")
                cur.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
                assert cur.fetchone() == (False,)
                with pytest.raises(psycopg2.errors.InsufficientPrivilege):
                    cur.execute("CREATE TABLE t (id int)")  # it can only read
        finally:
            conn.close()
        owner = pg_server.execute("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s", (target,))
        assert owner == [(writer,)]
    finally:
        pg_server.execute(sql.SQL("ALTER DATABASE {} OWNER TO CURRENT_USER").format(sql.Identifier(target)))
        for role in (reader, writer):
            if pg_server.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)):
                for db in (source, target):
                    pg_server.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)), dbname=db)
                pg_server.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
