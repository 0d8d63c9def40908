"""PooledPostgresHook against a real PostgreSQL: shared and rotated pools, the DbApiHook API on
pooled psycopg2 connections, settings, connection extras, fork safety, secrecy and parity with
PostgresHook (JSON cells, ``connection=``, ``with get_conn()``, ``get_cursor``, SQL operators)."""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extras
import pytest
from airflow.providers.common.compat.sdk import AirflowNotFoundException
from forking import in_child
from observe import app_backends, wait_until
from psycopg2 import sql

from airflow_pool_provider import registry
from airflow_pool_provider.errors import InvalidSetting, is_mistake
from airflow_pool_provider.hooks.pooled_postgres import PooledPostgresHook, forget_cached_connections
from airflow_pool_provider.pool import PoolError, PoolTimeout
from airflow_pool_provider.registry import PoolSettings
from airflow_pool_provider.testing.postgres import Server

PASSWORD = "S3cr3t-pa55"
CONFIG_ENV = "AIRFLOW__POOLED_POSTGRES__"


# -- helpers ------------------------------------------------------------------------------------


def hook_pid(hook: PooledPostgresHook) -> int:
    return hook.get_first("SELECT pg_backend_pid()")[0]


def set_config(monkeypatch: pytest.MonkeyPatch, **options: str) -> None:
    """Set ``[pooled_postgres]`` options through the environment; the hook caches config per
    process, so the cache is dropped for the next hook to see them."""
    for name, value in options.items():
        monkeypatch.setenv(f"{CONFIG_ENV}{name.upper()}", value)
    forget_cached_connections()


@pytest.fixture(autouse=True)
def _no_pool_config(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Start every test from the defaults, whatever the calling environment sets, and leave no
    cached setting of this test behind for the next one."""
    for name in list(os.environ):
        if name.startswith(CONFIG_ENV):
            monkeypatch.delenv(name)
    forget_cached_connections()
    yield
    monkeypatch.undo()
    forget_cached_connections()


@pytest.fixture
def make_role(pg_server: Server, database: str) -> Iterator[Callable[[str], str]]:
    """Login roles with a password, allowed to connect to the test database; dropped after."""
    roles: list[str] = []

    def make(password: str) -> str:
        role = f"pool_role_{uuid.uuid4().hex[:10]}"
        pg_server.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role), sql.Literal(password))
        )
        roles.append(role)
        pg_server.execute(
            sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(database), sql.Identifier(role))
        )
        pg_server.execute(f'GRANT ALL ON SCHEMA public TO "{role}"', dbname=database)
        return role

    yield make
    registry.close_all()
    for role in roles:
        pg_server.execute(f'DROP OWNED BY "{role}"', dbname=database)
        pg_server.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


@pytest.fixture
def items(pg_server: Server, database: str) -> Callable[[str], list[tuple]]:
    """Tables ``items`` and ``items_copy`` (id int, name text); returns a committed-rows reader."""
    pg_server.execute("CREATE TABLE items (id int, name text)", dbname=database)
    pg_server.execute("CREATE TABLE items_copy (id int, name text)", dbname=database)

    def rows(table: str = "items") -> list[tuple]:
        return pg_server.execute(f"SELECT id, name FROM {table} ORDER BY id", dbname=database)

    return rows


# -- 12. one pool per connection id; a rotated password gives a new one -------------------------


def test_two_hooks_on_one_conn_id_share_one_pool(conn_id, pg_server):
    first, second = PooledPostgresHook(conn_id), PooledPostgresHook(conn_id)
    assert first.get_pool() is second.get_pool()
    pid = hook_pid(first)
    assert hook_pid(second) == pid
    assert app_backends(pg_server, f"test-{conn_id}") == [pid]
    stats = second.pool_stats()
    assert stats["connections_created"] == 1
    assert stats["checkouts"] == 2
    assert registry.pools() == {conn_id: first.get_pool()}


def test_a_later_hook_asking_for_other_settings_shares_the_pool_and_is_warned(conn_id, caplog):
    small = PooledPostgresHook(conn_id, pool_max_size=2)
    pool = small.get_pool()
    assert pool.max_size == 2
    with caplog.at_level("WARNING", logger="airflow_pool_provider.registry"):
        big = PooledPostgresHook(conn_id, pool_max_size=7)
        assert big.get_pool() is pool
        assert big.get_pool() is pool  # warned once, not at every call
    assert pool.max_size == 2  # max_size is a hard cap: a later hook never grows it
    warnings = [r.getMessage() for r in caplog.records if "already exists" in r.getMessage()]
    assert len(warnings) == 1
    assert "max_size=2" in warnings[0] and "max_size=7" in warnings[0] and repr(conn_id) in warnings[0]


def test_rotated_password_gives_a_new_pool_and_closes_the_old(
    monkeypatch, make_conn_id, make_role, pg_server, database
):
    set_config(monkeypatch, connection_cache_seconds="0")
    role = make_role("first-pa55word")
    as_role = dataclasses.replace(pg_server, user=role, password=None)
    cid = make_conn_id(database, server=as_role, password="first-pa55word")
    app = f"test-{cid}"

    old_hook = PooledPostgresHook(cid)
    old_pool = old_hook.get_pool()
    held = old_hook.get_conn()  # still checked out when the password changes
    held_pid = held.get_backend_pid()
    assert old_hook.get_first("SELECT current_user")[0] == role
    idle_pid = hook_pid(old_hook)  # a second session, idle in the old pool
    assert held_pid != idle_pid
    assert PooledPostgresHook(cid).get_pool() is old_pool  # nothing changed yet

    pg_server.execute(sql.SQL("ALTER ROLE {} PASSWORD 'second-pa55word'").format(sql.Identifier(role)))
    make_conn_id(database, server=as_role, conn_id=cid, password="second-pa55word")

    new_hook = PooledPostgresHook(cid)
    new_pool = new_hook.get_pool()
    assert new_pool is not old_pool
    assert old_pool.closed is True
    assert new_pool.closed is False
    assert registry.pools()[cid] is new_pool
    new_pid = hook_pid(new_hook)
    assert new_pid not in (idle_pid, held_pid)
    assert new_hook.get_first("SELECT current_user")[0] == role
    # the old pool's idle session is closed at once; the checked-out one still works ...
    wait_until(lambda: idle_pid not in app_backends(pg_server, app), what="the old idle backend to go")
    with held.cursor() as cur:
        cur.execute("SELECT 1")
        assert cur.fetchone() == (1,)
    # ... and is closed when it comes back
    held.close()
    wait_until(lambda: held_pid not in app_backends(pg_server, app), what="the old held backend to go")
    assert app_backends(pg_server, app) == [new_pid]
    assert new_pool.stats()["connections_created"] == 1


# -- 13. the DbApiHook API on pooled psycopg2 connections ---------------------------------------


class _Returns:
    """Asserts a hook call checked out exactly ``n`` connections and gave them all back."""

    def __init__(self, hook: PooledPostgresHook) -> None:
        self.hook = hook
        self.checkouts = hook.pool_stats()["checkouts"]

    def check(self, n: int = 1) -> None:
        stats = self.hook.pool_stats()
        assert stats["in_use"] == 0, stats
        assert stats["checkouts"] == self.checkouts + n, stats
        assert stats["returns"] == stats["checkouts"], stats
        assert stats["connections_created"] == 1, stats
        self.checkouts = stats["checkouts"]


def test_get_conn_gives_a_psycopg2_connection_and_close_gives_it_back(conn_id):
    hook = PooledPostgresHook(conn_id)
    conn = hook.get_conn()
    assert isinstance(conn.raw, psycopg2.extensions.connection)
    # psycopg2.sql composition needs the real connection
    assert sql.Identifier("x y").as_string(conn.raw) == '"x y"'
    assert hook.pool_stats()["in_use"] == 1
    conn.close()
    assert hook.pool_stats()["in_use"] == 0
    assert hook.pool_stats()["idle"] == 1


def test_run_with_and_without_autocommit_and_handler(conn_id, items):
    hook = PooledPostgresHook(conn_id)
    hook.run("INSERT INTO items VALUES (1, 'one')")
    returns = _Returns(hook)
    assert items() == [(1, "one")]  # committed by run()

    # VACUUM refuses to run in a transaction block: it only works if autocommit really is on
    with pytest.raises(psycopg2.errors.ActiveSqlTransaction):
        hook.run("VACUUM items")
    returns.check()
    hook.run("VACUUM items", autocommit=True)
    returns.check()
    hook.run("INSERT INTO items VALUES (2, 'two')", autocommit=True)
    returns.check()
    assert items() == [(1, "one"), (2, "two")]

    # the autocommit flag did not stick to the pooled session
    conn = hook.get_conn()
    assert conn.autocommit is False
    conn.close()
    returns.check()

    result = hook.run("SELECT id, name FROM items ORDER BY id", handler=lambda cur: cur.fetchall())
    assert result == [(1, "one"), (2, "two")]
    returns.check()
    several = hook.run(
        ["SELECT count(*) FROM items", "SELECT max(id) FROM items"],
        handler=lambda cur: cur.fetchone()[0],
    )
    assert several == [2, 2]
    returns.check()


def test_get_records_get_first_and_insert_rows(conn_id, items):
    hook = PooledPostgresHook(conn_id)
    hook.get_first("SELECT 1")
    returns = _Returns(hook)
    hook.insert_rows("items", [(1, "a"), (2, "b"), (3, None)], target_fields=["id", "name"])
    returns.check()
    assert items() == [(1, "a"), (2, "b"), (3, None)]
    hook.insert_rows("items", [(i, f"n{i}") for i in range(10, 15)], commit_every=2)
    returns.check()
    assert len(items()) == 8
    assert hook.get_records("SELECT id FROM items WHERE id < %s ORDER BY id", parameters=(3,)) == [(1,), (2,)]
    returns.check()
    assert hook.get_first("SELECT name FROM items WHERE id = %(id)s", parameters={"id": 2}) == ("b",)
    returns.check()
    with pytest.raises(psycopg2.errors.UndefinedTable):
        hook.get_records("SELECT * FROM no_such_table")
    returns.check()


def test_copy_expert_to_and_from_files(conn_id, items, tmp_path):
    hook = PooledPostgresHook(conn_id)
    hook.insert_rows("items", [(1, "a"), (2, "tab\there"), (3, None)])
    returns = _Returns(hook)

    out = tmp_path / "out.tsv"
    out.write_text("stale content that is much longer than what COPY writes\n" * 10)
    hook.copy_expert("COPY items TO STDOUT", str(out))
    returns.check()
    assert out.read_text() == "1\ta\n2\ttab\\there\n3\t\\N\n"

    source = tmp_path / "in.csv"
    source.write_text('7,seven\n8,"eight, with comma"\n')
    hook.copy_expert("COPY items_copy FROM STDIN WITH (FORMAT csv)", str(source))
    returns.check()
    assert items("items_copy") == [(7, "seven"), (8, "eight, with comma")]
    assert source.read_text() == '7,seven\n8,"eight, with comma"\n'  # input left as it was


def test_bulk_dump_and_bulk_load_round_trip(conn_id, items, tmp_path):
    hook = PooledPostgresHook(conn_id)
    original = [(1, "plain"), (2, "tab\tand\nnewline"), (3, None), (4, "back\\slash"), (5, "ünïcode")]
    hook.insert_rows("items", original)
    returns = _Returns(hook)
    dump = tmp_path / "items.dump"
    hook.bulk_dump("items", str(dump))
    returns.check()
    assert dump.stat().st_size > 0
    hook.bulk_load("items_copy", str(dump))
    returns.check()
    assert items("items_copy") == original
    assert items("items_copy") == items("items")


# -- 14. settings ---------------------------------------------------------------------------------


def test_settings_precedence_kwargs_over_config_over_defaults(monkeypatch, make_conn_id, database):
    defaults = PoolSettings()
    plain = make_conn_id(database)
    assert PooledPostgresHook(plain).pool_settings() == defaults
    assert PooledPostgresHook(plain).get_pool().max_size == defaults.max_size

    set_config(monkeypatch, max_size="7", timeout="2.5", max_lifetime="none")
    from_config = PooledPostgresHook(make_conn_id(database)).pool_settings()
    assert from_config == dataclasses.replace(defaults, max_size=7, timeout=2.5, max_lifetime=None)

    kw_conn = make_conn_id(database)
    kw_hook = PooledPostgresHook(kw_conn, pool_max_size=2, pool_timeout=0.3, pool_max_lifetime=50)
    assert kw_hook.pool_settings() == dataclasses.replace(defaults, max_size=2, timeout=0.3, max_lifetime=50)
    # and the pool really is bounded by the keyword argument, not by the config
    held = [kw_hook.get_conn(), kw_hook.get_conn()]
    started = time.monotonic()
    with pytest.raises(PoolTimeout, match="max_size=2"):
        kw_hook.get_conn()
    assert 0.3 <= time.monotonic() - started < 2.0
    for conn in held:
        conn.close()


def test_invalid_config_value_raises_value_error_naming_the_option(monkeypatch, conn_id):
    set_config(monkeypatch, max_size="lots")
    hook = PooledPostgresHook(conn_id)
    with pytest.raises(ValueError) as info:
        hook.pool_settings()
    assert isinstance(info.value, InvalidSetting) and is_mistake(info.value)  # wrong until the config is fixed
    assert "max_size" in str(info.value)
    assert "'lots'" in str(info.value)
    assert f"{CONFIG_ENV}MAX_SIZE" in str(info.value)
    with pytest.raises(ValueError, match="max_size"):
        hook.get_conn()
    assert registry.pools() == {}
    # a keyword argument wins, so the bad config value is not even read for that setting
    assert PooledPostgresHook(conn_id, pool_max_size=3).pool_settings().max_size == 3


def test_none_for_a_required_setting_raises_value_error(monkeypatch, conn_id):
    set_config(monkeypatch, max_size="none")
    with pytest.raises(ValueError, match="max_size"):
        PooledPostgresHook(conn_id).get_conn()


# -- 15. connection extras ------------------------------------------------------------------------


def test_realdictcursor_extra_gives_dict_rows(make_conn_id, database):
    hook = PooledPostgresHook(make_conn_id(database, extra={"cursor": "realdictcursor"}))
    rows = hook.get_records("SELECT 1 AS n, 'x' AS s")
    assert rows == [{"n": 1, "s": "x"}]
    assert isinstance(rows[0], psycopg2.extras.RealDictRow)
    assert hook.get_first("SELECT 2 AS n") == {"n": 2}


def test_options_extra_reaches_the_session(make_conn_id, database, pg_server):
    pg_server.execute("CREATE SCHEMA foo", dbname=database)
    pg_server.execute("CREATE TABLE foo.only_in_foo (x int)", dbname=database)
    hook = PooledPostgresHook(make_conn_id(database, extra={"options": "-c search_path=foo"}))
    assert hook.get_first("SHOW search_path") == ("foo",)
    assert hook.get_first("SELECT count(*) FROM only_in_foo") == (0,)


def test_unknown_cursor_extra_raises_value_error(make_conn_id, database):
    cid = make_conn_id(database, extra={"cursor": "fancycursor"})
    with pytest.raises(ValueError) as info:
        PooledPostgresHook(cid).get_conn()
    message = str(info.value)
    assert cid in message and "fancycursor" in message
    assert "realdictcursor" in message  # says what would work
    assert registry.pools() == {}


def test_unknown_conn_id_says_it_is_not_defined_and_how_to_add_it(make_conn_id):
    missing = f"nope_{uuid.uuid4().hex[:8]}"
    with pytest.raises(AirflowNotFoundException) as info:
        PooledPostgresHook(missing).get_conn()
    message = str(info.value)
    assert f"connection {missing!r} is not defined" in message
    assert f"AIRFLOW_CONN_{missing.upper()}" in message
    assert "airflow connections add" in message


def test_iam_extra_is_refused(make_conn_id, database):
    cid = make_conn_id(database, extra={"iam": True})
    with pytest.raises(ValueError, match="IAM"):
        PooledPostgresHook(cid).get_conn()


# -- 8. fork (through the hook and the registry) --------------------------------------------------


def test_forked_child_uses_its_own_backend_and_keeps_the_parents(conn_id, pg_server):
    hook = PooledPostgresHook(conn_id)
    parent_pool = hook.get_pool()
    parent_pid = hook_pid(hook)

    def child() -> dict[str, Any]:
        child_hook = PooledPostgresHook(conn_id)
        pid = hook_pid(child_hook)
        stats = child_hook.pool_stats()
        registry.close_all()  # closes the child's pools: must not touch the parent's session
        return {"pid": pid, "created": stats["connections_created"]}

    report = in_child(child)
    assert "error" not in report, report
    assert report["pid"] != parent_pid
    assert report["created"] == 1

    assert hook.get_pool() is parent_pool and parent_pool.closed is False
    assert hook_pid(hook) == parent_pid  # the same session, alive
    stats = hook.pool_stats()
    assert stats["connections_created"] == 1
    assert stats["discarded_broken"] == 0
    assert app_backends(pg_server, f"test-{conn_id}") == [parent_pid]


# -- 16. no password anywhere ---------------------------------------------------------------------


def test_password_appears_in_no_log_repr_message_or_key(
    monkeypatch, make_conn_id, make_role, pg_server, database, caplog, capsys
):
    set_config(monkeypatch, leak_threshold="0.1")
    role = make_role(PASSWORD)
    cid = make_conn_id(database, server=dataclasses.replace(pg_server, user=role), password=PASSWORD)
    caplog.set_level(logging.DEBUG)

    hook = PooledPostgresHook(cid, pool_max_size=1, pool_timeout=0.3)
    assert hook.connect_kwargs()["password"] == PASSWORD  # the secret really is in play
    assert hook.get_first("SELECT current_user") == (role,)
    with pytest.raises(psycopg2.errors.UndefinedTable) as failed:
        hook.run("SELECT * FROM no_such_table")
    held = hook.get_conn()
    time.sleep(0.2)
    with pytest.raises(PoolTimeout) as timed_out:
        hook.get_conn()  # also reports the held connection as a leak
    pool = hook.get_pool()
    stats = pool.stats()
    reprs = [repr(hook), repr(pool), repr(held), str(held), repr(registry._pools), str(stats)]
    held.close()
    captured = capsys.readouterr()

    assert stats["timeouts"] == 1 and stats["leaks_detected"] == 1
    assert "has been held for" in caplog.text  # the leak warning was captured ...
    logs = caplog.text + captured.out + captured.err
    assert "no_such_table" in logs  # ... and so was the failing statement
    for name, text in {
        "caplog": caplog.text,
        "stdout": captured.out,
        "stderr": captured.err,
        "failed query": str(failed.value),
        "PoolTimeout": str(timed_out.value),
        "registry keys": " ".join(registry._pools),
        **{f"repr {i}": r for i, r in enumerate(reprs)},
    }.items():
        assert PASSWORD not in text, f"password shown in {name}"


# -- 17. parity with PostgresHook -----------------------------------------------------------------


def _pool_warnings(caplog: pytest.LogCaptureFixture, conn_id: str, marker: str) -> list[str]:
    """The pool's warnings about ``conn_id``'s pool that contain ``marker``."""
    return [
        message
        for message in (r.getMessage() for r in caplog.records if r.name == "airflow_pool_provider.pool")
        if marker in message and repr(conn_id) in message
    ]


def test_insert_rows_stores_dicts_as_json_and_lists_by_the_column_type(conn_id, pg_server, database):
    pg_server.execute("CREATE TABLE typed (id int, nums int[], tags text[], doc jsonb, raw json)", dbname=database)
    pg_server.execute(
        'CREATE SCHEMA "Odd Schema"; CREATE TABLE "Odd Schema"."Typed" ("Tags" text[], "order" jsonb, id int)',
        dbname=database,
    )
    hook = PooledPostgresHook(conn_id)
    returns = _Returns(hook)
    hook.insert_rows(
        "typed",
        [(1, [1, 2], ["a", "b"], {"k": [1, {"n": None}]}, [1, "x"]), (2, [], ["c"], [{"k": 1}], {"a": 1})],
        commit_every=1,
    )
    returns.check()  # the column types were read on the insert's own connection
    # other columns in another order: each list follows its own target column
    hook.insert_rows("typed", [({"z": 1}, [3], 3, ["d"])], target_fields=["raw", "nums", "id", "tags"])
    returns.check()
    hook.insert_rows("typed", [([4, 5], 4)], target_fields=["doc", "id"])
    read = "SELECT id, nums, tags, doc, raw::text, jsonb_typeof(doc), json_typeof(raw) FROM typed ORDER BY id"
    assert pg_server.execute(read, dbname=database) == [
        (1, [1, 2], ["a", "b"], {"k": [1, {"n": None}]}, '[1, "x"]', "object", "array"),
        (2, [], ["c"], [{"k": 1}], '{"a": 1}', "array", "object"),
        (3, [3], ["d"], None, '{"z": 1}', None, "object"),
        (4, None, None, [4, 5], None, "array", None),
    ]
    # a quoted, schema-qualified table; a quoted and a reserved column name
    hook.insert_rows('"Odd Schema"."Typed"', [(["x", "y"], [1, {"b": 2}], 7)], target_fields=['"Tags"', "order", "id"])
    assert pg_server.execute(
        'SELECT "Tags", "order", jsonb_typeof("order"), id FROM "Odd Schema"."Typed"', dbname=database
    ) == [(["x", "y"], [1, {"b": 2}], "array", 7)]


def _connection(pg_server: Server, conn_id: str, dbname: str, app: str) -> Any:
    from airflow.sdk import Connection

    return Connection(
        conn_id=conn_id,
        conn_type="postgres",
        host=pg_server.host,
        port=pg_server.port,
        login=pg_server.user,
        password=pg_server.password,
        schema=dbname,
        extra=json.dumps({"application_name": app}),
    )


def test_connection_argument_is_used_instead_of_looking_up_the_conn_id(make_conn_id, make_database, pg_server):
    db_a, db_b = make_database(prefix="a"), make_database(prefix="b")
    cid = make_conn_id(db_a)
    by_id = PooledPostgresHook(cid)
    assert by_id.get_first("SELECT current_database()") == (db_a,)
    pool_a = by_id.get_pool()

    given = _connection(pg_server, cid, db_b, f"given-{cid}")
    hook = PooledPostgresHook(cid, connection=given)
    assert hook.connection is given
    assert hook.get_first("SELECT current_database(), current_setting('application_name')") == (db_b, f"given-{cid}")
    # still one pool per conn id: other connect arguments make a new one and drain the old
    assert hook.get_pool() is not pool_a and pool_a.closed is True
    assert registry.pools()[cid] is hook.get_pool()

    # without a conn id the Connection's own id names the pool; it need not be defined anywhere
    nowhere = f"pg_nowhere_{uuid.uuid4().hex[:8]}"
    alone = PooledPostgresHook(connection=_connection(pg_server, nowhere, db_b, f"given-{nowhere}"))
    assert alone.get_conn_id() == nowhere
    assert alone.get_first("SELECT current_database()") == (db_b,)
    assert registry.pools()[nowhere] is alone.get_pool()


def test_with_get_conn_commits_and_gives_the_connection_back(conn_id, items, caplog):
    hook = PooledPostgresHook(conn_id)
    with hook.get_conn() as conn:
        pid = conn.get_backend_pid()
        with conn.cursor() as cur:
            cur.execute("INSERT INTO items VALUES (1, 'one')")
        assert hook.pool_stats()["in_use"] == 1
    assert hook.pool_stats()["in_use"] == 0  # back in the pool at once, not at garbage collection
    assert items() == [(1, "one")]  # committed: seen from another connection
    assert conn.closed == 1
    with pytest.raises(PoolError, match=r"given back .* at the end of its with-block.*get_conn\(\) again"):
        conn.cursor()
    with pytest.raises(PoolError, match="with-block"):
        with conn:
            pass
    again = hook.get_conn()
    assert again.get_backend_pid() == pid  # the same backend, from the pool
    again.close()

    with pytest.raises(psycopg2.errors.UniqueViolation), hook.get_conn() as conn:
        assert conn.get_backend_pid() == pid
        with conn.cursor() as cur:
            cur.execute("INSERT INTO items VALUES (2, 'two')")
            cur.execute("CREATE UNIQUE INDEX ON items (id); INSERT INTO items VALUES (2, 'again')")
    assert hook.pool_stats()["in_use"] == 0
    assert items() == [(1, "one")]  # rolled back
    assert hook_pid(hook) == pid
    with caplog.at_level(logging.WARNING, logger="airflow_pool_provider.pool"):
        gc.collect()
    assert _pool_warnings(caplog, conn_id, "dropped without close()") == []
    stats = hook.pool_stats()
    assert stats["connections_created"] == 1 and stats["returns"] == stats["checkouts"]


def test_leak_and_drop_warnings_say_how_to_give_a_connection_back(monkeypatch, conn_id, caplog):
    set_config(monkeypatch, leak_threshold="0.05")
    hook = PooledPostgresHook(conn_id)
    pool = hook.get_pool()
    with caplog.at_level(logging.WARNING, logger="airflow_pool_provider.pool"):
        held = hook.get_conn()
        time.sleep(0.1)
        hook.pool_stats()
        held.close()
        dropped = pool.getconn()
        del dropped
        gc.collect()
    (leak,) = _pool_warnings(caplog, conn_id, "has been held for")
    (drop,) = _pool_warnings(caplog, conn_id, "dropped without close()")
    for message in (leak, drop):
        assert "give it back with conn.close()" in message, message
        assert "with hook.get_conn() as conn:" in message and "with pool.connection() as conn:" in message
    assert "It was taken here:" in leak and "test_leak_and_drop_warnings_say_how_to_give_a_connection_back" in leak
    assert hook.pool_stats()["in_use"] == 0


def test_get_cursor_holds_its_connection_until_the_cursor_is_closed(conn_id, caplog):
    pool = PooledPostgresHook(conn_id).get_pool()
    with caplog.at_level(logging.WARNING, logger="airflow_pool_provider.pool"):
        first = PooledPostgresHook(conn_id).get_cursor()  # the hook is dropped at once
        gc.collect()
        second = PooledPostgresHook(conn_id).get_cursor()
        gc.collect()
        assert pool.stats()["in_use"] == 2
        first.execute("SELECT pg_backend_pid()")
        second.execute("SELECT pg_backend_pid()")
        (pid_1,), (pid_2,) = first.fetchone(), second.fetchone()
        assert pid_1 != pid_2
        assert isinstance(first, psycopg2.extensions.cursor)
        first.close()
        assert pool.stats()["in_use"] == 1
        first.close()  # idempotent, like psycopg2's
        second.close()
        assert pool.stats()["in_use"] == 0
        with PooledPostgresHook(conn_id).get_cursor() as cur:
            assert pool.stats()["in_use"] == 1
            cur.execute("SELECT pg_backend_pid()")
            assert cur.fetchone()[0] in (pid_1, pid_2)
        assert pool.stats()["in_use"] == 0
        gc.collect()
    assert _pool_warnings(caplog, conn_id, "dropped without close()") == []
    assert pool.stats()["connections_created"] == 2


def test_get_cursor_keeps_the_cursor_extra(make_conn_id, database):
    hook = PooledPostgresHook(make_conn_id(database, extra={"cursor": "realdictcursor"}))
    cur = hook.get_cursor()
    cur.execute("SELECT 1 AS one")
    assert cur.fetchone() == {"one": 1}
    assert isinstance(cur, psycopg2.extras.RealDictCursor)
    cur.close()
    assert hook.pool_stats()["in_use"] == 0


def test_sql_execute_query_operator_subclass_runs_on_the_pool(airflow_db, conn_id, pg_server, database):
    from airflow.dag_processing.dagbag import DagBag

    pg_server.execute("CREATE TABLE operator_runs (task text, pid int, app text)", dbname=database)
    bag = DagBag(dag_folder=str(Path(__file__).parent / "dags" / "pooled_sql_operator_dag.py"))
    assert bag.import_errors == {}
    dag_run = bag.get_dag("pooled_sql_operator").test(run_conf={"conn_id": conn_id})

    assert dag_run.state == "success"
    rows = pg_server.execute("SELECT task, pid, app FROM operator_runs ORDER BY task", dbname=database)
    app = f"test-{conn_id}"
    assert [(task, name) for task, _, name in rows] == [("first", app), ("second", app)]
    (_, pid_1, _), (_, pid_2, _) = rows
    assert pid_1 == pid_2  # both tasks ran on one pooled backend ...
    assert app_backends(pg_server, app) == [pid_1]  # ... which is still open, idle in the pool
    stats = registry.pools()[conn_id].stats()
    assert stats["connections_created"] == 1
    assert stats["checkouts"] == 2 and stats["in_use"] == 0
