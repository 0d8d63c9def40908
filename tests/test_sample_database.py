"""A public real-world schema migrated whole: MusicBrainz's database, as the ``mbdata`` package
(PyPI, MIT) ships its SQL, built the way MusicBrainz's own ``InitDb.pl`` builds a clean database.

Nine schemas, over 500 tables, enums, an ICU collation, a text search configuration, three
extensions, hundreds of functions and triggers, partial and expression indexes, views across
schemas. It has no materialized views and no comments, and its data is the default rows a clean
MusicBrainz database starts with (the legacy demo database covers volume).

The source and target are compared from their catalogs, independently of the migration's own
verification: an inventory of every object and a digest of every table's rows.
"""

from __future__ import annotations

import importlib.resources

import pytest
from catalog_inventory import inventory, read_back, row_digests
from dag_runs import load_dag, returned, run_dag, states
from psycopg2 import sql

from airflow_pool_provider.copy.names import TableName

pytestmark = pytest.mark.sample  # a second tier: about two minutes (CI runs it: ./dev test -m sample)

SCHEMAS = [
    "musicbrainz",
    "cover_art_archive",
    "event_art_archive",
    "documentation",
    "json_dump",
    "report",
    "sitemaps",
    "statistics",
    "wikidocs",
]
EXTENSIONS = ("cube", "earthdistance", "unaccent")

# InitDb.pl's order for a clean database (mbdata ships no InitDb.pl): schemas, extensions,
# collations, types, tables, the default rows, keys, functions, indexes, foreign keys, sequences,
# views, triggers. Left out: what needs MusicBrainz's own C extensions (CreateCollateIndexes.sql)
# or a replication master (ReplicationSetup, replication triggers, dbmirror2).
SCRIPTS = [
    "Extensions.sql",
    "CreateCollations.sql",
    "CreateTypes.sql",
    "CreateTables.sql",
    "caa/CreateTables.sql",
    "eaa/CreateTables.sql",
    "documentation/CreateTables.sql",
    "json_dump/CreateTables.sql",
    "report/CreateTables.sql",
    "sitemaps/CreateTables.sql",
    "statistics/CreateTables.sql",
    "wikidocs/CreateTables.sql",
    "InsertDefaultRows.sql",
    "CreatePrimaryKeys.sql",
    "caa/CreatePrimaryKeys.sql",
    "documentation/CreatePrimaryKeys.sql",
    "eaa/CreatePrimaryKeys.sql",
    "json_dump/CreatePrimaryKeys.sql",
    "statistics/CreatePrimaryKeys.sql",
    "wikidocs/CreatePrimaryKeys.sql",
    "CreateSearchConfiguration.sql",
    "CreateFunctions.sql",
    "caa/CreateFunctions.sql",
    "eaa/CreateFunctions.sql",
    "CreateIndexes.sql",
    "caa/CreateIndexes.sql",
    "eaa/CreateIndexes.sql",
    "json_dump/CreateIndexes.sql",
    "sitemaps/CreateIndexes.sql",
    "statistics/CreateIndexes.sql",
    "CreateFKConstraints.sql",
    "caa/CreateFKConstraints.sql",
    "documentation/CreateFKConstraints.sql",
    "eaa/CreateFKConstraints.sql",
    "caa/CreateEditFKConstraints.sql",
    "eaa/CreateEditFKConstraints.sql",
    "sitemaps/CreateFKConstraints.sql",
    "CreateConstraints.sql",
    "SetSequences.sql",
    "statistics/SetSequences.sql",
    "CreateViews.sql",
    "caa/CreateViews.sql",
    "eaa/CreateViews.sql",
    "CreateTriggers.sql",
    "caa/CreateTriggers.sql",
    "eaa/CreateTriggers.sql",
    "CreateSearchIndexes.sql",
]


def load_musicbrainz(conn) -> None:
    """Build the schema and its default rows in ``conn``'s database (autocommit); each script runs
    as psql would run it, in a session whose search_path is MusicBrainz's."""
    root = importlib.resources.files("mbdata") / "sql"
    with conn.cursor() as cur:
        for schema in SCHEMAS:
            cur.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        for script in SCRIPTS:
            cur.execute("SET search_path = musicbrainz, public")  # the previous script may have set its own
            text = (root / script).read_text()
            # psql's meta-commands (\set ON_ERROR_STOP 1): errors stop here anyway
            cur.execute("\n".join(line for line in text.splitlines() if not line.lstrip().startswith("\\")))


@pytest.fixture(scope="module")
def musicbrainz_template(pg_server):
    """A database with MusicBrainz, built once for the module; each test's source is a copy."""
    available = pg_server.execute(
        "SELECT count(*) FROM pg_available_extensions WHERE name = ANY(%s)", (list(EXTENSIONS),)
    )
    if available[0][0] < len(EXTENSIONS):
        pytest.skip(f"the server lacks the contrib extensions {', '.join(EXTENSIONS)} (Debian: postgresql-contrib)")
    name = pg_server.create_database("musicbrainz")
    try:
        conn = pg_server.admin(name)
        try:
            load_musicbrainz(conn)
        finally:
            conn.close()
        yield name
    finally:
        pg_server.drop_database(name)


@pytest.fixture
def migration_source_template(musicbrainz_template):
    return musicbrainz_template


@pytest.fixture
def migrate():
    return load_dag("migrate_tables", "migrate_tables.py")


def create_extensions(conn, names) -> None:
    with conn.cursor() as cur:
        for name in names:
            cur.execute(sql.SQL("CREATE EXTENSION {}").format(sql.Identifier(name)))


def _rows(conn, query: str, params=None) -> list[tuple]:
    with conn.cursor() as cur:
        cur.execute(query, params)
        return cur.fetchall()


#: A migration of every schema: public holds the extensions and public.immutable_unaccent().
CONF = {"schemas": [*SCHEMAS, "public"], "chunk_size": 1000}  # 1,000: the empty tables share one copy batch


def refusal(migrate, capsys) -> str:
    """What the plan (of a dry run) said when it refused the migration."""
    run, _ = run_dag(migrate, {**CONF, "dry_run": True}, task_id="plan")
    assert run.state == "failed" and states(run)["plan"] == "failed"
    return capsys.readouterr().out


def test_the_plan_refuses_a_target_without_the_extensions_the_tables_use(
    airflow_db, migration_databases, migrate, capsys
):
    src, dst = migration_databases
    output = refusal(migrate, capsys)
    assert "the target lacks the extension(s) ['cube', 'earthdistance', 'unaccent'] the tables use" in output
    assert _rows(dst, "SELECT count(*) FROM pg_namespace WHERE nspname = 'musicbrainz'") == [(0,)]  # nothing written


def test_the_plan_names_unaccent_too(airflow_db, migration_databases, migrate, capsys):
    create_extensions(migration_databases[1], ["cube", "earthdistance"])
    assert "unaccent" in refusal(migrate, capsys)


#: Views and CHECK constraints whose definition PostgreSQL prints otherwise once it has read its
#: own output back (a dump and restore does the same): equal in meaning, not in text.
READ_BACK_OTHERWISE = {
    ("view", "musicbrainz.release_event"),  # NULL::integer becomes NULL::integer AS int4
    ("constraint", "musicbrainz.editor_collection_type allowed_collection_entity_type"),  # (ARRAY[...])::text[]
    ("constraint", "musicbrainz.series_type allowed_series_entity_type"),  # becomes ARRAY[(...)::text, ...]
}


def test_musicbrainz_migrates_whole_and_the_catalogs_agree(airflow_db, migration_databases, migrate, capsys):
    src, dst = migration_databases
    create_extensions(dst, EXTENSIONS)
    run, report = run_dag(migrate, CONF, task_id="verify")

    plan = returned(run, "plan")  # everything moves, nothing is left out
    tables = _rows(
        src,
        """SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition AND n.nspname = ANY(%s)""",
        (SCHEMAS,),
    )
    assert sorted(t["name"] for t in plan["tables"]) == sorted(str(TableName(*t)) for t in tables)
    assert len(plan["tables"]) == 512 and len(plan["views"]) == 12 and plan["left_out"] == []
    assert run.state == "success", states(run)
    assert report is not None and report["verified"], "NOT verified: see the verify task's log"
    source, target = inventory(src), inventory(dst)
    assert source.count("relation") > 700 and source.count("trigger") > 400 and source.count("function") > 100
    differences = source.differences(target)
    assert {d: sides for d, sides in differences.items() if d not in READ_BACK_OTHERWISE} == {}
    for difference in READ_BACK_OTHERWISE:  # the target holds what the source's definition reads back as
        source_definition, target_definition = differences[difference]
        assert read_back(src, difference, source_definition) == target_definition, difference
    assert row_digests(dst) == row_digests(src)
