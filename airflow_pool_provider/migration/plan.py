"""The migration's plan (and its dry run): what moves, what exists already, what it costs.

Made before anything is written and refused as a whole when a part cannot work: an unknown
table, a target table this migration did not create (``resume``), dependents outside the
selection of a table to drop (``replace``), a partition in a schema not selected, an extension
the target lacks, a type, function or relation of another schema the selection uses (or its
``regclass``-like values name) that the target lacks, pg_dump too old, a connection budget the
servers cannot hold, a privilege either connection's role lacks (named as GRANTs), a SECURITY
DEFINER function that would run as the target role.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg2

from airflow_pool_provider.copy import catalog as copy_catalog
from airflow_pool_provider.copy.budget import connections_for, read_slots
from airflow_pool_provider.copy.catalog import Side
from airflow_pool_provider.copy.choices import Choice
from airflow_pool_provider.copy.names import TableName
from airflow_pool_provider.copy.server import server_identity
from airflow_pool_provider.errors import MigrationMistake, first_line
from airflow_pool_provider.migration import catalog, outside, postdata, privileges
from airflow_pool_provider.migration.catalog import Relation, RelKind
from airflow_pool_provider.migration.ledger import MigrationLedger
from airflow_pool_provider.migration.postdata import set_index_build_memory
from airflow_pool_provider.migration.records import previous_run
from airflow_pool_provider.migration.report import render
from airflow_pool_provider.migration.request import MigrationRequest, Mode
from airflow_pool_provider.migration.selection import Selection, select
from airflow_pool_provider.migration.tools import PgTools, find_tools, server_major

# Columns of the selection that hold OIDs: type oid, or a domain over it (the lo extension's lo).
_OID_COLUMNS = """
SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname) || '.' || quote_ident(a.attname)
  FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
  JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE a.attrelid = ANY(%(oids)s) AND a.attnum > 0 AND NOT a.attisdropped
   AND (t.oid = 'oid'::regtype OR (t.typtype = 'd' AND t.typbasetype = 'oid'::regtype))
 ORDER BY 1
"""
_SOURCE_INDEX_NAMES = """
SELECT n.nspname, c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE i.indrelid = ANY(%(oids)s)
"""
# Relations of the target with these names, and the table of each that is an index.
_TARGET_NAMES = """
SELECT x.schema, x.name, tn.nspname, t.relname
  FROM unnest(%(schemas)s::text[], %(names)s::text[]) AS x(schema, name)
  JOIN pg_namespace n ON n.nspname = x.schema
  JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = x.name
  LEFT JOIN pg_index i ON i.indexrelid = c.oid
  LEFT JOIN pg_class t ON t.oid = i.indrelid
  LEFT JOIN pg_namespace tn ON tn.oid = t.relnamespace
 ORDER BY 1, 2
"""
_INDEXES = """
SELECT i.indrelid, c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
 WHERE i.indrelid = ANY(%s) ORDER BY c.relname
"""

# Target relations of the selection's names, with what depends on them from outside it.
_TARGET_TABLES = """
SELECT t.name, c.oid, c.relkind::text
  FROM unnest(%(names)s::text[]) AS t(name) JOIN pg_class c ON c.oid = to_regclass(t.name)
"""
_OUTSIDE_DEPENDENTS = """
-- The selection with every partition of its partitioned tables: a leaf's foreign key, inherited
-- from its parent's, is dropped with the parent and made again.
WITH selected AS (
    SELECT o AS oid FROM unnest(%(oids)s::oid[]) AS o
    UNION
    SELECT p.relid FROM unnest(%(oids)s::oid[]) AS o, pg_partition_tree(o) AS p
)
SELECT DISTINCT v.oid::regclass::text || ' (a view)'
  FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid AND d.classid = 'pg_rewrite'::regclass
  JOIN pg_class v ON v.oid = r.ev_class
 WHERE d.refobjid IN (SELECT oid FROM selected) AND v.oid NOT IN (SELECT oid FROM selected)
UNION
SELECT DISTINCT conrelid::regclass::text || ' (a foreign key ' || quote_ident(conname) || ')'
  FROM pg_constraint
 WHERE contype = 'f' AND confrelid IN (SELECT oid FROM selected) AND conrelid NOT IN (SELECT oid FROM selected)
ORDER BY 1
"""

# Partitions, at any depth, of the selected partitioned tables that live in schemas not selected.
_PARTITIONS_ELSEWHERE = """
SELECT o, n.nspname, c.relname
  FROM unnest(%(oids)s::oid[]) AS o
 CROSS JOIN LATERAL pg_partition_tree(o) AS p
  JOIN pg_class c ON c.oid = p.relid
  JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname <> ALL(%(schemas)s)
 ORDER BY n.nspname, c.relname
"""


class InTarget(Choice):
    """What the target holds under a selected table's name."""

    NO = "no"
    CREATED = "created by this migration"
    REPLACED = "will be replaced"
    EXISTS = "exists"  # not by this migration: refused in resume mode


@dataclass(frozen=True)
class TablePlan:
    name: str
    partitions: int
    estimated_rows: int
    bytes: int
    chunks: int  # estimated from the statistics; the data stage plans them exactly
    indexes: list[str]
    in_target: InTarget
    differences: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Budget:
    tasks: int  # copy tasks that may run at once
    per_task: int  # connections each holds
    needed: int
    available: int  # on the busier side
    fits: bool

    def describe(self) -> str:
        verdict = "fits" if self.fits else "does NOT fit"
        return (
            f"{self.tasks} copy task(s) at once x {self.per_task} connection(s) each = {self.needed}, "
            f"{verdict} in {self.available} spare slot(s)"
        )


@dataclass(frozen=True)
class MigrationPlan:
    migration_id: str
    mode: str
    dry_run: bool
    source_version: int
    target_version: int
    tools: str
    schemas: list[str]
    schemas_in_target: list[str]
    tables: list[TablePlan]
    views: list[str]
    sequences: list[str]
    extensions: list[str]
    budget: Budget
    resumed_stages: list[str]
    left_out: list[str] = field(default_factory=list)  # what the schemas hold that is not migrated, and why
    warnings: list[str] = field(default_factory=list)  # what may run, but should not be so

    @property
    def total_rows(self) -> int:
        return sum(t.estimated_rows for t in self.tables)

    def to_xcom(self) -> dict[str, Any]:
        """Plain JSON values (the enums as their values)."""
        return json.loads(json.dumps(asdict(self)))

    def table(self) -> str:
        rows = [
            (
                t.name,
                t.partitions,
                t.estimated_rows,
                round(t.bytes / 1e6, 1),
                t.chunks,
                len(t.indexes),
                t.in_target.value,
                "; ".join(t.differences) or "-",
            )
            for t in self.tables
        ]
        head = (
            f"migration {self.migration_id} ({self.mode}{', dry run' if self.dry_run else ''}): "
            f"PostgreSQL {self.source_version} -> {self.target_version}, {self.tools}\n"
            f"schemas {self.schemas} (already in the target: {self.schemas_in_target or 'none'}); "
            f"{len(self.tables)} table(s), about {self.total_rows:,} rows; views {self.views or 'none'}; "
            f"sequences {len(self.sequences)}; extensions needed {self.extensions or 'none'}\n"
            f"connection budget: {self.budget.describe()}"
            + (f"\nstages done by an earlier run: {self.resumed_stages}" if self.resumed_stages else "")
            + (f"\nNOT migrated: {'; '.join(self.left_out)}" if self.left_out else "")
            + "".join(f"\nWARNING: {w}" for w in self.warnings)
        )
        return (
            head
            + "\n"
            + render(
                ("table", "partitions", "rows (est.)", "MB", "chunks", "indexes", "in target", "differences"), rows
            )
        )


def refuse_onto_itself(scur, tcur) -> None:
    """A migration whose target is its source would drop (``replace``) or refuse (``resume``) the
    very tables it reads: never meant, refused before anything else."""
    source = server_identity(scur)
    if source.same_database(server_identity(tcur)):
        raise MigrationMistake(
            f"the source and the target are the same database ({source.database!r} on one server, port "
            f"{source.port}): a migration would drop or refuse the tables it reads. Point the target "
            "connection at another database"
        )


def make_plan(scur, tcur, request: MigrationRequest, copy_tasks: int) -> MigrationPlan:
    """The plan, or a MigrationMistake listing everything that stops it."""
    refuse_onto_itself(scur, tcur)
    source_major, target_major = server_major(scur), server_major(tcur)
    tools = find_tools(source_major, target_major, request.pg_bin_dir)
    source = catalog.load(scur, request.schemas)
    missing_schemas = [s for s in request.schemas if s not in catalog.existing_schemas(scur, request.schemas)]
    if missing_schemas:
        raise MigrationMistake(f"schemas {missing_schemas} do not exist in the source")
    selection = select(source, request.tables, request.exclude_tables)
    earlier = previous_run(MigrationLedger(request.ledger_schema, request.id), tcur)
    problems: list[str] = []
    _check_partitions_elsewhere(scur, selection, request.schemas, problems)
    tables = _table_plans(scur, tcur, selection, request, earlier.created_tables, problems)
    extensions = catalog.extensions_used(scur, sorted(selection.restored), request.schemas)
    lacking = sorted(set(extensions) - catalog.installed_extensions(tcur))
    if lacking:
        problems.append(
            f"the target lacks the extension(s) {lacking} the tables use: CREATE EXTENSION them in "
            "the target database first (a schema dump does not carry extensions)"
        )
    outside.check(scur, tcur, selection, problems)
    _check_index_build_memory(tcur, request.index_build_memory, problems)
    _check_large_objects(scur, selection, problems)
    _check_index_names(scur, tcur, selection, problems)
    functions = privileges.functions(scur, request.schemas)
    privileges.check_functions(functions, request.keep_owners, request.allow_security_definer, problems)
    privileges.check_roles(scur, tcur, request.schemas, request.ledger_schema, problems)
    budget = _budget(scur, tcur, request.parallelism, copy_tasks)
    if not budget.fits:
        problems.append(
            f"connection budget: {budget.describe()}; lower parallelism or the copy tasks' "
            "concurrency, or raise max_connections"
        )
    if problems:
        raise MigrationMistake(f"migration {request.id} cannot run:\n  - " + "\n  - ".join(problems))
    return MigrationPlan(
        migration_id=request.id,
        mode=request.mode.value,
        dry_run=request.dry_run,
        source_version=source_major,
        target_version=target_major,
        tools=tools.describe(),
        schemas=list(request.schemas),
        schemas_in_target=sorted(catalog.existing_schemas(tcur, request.schemas)),
        tables=tables,
        views=[str(v.name) for v in selection.views],
        sequences=[str(s.name) for s in selection.sequences],
        extensions=extensions,
        budget=budget,
        resumed_stages=[stage.value for stage in earlier.stages_done],
        left_out=_left_out(selection)
        + _foreign_keys_left_out(scur, selection)
        + privileges.not_migrated(functions, request.keep_owners),
        warnings=_powerful_roles(scur, "source") + _powerful_roles(tcur, "target"),
    )


# Whether the connection's role is a superuser, and the predefined roles that reach outside the
# database (files, programs, other sessions) it is a member of.
_POWERS = """
SELECT rolsuper, ARRAY(SELECT p FROM unnest(ARRAY['pg_read_server_files', 'pg_write_server_files',
                                                  'pg_execute_server_program', 'pg_signal_backend']) AS p
                        WHERE pg_has_role(current_user, p, 'MEMBER'))
  FROM pg_roles WHERE rolname = current_user
"""


def _powerful_roles(cur, side: str) -> list[str]:
    """A warning when a connection's role can reach outside its database: the source schema is
    code (CHECK functions, defaults, triggers fired by COPY) that runs on the target with the
    target role's powers; the source role needs only to read."""
    cur.execute(_POWERS)
    superuser, memberships = cur.fetchone()
    if not superuser and not memberships:
        return []
    powers = "a superuser" if superuser else f"a member of {', '.join(memberships)}"
    if side == "target":
        why = (
            "the source schema's code (CHECK and default functions, triggers fired by the copy) runs on the "
            "target with its powers; use a role that owns only the migrated schemas"
        )
    else:
        why = "the migration only reads the source; use a role that can only read the selected schemas"
    return [f"the {side} connection's role is {powers}: {why} (README: Roles for a migration)"]


def _left_out(selection: Selection) -> list[str]:
    """Relations of the selected schemas a migration does not move, said in the plan."""
    relations = sorted(selection.catalog.relations.values(), key=lambda r: str(r.name))
    return [
        f"{r.name} (a foreign table: create its server, user mapping and table in the target by hand)"
        for r in relations
        if r.kind is RelKind.FOREIGN_TABLE
    ] + [
        f"{r.name} (a view that reads relations not migrated: select them too to bring it)"
        for r in relations
        if r.is_view and r.oid not in selection.restored
    ]


def _foreign_keys_left_out(scur, selection: Selection) -> list[str]:
    """Foreign keys of the selected tables to tables left out: post-data leaves them out (the
    rows they reference do not come along), said here before anything runs."""
    tables = {oid: selection.catalog.relations[oid].name for oid in selection.restored}
    keys = postdata.read_foreign_keys(scur, tables)
    scur.execute("SET LOCAL search_path TO DEFAULT")  # read_foreign_keys empties it
    return [
        f"foreign key {k.name} of {k.table} ({k.definition}): it references a table not selected, so it is "
        "left out; select that table too to keep it"
        for k in keys
        if k.references is None
    ]


def _check_large_objects(scur, selection: Selection, problems: list[str]) -> None:
    """Large objects live outside the tables that name them by OID: a copy of those tables would
    name objects the target does not have. Refused until they are moved."""
    scur.execute("SELECT count(*) FROM pg_largeobject_metadata")
    count = scur.fetchone()[0]
    if not count:
        return
    scur.execute(_OID_COLUMNS, {"oids": sorted(selection.restored)})
    columns = [row[0] for row in scur.fetchall()]
    if columns:
        problems.append(
            f"the source holds {count:,} large object(s), and {columns} hold OIDs that name them: large objects "
            "are not migrated; move them first (pg_dump --large-objects, pg_restore --data-only) or leave "
            "these tables out with exclude_tables"
        )


def _check_index_names(scur, tcur, selection: Selection, problems: list[str]) -> None:
    """An index name is unique in its schema: one the target uses for another table's index (or
    for a relation) would stop the build after the data is in."""
    tables = {oid: selection.catalog.relations[oid] for oid in selection.restored}
    scur.execute(_SOURCE_INDEX_NAMES, {"oids": [oid for oid, r in tables.items() if r.is_table]})
    names = scur.fetchall()
    if not names:
        return
    tcur.execute(_TARGET_NAMES, {"schemas": [s for s, _ in names], "names": [n for _, n in names]})
    ours = {r.name for r in tables.values()}
    taken = []
    for schema, name, owner_schema, owner_name in tcur.fetchall():
        owner = TableName(owner_schema, owner_name) if owner_name else None
        if owner not in ours:
            taken.append(f"{TableName(schema, name)} ({f'an index of {owner}' if owner else 'not an index'})")
    if taken:
        problems.append(
            f"index names the migration needs are taken in the target by other relations: {', '.join(taken)}; "
            "rename or drop them, or leave out the tables whose indexes these are"
        )


def _check_partitions_elsewhere(scur, selection: Selection, schemas: tuple[str, ...], problems: list[str]) -> None:
    """The catalog reads the selected schemas only: a partition in another would be neither
    created nor copied, and its rows missing."""
    partitioned = {t.oid: t for t in selection.tables if t.is_partitioned}
    if not partitioned:
        return
    scur.execute(_PARTITIONS_ELSEWHERE, {"oids": list(partitioned), "schemas": list(schemas)})
    elsewhere: dict[int, list[TableName]] = {}
    for table, schema, name in scur.fetchall():
        elsewhere.setdefault(table, []).append(TableName(schema, name))
    for table, partitions in elsewhere.items():
        missing = sorted({p.schema for p in partitions})
        problems.append(
            f"partitioned table {partitioned[table].name} has partitions in schemas not selected: "
            f"{', '.join(map(str, partitions))}; add their schemas {missing} to schemas, or leave the "
            "table out with exclude_tables"
        )


def _check_index_build_memory(tcur, memory: str | None, problems: list[str]) -> None:
    """The index builds' maintenance_work_mem, tried on the target (in a savepoint) before anything runs."""
    if memory is None:
        return
    tcur.execute("SAVEPOINT index_build_memory")
    try:
        set_index_build_memory(tcur, memory)
    except psycopg2.Error as error:
        problems.append(
            f"index_build_memory {memory!r} is not a maintenance_work_mem the target accepts "
            f"({first_line(error)}): give a size such as '512MB' or '2GB', or leave it empty"
        )
    tcur.execute("ROLLBACK TO SAVEPOINT index_build_memory")


def tools_for(scur, tcur, request: MigrationRequest) -> PgTools:
    return find_tools(server_major(scur), server_major(tcur), request.pg_bin_dir)


def _table_plans(
    scur, tcur, selection: Selection, request: MigrationRequest, created: frozenset[TableName], problems: list[str]
) -> list[TablePlan]:
    scur.execute(_INDEXES, ([t.oid for t in selection.tables],))
    indexes: dict[int, list[str]] = {}
    for table, index in scur.fetchall():
        indexes.setdefault(table, []).append(index)
    tcur.execute(_TARGET_TABLES, {"names": [str(t.name) for t in selection.tables]})
    in_target = {name: (oid, kind) for name, oid, kind in tcur.fetchall()}
    plans = []
    for table in selection.tables:
        leaves = selection.data_sources(table)
        rows = sum(leaf.estimated_rows for leaf in leaves)
        chunks = sum(max(1, math.ceil(leaf.estimated_rows / request.chunk_size)) for leaf in leaves)
        state, differences = _state_in_target(scur, tcur, table, in_target.get(str(table.name)), request, created)
        if state is InTarget.EXISTS:
            problems.append(
                f"target table {table.name} exists and this migration did not create it: use "
                "mode='replace' to drop and recreate it, or leave it out with exclude_tables"
            )
        size = sum(leaf.bytes for leaf in leaves)
        plans.append(
            TablePlan(
                str(table.name),
                len(leaves) if table.is_partitioned else 0,
                rows,
                size,
                chunks,
                indexes.get(table.oid, []),
                state,
                differences,
            )
        )
    if request.mode is Mode.REPLACE:
        tcur.execute(_TARGET_TABLES, {"names": [str(v.name) for v in selection.views]})
        views = [oid for _, oid, _ in tcur.fetchall()]  # they come along: dropped and made again too
        _check_dependents(tcur, [oid for oid, _ in in_target.values()] + views, problems)
    return plans


def _state_in_target(
    scur, tcur, table: Relation, found: tuple[int, str] | None, request: MigrationRequest, created: frozenset[TableName]
) -> tuple[InTarget, list[str]]:
    if found is None:
        return InTarget.NO, []
    if request.mode is Mode.REPLACE:
        return InTarget.REPLACED, []
    if table.name not in created:
        return InTarget.EXISTS, []
    return InTarget.CREATED, _differences(scur, tcur, table)


def _differences(scur, tcur, table: Relation) -> list[str]:
    """How the target's table differs from the source's, if it does."""
    source = copy_catalog.load_table(scur, table.name, Side.SOURCE)
    target = copy_catalog.load_table(tcur, table.name, Side.TARGET)
    return [str(d) for d in copy_catalog.differences_between(source, target, source.copyable_columns())]


def _check_dependents(tcur, oids: list[int], problems: list[str]) -> None:
    if not oids:
        return
    tcur.execute(_OUTSIDE_DEPENDENTS, {"oids": oids})
    dependents = [row[0] for row in tcur.fetchall()]
    if dependents:
        problems.append(
            f"mode='replace' would have to drop objects outside the selection that depend on its "
            f"tables: {dependents}. Drop or change them first, or add their tables to the selection"
        )


def _budget(scur, tcur, parallelism: int, copy_tasks: int) -> Budget:
    """Copy tasks at once x (2 x parallelism + 1) connections, plus the snapshot holder, against the
    spare slots of both servers (of the one server when they are the same)."""
    source, target = read_slots(scur, "source"), read_slots(tcur, "target")
    same_server = server_identity(scur).same_server(server_identity(tcur))
    per_task = connections_for(parallelism)
    needed = copy_tasks * per_task + 1
    if same_server:
        available = source.available
        fits = needed <= available
    else:
        available = min(source.available, target.available)
        fits = copy_tasks * (parallelism + 1) + 1 <= source.available and copy_tasks * parallelism <= target.available
    return Budget(copy_tasks, per_task, needed, available, fits)
