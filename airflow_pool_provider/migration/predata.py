"""The pre-data stage: schemas, types, domains, functions, sequences, tables and views, restored
in one target transaction together with the stage's ledger rows.

Schema-level objects that already exist in the target (a type or function of an earlier run, or
made by hand) are reused, not created again, and the log names them. ``mode='replace'`` first
drops the selected tables and views in the target, without CASCADE: the plan has refused
already if anything outside the selection depends on them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg2.errors
from psycopg2 import sql

from airflow_pool_provider.copy.ledger import Ledger
from airflow_pool_provider.copy.names import quote_ident
from airflow_pool_provider.migration import catalog, locks, privileges, schema, scratch, toc
from airflow_pool_provider.migration.catalog import Relation, RelKind
from airflow_pool_provider.migration.data import copy_id_prefix
from airflow_pool_provider.migration.ledger import WHOLE_STAGE, MigrationLedger, ObjectKey, Stage
from airflow_pool_provider.migration.locks import LockMode, LockWaits
from airflow_pool_provider.migration.records import PreDataRecord
from airflow_pool_provider.migration.request import MigrationRequest, Mode
from airflow_pool_provider.migration.selection import Selection
from airflow_pool_provider.migration.tools import PgTools

#: How to ask the target whether a schema-level object exists already, by TOC kind.
_LOOKUPS = {
    "TYPE": "to_regtype",
    "DOMAIN": "to_regtype",
    "FUNCTION": "to_regprocedure",
    "PROCEDURE": "to_regprocedure",
    "SEQUENCE": "to_regclass",
}


@dataclass(frozen=True)
class PreDataResult:
    restored: int  # TOC entries restored
    reused: list[str]  # schema-level objects that existed already
    dropped: list[str]  # mode='replace'
    tables: list[str]
    skipped: bool  # done by an earlier run


def run(
    tconn,
    selection: Selection,
    request: MigrationRequest,
    ledger: MigrationLedger,
    tools: PgTools,
    source_connect: Mapping[str, Any],
    snapshot: str | None,
    log: logging.Logger | logging.LoggerAdapter,
    restricted: Sequence[privileges.Function] = (),
) -> PreDataResult:
    """``restricted``: the functions PUBLIC may not execute on the source; kept from it here too."""
    tables = [t.name for t in selection.tables]
    with tconn.cursor() as tcur:
        ledger.ensure(tcur)
        earlier = ledger.read(tcur, Stage.PRE_DATA, WHOLE_STAGE, PreDataRecord)
        if earlier is not None and (request.mode is not Mode.REPLACE or earlier.run == request.run_id):
            tconn.rollback()
            log.info("pre-data: done by an earlier run of migration %s; nothing to do", ledger.migration_id)
            return PreDataResult(0, [], [], [str(t) for t in tables], skipped=True)
        if earlier is not None:  # replace, in a new run: everything recorded of the earlier one goes
            _start_over(tcur, ledger, request, log)
        with scratch.folder("schema") as folder:
            # The dump first: pg_dump reads the source in a session of its own, which must never
            # wait for the locks of this transaction's drops.
            archive = schema.dump(tools, source_connect, selection.catalog, snapshot, folder)
            dropped = _drop_selected(tcur, selection, request.lock_waits, log) if request.mode is Mode.REPLACE else []
            existing = catalog.existing_schemas(tcur, request.schemas)
            entries = toc.pre_data(list(archive.entries), selection, existing)
            reused = _existing_objects(tcur, entries, selection)
            entries = [e for e in entries if e.dump_id not in reused]
            schema.apply(tcur, schema.script(tools, archive, entries, request.keep_owners))
        revoked = _restrict(tcur, entries, restricted)
        for table in tables:
            ledger.record(tcur, Stage.PRE_DATA, ObjectKey.of_table(table))
        record = PreDataRecord(len(entries), tuple(sorted(reused.values())), request.run_id, tuple(dropped))
        ledger.record(tcur, Stage.PRE_DATA, WHOLE_STAGE, record)
    tconn.commit()
    log.info(
        "pre-data: %d object(s) restored in one transaction (%d table(s)); reused as they were: %s%s",
        len(entries),
        len(tables),
        list(record.reused) or "none",
        f"; dropped first (mode=replace): {dropped}" if dropped else "",
    )
    if revoked:
        log.info("pre-data: EXECUTE revoked from PUBLIC, as on the source, on %s", revoked)
    return PreDataResult(len(entries), list(record.reused), dropped, [str(t) for t in tables], skipped=False)


def _restrict(tcur, entries: list[toc.TocEntry], restricted: Sequence[privileges.Function]) -> list[str]:
    """Revoke EXECUTE from PUBLIC on the restored functions the source keeps from it (the restore
    leaves out every grant and revoke); those reused as they were are left alone."""
    restored = {e.oid for e in entries if e.desc in ("FUNCTION", "PROCEDURE")}
    chosen = [f for f in restricted if f.oid in restored]
    privileges.revoke_from_public(tcur, chosen)
    return [f.describe() for f in chosen]


def _start_over(tcur, ledger: MigrationLedger, request: MigrationRequest, log) -> None:
    """Forget an earlier run's records (but the snapshot) and its chunks."""
    ledger.forget(tcur, keep=(Stage.SNAPSHOT,))
    Ledger(request.ledger_schema).forget_prefix(tcur, copy_id_prefix(ledger.migration_id))  # its copies only
    log.info(
        "pre-data: mode=replace: the earlier run's records of migration %s are cleared; it starts over",
        ledger.migration_id,
    )


def _drop_selected(
    tcur, selection: Selection, waits: LockWaits, log: logging.Logger | logging.LoggerAdapter
) -> list[str]:
    """Drop the selection's views and materialized views that exist in the target, each after
    those that read it, then its tables in one statement (foreign keys among them go with them);
    no CASCADE. Each waits for its locks as ``waits`` says."""
    views = [v for v in reversed(selection.views) if _exists(tcur, v)]
    for view in views:
        kind = "MATERIALIZED VIEW" if view.kind is RelKind.MATERIALIZED_VIEW else "VIEW"
        drop = sql.SQL("DROP {} {}").format(sql.SQL(kind), view.name.identifier())
        locks.execute(tcur, drop, [view.name], LockMode.ACCESS_EXCLUSIVE, waits, log)
    tables = [t for t in selection.tables if _exists(tcur, t)]
    if tables:
        drop = sql.SQL("DROP TABLE {}").format(sql.SQL(", ").join(t.name.identifier() for t in tables))
        locks.execute(tcur, drop, [t.name for t in tables], LockMode.ACCESS_EXCLUSIVE, waits, log)
    return [str(r.name) for r in (*views, *tables)]


def _exists(tcur, relation: Relation) -> bool:
    tcur.execute("SELECT to_regclass(%s) IS NOT NULL", (str(relation.name),))
    return tcur.fetchone()[0]


def _existing_objects(tcur, entries: list[toc.TocEntry], selection: Selection) -> dict[int, str]:
    """Dump ids of schema-level objects that already exist in the target, with their names."""
    found = {}
    for entry in entries:
        lookup = _LOOKUPS.get(entry.desc)
        if lookup is None or entry.schema not in selection.catalog.schemas:
            continue
        if entry.desc == "SEQUENCE" and selection.owns(1259, entry.oid):
            continue  # a table's own sequence goes with its table
        name, paren, args = entry.tag.partition("(")
        text = f"{quote_ident(entry.schema)}.{quote_ident(name)}{paren}{args}"
        if _exists_by_name(tcur, lookup, text):
            found[entry.dump_id] = f"{entry.desc.lower()} {entry.schema}.{entry.tag}"
    return found


def _exists_by_name(tcur, lookup: str, text: str) -> bool:
    """Whether ``lookup`` (``to_regprocedure``, ...) finds ``text`` in the target: a signature
    naming a type (or a schema) the target lacks raises rather than answering no, so the lookup
    runs under a savepoint and that counts as not there."""
    tcur.execute("SAVEPOINT pool_provider_lookup")
    try:
        tcur.execute(sql.SQL("SELECT {}(%s) IS NOT NULL").format(sql.SQL(lookup)), (text,))
        found = tcur.fetchone()[0]
    except (psycopg2.errors.InvalidSchemaName, psycopg2.errors.UndefinedObject):
        tcur.execute("ROLLBACK TO SAVEPOINT pool_provider_lookup")
        return False
    tcur.execute("RELEASE SAVEPOINT pool_provider_lookup")
    return found
