"""Copies by roles with only the rights they need, and the ledger's place and lifetime.

On PostgreSQL 15 and later nobody may create tables in ``public`` by default, so the ledger lives
in the target table's schema unless told otherwise; where it cannot be created the error says
what to grant, or gives the DDL for an administrator.
"""

from __future__ import annotations

import logging
import uuid

import psycopg2
import pytest
from copy_helpers import EARLIER_LEDGER_DDL, CopyEnv
from psycopg2 import sql

from airflow_pool_provider.copy import CopySpec, TableCopy, catalog
from airflow_pool_provider.copy.catalog import Side
from airflow_pool_provider.copy.checksum import ChecksumMethod
from airflow_pool_provider.copy.ledger import CHUNK_LEDGER_TABLE, Ledger
from airflow_pool_provider.copy.names import TableName
from airflow_pool_provider.copy.row_security import explaining
from airflow_pool_provider.copy.verify import check_table
from airflow_pool_provider.errors import ChunkFailed, CopyMistake, MigrationMistake
from airflow_pool_provider.pool import ConnectionPool

TABLE = "CREATE TABLE {t} (id int PRIMARY KEY, note text)"


@pytest.fixture
def env(env: CopyEnv) -> CopyEnv:
    env.note_table(1000)
    return env


@pytest.fixture
def make_role(pg_server, env):
    """Login roles (no rights but CONNECT on both databases); dropped after the test."""
    roles: list[str] = []

    def make(kind: str) -> str:
        role = f"{kind}_{uuid.uuid4().hex[:8]}"
        pg_server.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        roles.append(role)
        for db in env.db.values():
            pg_server.execute(
                sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(db), sql.Identifier(role))
            )
        return role

    yield make
    for role in roles:
        for db in env.db.values():
            pg_server.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)), dbname=db)
        pg_server.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def _copy(env: CopyEnv, source_role: str, target_role: str, spec: CopySpec, copy_id: str = "least", **kwargs):
    src_dsn = env.server.dsn(env.db["src"], user=source_role)
    dst_dsn = env.server.dsn(env.db["dst"], user=target_role)
    source = ConnectionPool(lambda: psycopg2.connect(src_dsn), name="source")
    target = ConnectionPool(lambda: psycopg2.connect(dst_dsn), name="target")
    try:
        return TableCopy(source, target, spec, copy_id=copy_id, **kwargs).run()
    finally:
        source.close()
        target.close()


def test_a_target_role_that_owns_its_schema_keeps_the_ledger_there(env, make_role):
    reader, owner = make_role("reader"), make_role("owner")
    env.sql("src", sql.SQL("GRANT SELECT ON t TO {}").format(sql.Identifier(reader)))  # SELECT only
    env.sql("dst", sql.SQL("CREATE SCHEMA loader AUTHORIZATION {}").format(sql.Identifier(owner)))
    env.sql("dst", f"SET ROLE {owner}; " + TABLE.format(t="loader.t") + "; RESET ROLE")
    assert not env.one("dst", "SELECT has_schema_privilege(%s, 'public', 'CREATE')", (owner,))

    summary = _copy(env, reader, owner, CopySpec("t", target_table="loader.t", chunk_size=200))

    assert summary.rows == 1000 and summary.ledger == f'"loader"."{CHUNK_LEDGER_TABLE}"'
    assert env.ledger_schemas() == ["loader"]
    assert env.digest("dst", "loader.t", "id") == env.digest("src", "t", "id")


def test_a_schema_owner_passes_over_a_public_ledger_it_may_not_read_and_says_so(env, make_role, caplog):
    reader, owner = make_role("reader"), make_role("owner")
    env.sql("src", sql.SQL("GRANT SELECT ON t TO {}").format(sql.Identifier(reader)))
    env.sql("dst", sql.SQL("CREATE SCHEMA loader AUTHORIZATION {}").format(sql.Identifier(owner)))
    env.sql("dst", f"SET ROLE {owner}; " + TABLE.format(t="loader.t") + "; RESET ROLE")
    _public_ledger(env)  # an earlier copy by an administrator; the owner has no right on it

    with caplog.at_level(logging.WARNING, logger="airflow_pool_provider.copy.engine"):
        summary = _copy(env, reader, owner, CopySpec("t", target_table="loader.t", chunk_size=200))

    assert summary.rows == 1000 and summary.ledger == f'"loader"."{CHUNK_LEDGER_TABLE}"'
    assert env.digest("dst", "loader.t", "id") == env.digest("src", "t", "id")
    assert f'the ledger "public"."{CHUNK_LEDGER_TABLE}" exists, but role "{owner}" may not read it' in caplog.text


def test_a_target_role_with_insert_and_select_uses_a_ledger_made_for_it(env, make_role):
    reader, writer = make_role("reader"), make_role("writer")
    env.sql("src", sql.SQL("GRANT SELECT ON t TO {}").format(sql.Identifier(reader)))
    env.sql("dst", sql.SQL("GRANT INSERT, SELECT ON t TO {}").format(sql.Identifier(writer)))
    with pytest.raises(CopyMistake) as refused:  # no ledger yet, and no right to create one
        _copy(env, reader, writer, CopySpec("t", chunk_size=200))
    message = str(refused.value)
    assert "permission denied for schema public" in message
    assert f'GRANT CREATE ON SCHEMA "public" TO "{writer}"' in message
    ddl = message[message.index("CREATE TABLE IF NOT EXISTS") : message.index(";\nGRANT")]
    assert env.count("dst") == 0 and env.ledger_schemas() == []

    env.sql("dst", ddl)  # what an administrator runs once, as the message says
    env.sql("dst", message[message.index(";\nGRANT") + 2 :])
    summary = _copy(env, reader, writer, CopySpec("t", chunk_size=200))

    assert summary.rows == 1000
    assert env.digest("dst", order="id") == env.digest("src", order="id")


def _public_ledger(env: CopyEnv) -> None:
    """The ledger in the target's public schema, made by the superuser."""
    admin = psycopg2.connect(env.server.dsn(env.db["dst"]))
    with admin, admin.cursor() as cur:  # one transaction, committed
        Ledger("public").ensure(cur)
    admin.close()


def test_a_role_that_may_not_alter_a_ledger_of_an_earlier_version_copies_without_read_instants(env, make_role):
    reader, writer = make_role("reader"), make_role("writer")
    env.sql("src", sql.SQL("GRANT SELECT ON t TO {}").format(sql.Identifier(reader)))
    env.sql("dst", sql.SQL("GRANT INSERT, SELECT ON t TO {}").format(sql.Identifier(writer)))
    ledger = sql.Identifier("public", CHUNK_LEDGER_TABLE)
    env.sql("dst", sql.SQL(EARLIER_LEDGER_DDL).format(ledger))  # made and owned by an administrator
    env.sql("dst", sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON {} TO {}").format(ledger, sql.Identifier(writer)))

    summary = _copy(env, reader, writer, CopySpec("t", chunk_size=200), read_instant=lambda _: 1)

    assert summary.rows == 1000
    assert env.digest("dst", order="id") == env.digest("src", order="id")
    assert "read_instant" not in env.assert_ledger_complete("least", 1000)[0]  # left as it was


def test_a_ledger_without_the_rights_says_what_to_grant(env, make_role):
    reader, writer = make_role("reader"), make_role("writer")
    env.sql("src", sql.SQL("GRANT SELECT ON t TO {}").format(sql.Identifier(reader)))
    env.sql("dst", sql.SQL("GRANT INSERT, SELECT ON t TO {}").format(sql.Identifier(writer)))
    _public_ledger(env)
    env.sql(
        "dst",
        sql.SQL("GRANT SELECT, INSERT ON {} TO {}").format(sql.Identifier(CHUNK_LEDGER_TABLE), sql.Identifier(writer)),
    )
    with pytest.raises(CopyMistake, match="lacks UPDATE, DELETE on it") as caught:
        _copy(env, reader, writer, CopySpec("t", chunk_size=200))
    assert f'GRANT SELECT, INSERT, UPDATE, DELETE ON "public"."{CHUNK_LEDGER_TABLE}" TO "{writer}"' in str(caught.value)


def test_a_copy_recorded_in_a_public_ledger_resumes_from_there(env):
    env.sql("dst", "CREATE SCHEMA loader; " + TABLE.format(t="loader.t"))
    env.sql(
        "dst",
        """
        CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN IF NEW.id = 777 THEN RAISE EXCEPTION 'refusing %', NEW.id; END IF; RETURN NEW; END $$;
        CREATE TRIGGER refuse BEFORE INSERT ON loader.t FOR EACH ROW EXECUTE FUNCTION refuse();
    """,
    )
    spec = CopySpec("t", target_table="loader.t", chunk_size=100, parallelism=1)
    with pytest.raises(ChunkFailed):  # recorded where earlier versions kept every ledger
        env.copy(
            CopySpec("t", target_table="loader.t", chunk_size=100, parallelism=1, ledger_schema="public"),
            copy_id="upgrade",
        )
    env.sql("dst", "DROP TRIGGER refuse ON loader.t")

    summary = env.copy(spec, copy_id="upgrade")  # the default would be "loader"

    assert summary["chunks_skipped"] == 7 and summary["ledger"] == f'"public"."{CHUNK_LEDGER_TABLE}"'
    assert env.ledger_schemas() == ["public"]
    assert env.digest("dst", "loader.t", "id") == env.digest("src", "t", "id")


def test_finished_copies_are_pruned_after_the_retention(env):
    with env.pools() as (src, dst):
        for copy_id in ("old-finished", "old-unfinished", "recent"):
            TableCopy(src, dst, CopySpec("t", chunk_size=500, mode="replace"), copy_id=copy_id).run()
    ledger = f"public.{CHUNK_LEDGER_TABLE}"
    env.sql(
        "dst",
        f"UPDATE {ledger} SET finished_at = now() - interval '40 days' "
        "WHERE copy_id IN ('old-finished', 'old-unfinished')",
    )
    env.sql("dst", f"UPDATE {ledger} SET finished_at = NULL WHERE copy_id = 'old-unfinished' AND chunk_no = 1")

    with env.pools() as (src, dst):
        TableCopy(
            src, dst, CopySpec("t", chunk_size=500, mode="replace"), copy_id="latest", ledger_retention_days=30
        ).run()

    kept = [r[0] for r in env.rows("dst", f"SELECT DISTINCT copy_id FROM {ledger} ORDER BY 1")]
    assert kept == ["latest", "old-unfinished", "recent"]  # an unfinished copy may still resume


def _hide_odd_rows(env: CopyEnv, reader: str) -> None:
    """Row-level security on the source's t: ``reader`` may see only its even ids."""
    env.sql("src", sql.SQL("GRANT SELECT ON t TO {}").format(sql.Identifier(reader)))
    env.sql("src", "ALTER TABLE t ENABLE ROW LEVEL SECURITY")
    env.sql(
        "src", sql.SQL("CREATE POLICY even ON t FOR SELECT TO {} USING (id % 2 = 0)").format(sql.Identifier(reader))
    )
    assert env.count("src") == 1000  # the superuser sees them all


def test_a_source_role_a_row_security_policy_applies_to_fails_and_copies_nothing(env, make_role):
    reader = make_role("reader")
    _hide_odd_rows(env, reader)

    with pytest.raises(CopyMistake) as refused:  # never half the rows, reported verified
        _copy(env, reader, env.server.user, CopySpec("t", chunk_size=200))

    message = str(refused.value)
    assert f'role "{reader}"' in message and 'cannot read every row of table "t"' in message
    assert f'ALTER ROLE "{reader}" BYPASSRLS' in message and "the table's owner" in message
    assert env.count("dst") == 0


def test_a_source_role_with_bypassrls_copies_every_row_of_a_table_with_row_security(env, make_role, pg_server):
    reader = make_role("reader")
    _hide_odd_rows(env, reader)
    pg_server.execute(sql.SQL("ALTER ROLE {} BYPASSRLS").format(sql.Identifier(reader)))

    summary = _copy(env, reader, env.server.user, CopySpec("t", chunk_size=200))

    assert summary.rows == 1000
    assert env.digest("dst", order="id") == env.digest("src", order="id")


def test_the_owner_of_a_table_with_row_security_copies_every_row(env, make_role):
    owner = make_role("owner")
    _hide_odd_rows(env, owner)
    env.sql("src", sql.SQL("ALTER TABLE t OWNER TO {}").format(sql.Identifier(owner)))

    summary = _copy(env, owner, env.server.user, CopySpec("t", chunk_size=200))

    assert summary.rows == 1000
    assert env.digest("dst", order="id") == env.digest("src", order="id")


def test_the_owner_of_a_table_that_forces_row_security_fails_saying_what_to_grant(env, make_role):
    owner = make_role("owner")
    _hide_odd_rows(env, owner)
    env.sql("src", sql.SQL("ALTER TABLE t OWNER TO {}").format(sql.Identifier(owner)))
    env.sql("src", "ALTER TABLE t FORCE ROW LEVEL SECURITY")

    with pytest.raises(CopyMistake, match=f'ALTER ROLE "{owner}" BYPASSRLS'):
        _copy(env, owner, env.server.user, CopySpec("t", chunk_size=200))

    assert env.count("dst") == 0


def test_a_target_check_through_a_row_security_policy_fails_rather_than_count_the_rows_it_sees(env, make_role):
    owner = make_role("owner")
    env.sql("dst", "INSERT INTO t SELECT g, 'note ' || g FROM generate_series(1, 1000) g")
    env.sql("dst", sql.SQL("ALTER TABLE t OWNER TO {}").format(sql.Identifier(owner)))
    env.sql("dst", "ALTER TABLE t ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY")  # its owner too
    env.sql("dst", "CREATE POLICY even ON t FOR SELECT USING (id % 2 = 0)")
    _public_ledger(env)
    env.sql(
        "dst", sql.SQL("GRANT SELECT ON {} TO {}").format(sql.Identifier(CHUNK_LEDGER_TABLE), sql.Identifier(owner))
    )
    conn = psycopg2.connect(env.server.dsn(env.db["dst"], user=owner))
    try:
        with conn.cursor() as cur:
            target = catalog.load_table(cur, TableName.parse("t"), Side.TARGET)
            # As the migration's verify stage raises it (its operators explain a raw refusal).
            with pytest.raises(MigrationMistake, match=f'"{owner}" .* cannot read every row of table "t"'):
                with explaining(MigrationMistake):
                    check_table(cur, target, ("id", "note"), ChecksumMethod.TEXT, Ledger("public"), ["none"])
    finally:
        conn.close()


def test_a_target_role_a_row_security_policy_applies_to_fails_saying_what_to_grant(env, make_role):
    writer = make_role("writer")
    env.sql("dst", sql.SQL("GRANT INSERT, SELECT ON t TO {}").format(sql.Identifier(writer)))
    env.sql("dst", "ALTER TABLE t ENABLE ROW LEVEL SECURITY")
    env.sql("dst", sql.SQL("CREATE POLICY even ON t TO {} USING (id % 2 = 0)").format(sql.Identifier(writer)))
    _public_ledger(env)
    env.sql(
        "dst",
        sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON {} TO {}").format(
            sql.Identifier(CHUNK_LEDGER_TABLE), sql.Identifier(writer)
        ),
    )

    with pytest.raises(CopyMistake) as refused:
        _copy(env, env.server.user, writer, CopySpec("t", chunk_size=200))

    assert f'the role "{writer}" on database "{env.db["dst"]}"' in str(refused.value)
    assert 'cannot read every row of table "t"' in str(refused.value)
    assert env.count("dst") == 0


def test_the_plan_warns_of_a_role_that_reaches_outside_its_database_and_not_of_a_plain_one(env, make_role, pg_server):
    from airflow_pool_provider.migration.plan import _powerful_roles

    role = make_role("plain")
    conn = psycopg2.connect(env.server.dsn(env.db["dst"], user=role))
    try:
        with conn.cursor() as cur:
            assert _powerful_roles(cur, "target") == []
            pg_server.execute(sql.SQL("GRANT pg_signal_backend TO {}").format(sql.Identifier(role)))
            (warning,) = _powerful_roles(cur, "target")
        assert warning.startswith("the target connection's role is a member of pg_signal_backend: ")
        assert "runs on the target with its powers" in warning
    finally:
        conn.close()
        pg_server.execute(sql.SQL("REVOKE pg_signal_backend FROM {}").format(sql.Identifier(role)))
