"""Copying one chunk: claim it in the ledger, stream it, verify it, commit it with its ledger row.

A chunk is one target transaction. If anything fails, nothing of it is committed, so it can be
tried again: at once for transient faults (a lost connection, a server restarting, a lost
snapshot), up to ``max_chunk_retries`` times; never for mistakes (a duplicate key, a checksum
that disagrees) or other faults (disk full, a statement timeout), which end the copy.
"""

from __future__ import annotations

import logging
import time

import psycopg2
from psycopg2 import sql

from airflow_pool_provider.backoff import Backoff
from airflow_pool_provider.copy import checksum, plan
from airflow_pool_provider.copy.catalog import Side
from airflow_pool_provider.copy.checksum import ChunkDigest, RowSum
from airflow_pool_provider.copy.ledger import ChunkResult
from airflow_pool_provider.copy.plan import Chunk, KeysetKind
from airflow_pool_provider.copy.prepare import PreparedCopy
from airflow_pool_provider.copy.progress import Progress
from airflow_pool_provider.copy.row_security import read_every_row
from airflow_pool_provider.copy.snapshot import SourceSnapshot
from airflow_pool_provider.copy.spec import CopyMode, CopySpec, TargetChecksum
from airflow_pool_provider.copy.stopping import StopSignal
from airflow_pool_provider.copy.stream import pipe
from airflow_pool_provider.errors import (
    ChunkFailed,
    ChunkMismatch,
    CopyError,
    CopyMistake,
    CopyStopped,
    Kind,
    SnapshotLost,
    classify,
    first_line,
)
from airflow_pool_provider.pool import ConnectionPool, PooledConnection

#: Waits before retrying a chunk that hit a transient fault.
CHUNK_RETRY_BACKOFF = Backoff(first=0.2, cap=5.0)


class ChunkCopier:
    """Copies chunks of one prepared copy; safe to call from several worker threads."""

    def __init__(
        self,
        prepared: PreparedCopy,
        spec: CopySpec,
        source_pool: ConnectionPool,
        target_pool: ConnectionPool,
        snapshot: SourceSnapshot,
        stop: StopSignal,
        progress: Progress,
        log: logging.Logger | logging.LoggerAdapter,
    ) -> None:
        self.prepared = prepared
        self.spec = spec
        self.source_pool = source_pool
        self.target_pool = target_pool
        self.snapshot = snapshot
        self.stop = stop
        self.progress = progress
        self.log = log

    def copy(self, chunk: Chunk) -> ChunkResult | None:
        """Copy ``chunk``, retrying transient faults; None if another attempt already did it."""
        attempts = self.spec.max_chunk_retries + 1
        for attempt in range(1, attempts + 1):
            kind: Kind | None = None
            try:
                with self.stop.checkout(self.source_pool) as src, self.stop.checkout(self.target_pool) as tgt:
                    try:
                        result = self._copy_once(chunk, src, tgt)
                    except BaseException as exc:
                        kind = classify(exc, connections=(src.raw, tgt.raw))
                        raise
                if result is not None:
                    self.progress.chunk_done(chunk, result)
                return result
            except BaseException as exc:
                if self.stop.stopped:
                    raise CopyStopped(f"chunk {chunk.no + 1} was cancelled: {self.stop.reason}") from exc
                kind = kind or classify(exc)
                if kind is not Kind.TRANSIENT:
                    if isinstance(exc, CopyError):
                        raise
                    raise self._failure(chunk, exc, kind) from exc
                if isinstance(exc, SnapshotLost):
                    self._renew_snapshot(chunk, exc)  # itself a failure when no snapshot can be had
                if attempt == attempts:
                    raise ChunkFailed(
                        f"chunk {chunk.no + 1} failed {attempts} time(s); last error: {first_line(exc)}", Kind.FAULT
                    ) from exc
                self._back_off(chunk, exc, attempt, attempts)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _back_off(self, chunk: Chunk, exc: BaseException, attempt: int, attempts: int) -> None:
        delay = CHUNK_RETRY_BACKOFF.delay(attempt)
        reason = (
            "the source snapshot was lost"
            if isinstance(exc, SnapshotLost)
            else "the connection was lost or the server asked to retry"
        )
        self.log.warning(
            "chunk %d: %s (%s); nothing of it was committed; retry %d/%d in %.1f s",
            chunk.no + 1,
            reason,
            first_line(exc),
            attempt,
            attempts - 1,
            delay,
        )
        self.progress.chunk_retried()
        if self.stop.wait(delay):
            raise CopyStopped(f"chunk {chunk.no + 1} was not retried: {self.stop.reason}") from exc

    def _renew_snapshot(self, chunk: Chunk, exc: SnapshotLost) -> None:
        if self.prepared.keyset.kind is KeysetKind.CTID:
            raise CopyError(
                f"chunk {chunk.no + 1}: {exc}. {self.prepared.source.name} has no unique key, so its chunks are "
                "page (ctid) ranges that only hold within one snapshot; a new snapshot cannot keep the copy "
                "exactly once. Run it again with mode='replace', or give the table a unique key"
            ) from exc
        try:
            self.snapshot.renew(exc.snapshot)
        except CopyError:
            raise
        except Exception as failure:  # noqa: BLE001 - classified, with its cause
            raise self._failure(chunk, failure, classify(failure)) from failure

    def _failure(self, chunk: Chunk, exc: BaseException, kind: Kind) -> CopyError:
        """The error that ends the copy, with what to do about it."""
        if isinstance(exc, psycopg2.errors.UniqueViolation):
            return CopyMistake(
                f"chunk {chunk.no + 1}: {first_line(exc)}. The target already holds rows with these keys: "
                "use mode='upsert' to merge them or mode='replace' to start from an empty table"
            )
        return ChunkFailed(
            f"chunk {chunk.no + 1} of {self.prepared.source.name} -> {self.prepared.target.name} "
            f"failed: {first_line(exc)}",
            kind,
        )

    # -- one attempt ------------------------------------------------------------------------

    def _copy_once(self, chunk: Chunk, src: PooledConnection, tgt: PooledConnection) -> ChunkResult | None:
        started = time.monotonic()
        run, spec = self.prepared, self.spec
        with src.cursor() as scur, tgt.cursor() as tcur:
            if not run.ledger.claim(tcur, run.copy_id, chunk.no):
                tgt.rollback()
                return None  # another attempt finished it meanwhile
            joined = self.snapshot.join(scur)
            # Both sides print and parse values alike (text COPY, row hashes), whatever the
            # databases' own DateStyle, IntervalStyle or extra_float_digits.
            checksum.stable_output(scur)
            checksum.stable_output(tcur)
            read_every_row(tcur)  # its check counts every row of the target, or fails
            # A chunk's commit need not wait for its WAL flush: its rows and its ledger row are
            # lost or kept together, and the copy ends with one synchronous commit that makes
            # every earlier chunk durable before it reports success.
            tcur.execute("SET LOCAL synchronous_commit = off")
            cols = sql.SQL(", ").join(sql.Identifier(c) for c in run.columns)
            fmt = sql.SQL("(FORMAT binary)" if run.binary else "(FORMAT text)")
            selected = sql.SQL("{} AND {}").format(plan.range_predicate(run.keyset, chunk), spec.row_filter.clause())
            copy_out = sql.SQL("COPY (SELECT {} FROM {} WHERE {}) TO STDOUT {}").format(
                cols, run.source.own_rows, selected, fmt
            )
            into = run.target.ident
            if spec.mode is CopyMode.UPSERT:
                into = sql.Identifier(f"pool_provider_stage_{chunk.no}")
                tcur.execute(
                    sql.SQL("CREATE TEMP TABLE {} ON COMMIT DROP AS SELECT {} FROM {} WITH NO DATA").format(
                        into, cols, run.target.ident
                    )
                )
            copy_in = sql.SQL("COPY {} ({}) FROM STDIN {}").format(into, cols, fmt)
            source_sum = None
            if spec.verify_checksums:
                source_sum = checksum.query(run.checksum, run.columns, run.source.own_rows, selected)
            streamed = pipe(
                scur, copy_out, tcur, copy_in, after_source=source_sum and (lambda: checksum.fetch(scur, source_sum))
            )
            if streamed.source_rows != streamed.target_rows:
                raise ChunkMismatch(
                    f"chunk {chunk.no + 1}: the source sent {streamed.source_rows} rows but the target "
                    f"loaded {streamed.target_rows}; rolled back. Check for triggers or rules on "
                    f"{run.target.name} that drop or add rows"
                )
            if spec.mode is CopyMode.UPSERT:
                self._merge(tcur, into, cols)
            digest = None
            if spec.verify_checksums and spec.target_checksum is TargetChecksum.PER_CHUNK:
                digest = self._verify(tcur, chunk, into, streamed.after_source)
            elif spec.verify_checksums:  # the table is checked as a whole after its load
                digest = ChunkDigest(Side.SOURCE, run.checksum, streamed.after_source.total)
            result = ChunkResult(streamed.target_rows, streamed.bytes, digest)
            seconds = time.monotonic() - started
            run.ledger.finish(tcur, run.copy_id, chunk.no, result, seconds, self.snapshot.instant(joined))
        self.stop.raise_if_stopped()  # a stopped copy commits nothing more
        tgt.commit()
        src.rollback()
        return result

    def _merge(self, tcur, stage: sql.Identifier, cols: sql.Composable) -> None:
        run = self.prepared
        updates = [c for c in run.columns if c not in run.conflict]
        action = (
            sql.SQL("DO UPDATE SET {}").format(
                sql.SQL(", ").join(sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c)) for c in updates)
            )
            if updates
            else sql.SQL("DO NOTHING")
        )
        tcur.execute(
            sql.SQL(
                "INSERT INTO {target} ({cols}) OVERRIDING SYSTEM VALUE SELECT {cols} FROM {stage} "
                "ON CONFLICT ({conflict}) {action}"
            ).format(
                target=run.target.ident,
                cols=cols,
                stage=stage,
                conflict=sql.SQL(", ").join(sql.Identifier(c) for c in run.conflict),
                action=action,
            )
        )

    def _verify(self, tcur, chunk: Chunk, stage: sql.Identifier, source_sum: RowSum) -> ChunkDigest:
        """Hash the rows this chunk left in the target and compare with the source's hash."""
        run = self.prepared
        if self.spec.mode is CopyMode.UPSERT:
            # The chunk's rows are the target rows whose key is in the staging table.
            keys = sql.SQL(" AND ").join(
                sql.SQL("{} = {}").format(sql.Identifier("t", c), sql.Identifier("s", c)) for c in run.conflict
            )
            source = sql.SQL("{} t JOIN {} s ON {}").format(run.target.own_rows, stage, keys)
            query = checksum.query(run.checksum, run.columns, source, sql.SQL("true"), alias="t")
        else:
            # The chunk's rows are those this transaction inserted (in the key range, for speed).
            in_range = plan.range_predicate(run.keyset, chunk) if run.verify_in_range else sql.SQL("true")
            written = sql.SQL("{} AND xmin = pg_current_xact_id()::xid").format(in_range)
            query = checksum.query(run.checksum, run.columns, run.target.own_rows, written)
        target_sum = checksum.fetch(tcur, query)
        if target_sum != source_sum:
            raise ChunkMismatch(
                f"chunk {chunk.no + 1}: checksum mismatch - source has {source_sum.rows} rows hashing to "
                f"{source_sum.total}, target has {target_sum.rows} rows hashing to {target_sum.total}; rolled "
                f"back. Check for triggers or rules on {run.target.name} that change rows"
            )
        return ChunkDigest(Side.TARGET, run.checksum, target_sum.total)
