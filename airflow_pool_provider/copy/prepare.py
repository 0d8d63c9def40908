"""Preparing a table copy: everything decided before the first row moves.

Both tables' definitions are read and compared, the row filter is checked by the source, the
ledger is found (or made), and the chunk plan is made and stored, or loaded from an earlier
attempt. Nothing is written to the target table before every check has passed, except the
TRUNCATE of ``mode='replace'``, which commits together with the stored plan.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from psycopg2 import sql

from airflow_pool_provider.copy import catalog, checksum, plan, sequences
from airflow_pool_provider.copy.budget import ServerSlots, WorkerBudget, read_slots
from airflow_pool_provider.copy.catalog import Side, Table
from airflow_pool_provider.copy.checksum import ChecksumMethod
from airflow_pool_provider.copy.ledger import Ledger, StoredPlan
from airflow_pool_provider.copy.plan import Chunk, Keyset, KeysetKind
from airflow_pool_provider.copy.sequences import SequencePair
from airflow_pool_provider.copy.server import ServerIdentity, server_identity
from airflow_pool_provider.copy.snapshot import SourceSnapshot
from airflow_pool_provider.copy.spec import CopyMode, CopySpec, TargetChecksum
from airflow_pool_provider.errors import CatalogError, CopyMistake


@dataclass(frozen=True)
class PreparedCopy:
    """What every chunk of one copy works with; fixed once prepared."""

    copy_id: str
    source: Table
    target: Table
    columns: tuple[str, ...]
    conflict: tuple[str, ...]
    keyset: Keyset
    chunks: tuple[Chunk, ...]
    done: frozenset[int]
    ledger: Ledger
    binary: bool
    checksum: ChecksumMethod
    verify_in_range: bool  # the chunk's key range finds its rows in the target too
    sequences: tuple[SequencePair, ...]
    budget: WorkerBudget

    @property
    def pending(self) -> list[Chunk]:
        return [c for c in self.chunks if c.no not in self.done]


#: Decides the workers from both servers' slots (the target's None when it is the source's server).
BudgetCheck = Callable[[ServerSlots, "ServerSlots | None"], WorkerBudget]

Log = logging.Logger | logging.LoggerAdapter


@dataclass(frozen=True, slots=True)
class _Request:
    """The copy asked for, the snapshot it reads through, and where it reports."""

    spec: CopySpec
    copy_id: str
    snapshot: SourceSnapshot
    log: Log


@dataclass(frozen=True, slots=True)
class _Sides:
    """Both tables, the servers they are on, and the columns copied between them."""

    source: Table
    target: Table
    source_server: ServerIdentity
    target_server: ServerIdentity
    columns: tuple[str, ...]

    @property
    def one_server(self) -> bool:
        return self.source_server.same_server(self.target_server)


def prepare(
    scur,
    tconn,
    spec: CopySpec,
    copy_id: str,
    snapshot: SourceSnapshot,
    check_budget: BudgetCheck,
    log: Log,
) -> PreparedCopy:
    """``scur``: a cursor in ``snapshot``'s own transaction. ``check_budget`` runs before anything
    is written, so a copy refused for lack of connections leaves no trace."""
    with tconn.cursor() as tcur:
        sides = _load_sides(scur, tcur, spec)
        conflict = _conflict_columns(spec, sides.target, sides.columns)
        pairs = sequences.pair(scur, tcur, sides.source, sides.target, sides.columns) if spec.sync_sequences else []
        budget = check_budget(*_server_slots(scur, tcur, sides))
        _warn_sequence_rights(scur, tcur, pairs, log)
        ledger = _open_ledger(tcur, spec, copy_id, sides.target, log)
        stored = _plan_or_resume(scur, tcur, ledger, _Request(spec, copy_id, snapshot, log), sides)
    snapshot.stop.raise_if_stopped()  # a stopped copy commits no plan (nor a replace's TRUNCATE)
    tconn.commit()
    in_range = _key_maps_onto_target(stored.keyset, sides)
    _warn_target_scans(spec, copy_id, stored.keyset, in_range, log)
    return PreparedCopy(
        copy_id=copy_id,
        source=sides.source,
        target=sides.target,
        columns=sides.columns,
        conflict=conflict,
        keyset=stored.keyset,
        chunks=tuple(stored.chunks),
        done=stored.done,
        ledger=ledger,
        binary=_binary_format(sides, copy_id, log),
        checksum=checksum.method(sides.source, sides.target, sides.columns),
        verify_in_range=in_range,
        sequences=tuple(pairs),
        budget=budget,
    )


def _load_sides(scur, tcur, spec: CopySpec) -> _Sides:
    """Read both tables (and check the filter on the source); CatalogError unless they can be copied."""
    source = catalog.load_table(scur, spec.source_name, Side.SOURCE)
    spec.row_filter.check(scur, source.own_rows)
    target = catalog.load_table(tcur, spec.target_name, Side.TARGET)
    columns = tuple(spec.columns) if spec.columns else source.copyable_columns()
    sides = _Sides(source, target, server_identity(scur), server_identity(tcur), columns)
    if sides.source_server == sides.target_server and target.oid == source.oid:
        raise CatalogError(
            f"source and target are the same table ({source.name} in database {sides.source_server.database}): "
            "name another target_table or another target connection"
        )
    catalog.check_compatible(source, target, columns)
    return sides


def _server_slots(scur, tcur, sides: _Sides) -> tuple[ServerSlots, ServerSlots | None]:
    """Each server's free slots; the target's None when it is the source's server."""
    return read_slots(scur, Side.SOURCE), None if sides.one_server else read_slots(tcur, Side.TARGET)


def _open_ledger(tcur, spec: CopySpec, copy_id: str, target: Table, log: Log) -> Ledger:
    """The copy's ledger, made if need be, and locked for ``copy_id`` until the plan commits."""
    ledger = Ledger.locate(tcur, copy_id, target.name.schema, spec.ledger_schema, log)
    ledger.ensure(tcur)
    tcur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (copy_id,))
    return ledger


def _plan_or_resume(scur, tcur, ledger: Ledger, request: _Request, sides: _Sides) -> StoredPlan:
    """The plan stored by an earlier attempt, or a new one, stored (after a replace's TRUNCATE)."""
    stored = _resumable_plan(tcur, ledger, request, sides)
    if stored is None:
        return _new_plan(scur, tcur, ledger, request, sides)
    _log_resume(stored, ledger, request)
    return stored


def _log_resume(stored: StoredPlan, ledger: Ledger, request: _Request) -> None:
    """Say how much an earlier attempt did, and which snapshot the rest is read through."""
    log, copy_id, snapshot = request.log, request.copy_id, request.snapshot
    if snapshot.taken_now:
        log.info(
            "copy %s resumes: %d of %d chunk(s) already done (ledger %s); the rest are read from a NEW "
            "snapshot of the source (%s), taken now - rows changed since the earlier attempt are "
            "copied as they are now",
            copy_id,
            len(stored.done),
            len(stored.chunks),
            ledger,
            snapshot.id,
        )
    else:
        log.info(
            "copy %s: %d of %d chunk(s) already done (ledger %s); the rest are read through the shared snapshot %s",
            copy_id,
            len(stored.done),
            len(stored.chunks),
            ledger,
            snapshot.id,
        )


def _new_plan(scur, tcur, ledger: Ledger, request: _Request, sides: _Sides) -> StoredPlan:
    """Split the source into chunks through the snapshot and store the plan in the ledger."""
    spec, copy_id, snapshot, log = request.spec, request.copy_id, request.snapshot, request.log
    source, target = sides.source, sides.target
    keyset = plan.choose_keyset(source, tuple(spec.key) if spec.key else None)
    chunks = plan.plan(scur, source, keyset, spec.row_filter, spec.chunk_size, snapshot.stop.raise_if_stopped)
    if spec.mode is CopyMode.REPLACE:
        tcur.execute(sql.SQL("TRUNCATE {}").format(target.own_rows))
    ledger.save_plan(tcur, copy_id, str(source.name), str(target.name), keyset, chunks)
    log.info(
        "copy %s: %s -> %s, %d chunk(s) of up to %d rows by %s; all workers read one snapshot of "
        "the source (%s); ledger %s%s",
        copy_id,
        source.name,
        target.name,
        len(chunks),
        spec.chunk_size,
        keyset.reason,
        snapshot.id,
        ledger,
        "; target truncated (mode=replace)" if spec.mode is CopyMode.REPLACE else "",
    )
    return StoredPlan(keyset, chunks, frozenset())


def _binary_format(sides: _Sides, copy_id: str, log: Log) -> bool:
    """Binary COPY where every column's binary form means the same on both sides, else text."""
    source, target = sides.source, sides.target
    binary = all(source.by_name[c].portable_binary and target.by_name[c].portable_binary for c in sides.columns)
    if not binary:
        log.info("copy %s: text COPY format (a column has a user-defined or OID type)", copy_id)
    return binary


def _warn_target_scans(spec: CopySpec, copy_id: str, keyset: Keyset, in_range: bool, log: Log) -> None:
    """Say so when each chunk's check must scan all the target's new rows, not its key range."""
    if not (spec.verify_checksums and spec.target_checksum is TargetChecksum.PER_CHUNK and not in_range):
        return
    why = (
        "the table has no unique key"
        if keyset.kind is KeysetKind.CTID
        else "the chunk key does not map onto the target's (not copied, or another type or collation)"
    )
    log.warning("copy %s: %s, so each chunk's check scans the target table's new rows", copy_id, why)


def _resumable_plan(tcur, ledger: Ledger, request: _Request, sides: _Sides) -> StoredPlan | None:
    """The stored plan of the copy if it can resume from it exactly once."""
    spec, copy_id, log = request.spec, request.copy_id, request.log
    source, target = sides.source, sides.target
    stored = ledger.load_plan(tcur, copy_id, str(source.name), str(target.name))
    if stored is None or stored.keyset.kind is not KeysetKind.CTID or not stored.done or spec.mode is CopyMode.UPSERT:
        return stored
    if len(stored.done) == len(stored.chunks):  # finished: nothing to resume, nothing copied again
        return stored
    # Page ranges are only stable within one snapshot: rows updated since may have moved into a
    # chunk not yet copied. Resuming could double or lose them.
    if spec.mode is CopyMode.APPEND:
        raise CopyMistake(
            f"copy {copy_id} of {source.name} (no unique key, so chunked by ctid) cannot resume exactly "
            f"once: rows may have moved since the first attempt. Delete its rows from {target.name} and "
            f"its ledger rows, or give the table a unique key, or use mode='replace'"
        )
    log.warning(
        "copy %s: %s has no unique key, so it cannot resume exactly once; starting over (mode=replace)",
        copy_id,
        source.name,
    )
    ledger.forget(tcur, copy_id)
    return None


def _conflict_columns(spec: CopySpec, target: Table, columns: tuple[str, ...]) -> tuple[str, ...]:
    if spec.mode is not CopyMode.UPSERT:
        return ()
    conflict = tuple(spec.conflict_columns or target.primary_key or ())
    if not conflict:
        raise CatalogError(
            f"mode='upsert' needs a key: target {target.name} has no primary key; pass "
            "conflict_columns=[...] naming a unique index of the target"
        )
    if tuple(sorted(conflict)) not in {tuple(sorted(k)) for k in target.unique_keys}:
        raise CatalogError(
            f"mode='upsert': conflict_columns {list(conflict)} are not a unique index of "
            f"target {target.name}; unique keys: {[list(k) for k in target.unique_keys] or 'none'}"
        )
    if not set(conflict) <= set(columns):
        raise CatalogError(f"mode='upsert': conflict_columns {list(conflict)} must be copied")
    return conflict


def _key_maps_onto_target(keyset: Keyset, sides: _Sides) -> bool:
    """The target-side check can find a chunk's rows by key range only where the range means the
    same there: key copied, same type, same collation."""
    source, target = sides.source, sides.target
    return keyset.kind is KeysetKind.KEY and all(
        c in sides.columns
        and (source.by_name[c].type, source.by_name[c].collation)
        == (target.by_name[c].type, target.by_name[c].collation)
        for c in keyset.columns
    )


def _warn_sequence_rights(scur, tcur, pairs: list[SequencePair], log: Log) -> None:
    if not pairs:
        return
    scur.execute("SELECT current_user")
    source_role = scur.fetchone()[0]
    tcur.execute("SELECT current_user")
    grants = sequences.missing_rights(pairs, source_role, tcur.fetchone()[0])
    if grants:
        log.warning(
            "the copy will not move these sequences after the rows are in, for lack of rights; the next "
            "plain INSERT may then hit a duplicate key. Run:\n  %s",
            "\n  ".join(grants),
        )
