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
from airflow_pool_provider.copy.catalog import Table
from airflow_pool_provider.copy.ledger import Ledger, StoredPlan
from airflow_pool_provider.copy.plan import Chunk, Keyset
from airflow_pool_provider.copy.sequences import SequencePair
from airflow_pool_provider.copy.snapshot import WHERE_AM_I, SourceSnapshot
from airflow_pool_provider.copy.spec import CopySpec
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
    checksum: str  # "record" or "text"
    verify_in_range: bool  # the chunk's key range finds its rows in the target too
    sequences: tuple[SequencePair, ...]
    budget: WorkerBudget

    @property
    def pending(self) -> list[Chunk]:
        return [c for c in self.chunks if c.no not in self.done]


#: Decides the workers from both servers' slots (the target's None when it is the source's server).
BudgetCheck = Callable[[ServerSlots, "ServerSlots | None"], WorkerBudget]


def prepare(
    scur,
    tconn,
    spec: CopySpec,
    copy_id: str,
    snapshot: SourceSnapshot,
    check_budget: BudgetCheck,
    log: logging.Logger | logging.LoggerAdapter,
) -> PreparedCopy:
    """``scur``: a cursor in ``snapshot``'s own transaction. ``check_budget`` runs before anything
    is written, so a copy refused for lack of connections leaves no trace."""
    source = catalog.load_table(scur, spec.source_name, "source")
    spec.row_filter.check(scur, source.ident)
    scur.execute("SELECT " + WHERE_AM_I)
    source_server = tuple(scur.fetchone())
    source_slots = read_slots(scur, "source")
    with tconn.cursor() as tcur:
        target = catalog.load_table(tcur, spec.target_name, "target")
        tcur.execute("SELECT " + WHERE_AM_I)
        target_server = tuple(tcur.fetchone())
        same_server = target_server[1:] == source_server[1:]
        target_slots = None if same_server else read_slots(tcur, "target")
        if target_server == source_server and target.oid == source.oid:
            raise CatalogError(
                f"source and target are the same table ({source.name} in database {source_server[0]}): "
                "name another target_table or another target connection"
            )
        columns = tuple(spec.columns) if spec.columns else source.copyable_columns()
        catalog.check_compatible(source, target, columns)
        conflict = _conflict_columns(spec, target, columns)
        pairs = sequences.pair(scur, tcur, source, target, columns) if spec.sync_sequences else []
        budget = check_budget(source_slots, target_slots)
        _warn_sequence_rights(scur, tcur, pairs, log)
        ledger = Ledger.locate(tcur, copy_id, target.name.schema, spec.ledger_schema)
        ledger.ensure(tcur)
        tcur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (copy_id,))
        stored = _resumable_plan(tcur, ledger, spec, copy_id, source, target, log)
        if stored is None:
            keyset = plan.choose_keyset(source, tuple(spec.key) if spec.key else None)
            chunks = plan.plan(scur, source, keyset, spec.row_filter, spec.chunk_size, snapshot.stop.raise_if_stopped)
            if spec.mode == "replace":
                tcur.execute(sql.SQL("TRUNCATE {}").format(target.ident))
            ledger.save_plan(tcur, copy_id, str(source.name), str(target.name), keyset, chunks)
            stored = StoredPlan(keyset, chunks, frozenset())
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
                "; target truncated (mode=replace)" if spec.mode == "replace" else "",
            )
        elif snapshot.taken_now:
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
    snapshot.stop.raise_if_stopped()  # a stopped copy commits no plan (nor a replace's TRUNCATE)
    tconn.commit()
    binary = all(source.by_name[c].portable_binary and target.by_name[c].portable_binary for c in columns)
    if not binary:
        log.info("copy %s: text COPY format (a column has a user-defined or OID type)", copy_id)
    in_range = _key_maps_onto_target(stored.keyset, source, target, columns)
    if spec.verify_checksums and spec.target_checksum == "per_chunk" and not in_range:
        why = (
            "the table has no unique key"
            if stored.keyset.kind == "ctid"
            else "the chunk key does not map onto the target's (not copied, or another type or collation)"
        )
        log.warning("copy %s: %s, so each chunk's check scans the target table's new rows", copy_id, why)
    return PreparedCopy(
        copy_id=copy_id,
        source=source,
        target=target,
        columns=columns,
        conflict=conflict,
        keyset=stored.keyset,
        chunks=tuple(stored.chunks),
        done=stored.done,
        ledger=ledger,
        binary=binary,
        checksum=checksum.method(source, target, columns),
        verify_in_range=in_range,
        sequences=tuple(pairs),
        budget=budget,
    )


def _resumable_plan(
    tcur,
    ledger: Ledger,
    spec: CopySpec,
    copy_id: str,
    source: Table,
    target: Table,
    log: logging.Logger | logging.LoggerAdapter,
) -> StoredPlan | None:
    """The stored plan of ``copy_id`` if the copy can resume from it exactly once."""
    stored = ledger.load_plan(tcur, copy_id, str(source.name), str(target.name))
    if stored is None or stored.keyset.kind != "ctid" or not stored.done or spec.mode == "upsert":
        return stored
    # Page ranges are only stable within one snapshot: rows updated since may have moved into a
    # chunk not yet copied. Resuming could double or lose them.
    if spec.mode == "append":
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
    if spec.mode != "upsert":
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


def _key_maps_onto_target(keyset: Keyset, source: Table, target: Table, columns: tuple[str, ...]) -> bool:
    """The target-side check can find a chunk's rows by key range only where the range means the
    same there: key copied, same type, same collation."""
    return keyset.kind == "key" and all(
        c in columns
        and (source.by_name[c].type, source.by_name[c].collation)
        == (target.by_name[c].type, target.by_name[c].collation)
        for c in keyset.columns
    )


def _warn_sequence_rights(scur, tcur, pairs: list[SequencePair], log: logging.Logger | logging.LoggerAdapter) -> None:
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
