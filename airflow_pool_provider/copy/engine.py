"""TableCopy: copy one table between two pools in verified, resumable chunks.

The run: read both tables' definitions and refuse a mismatch before writing anything; export a
snapshot on the source so every worker reads the same instant; plan chunks (or load the plan a
previous attempt stored in the ledger); copy the pending chunks on ``parallelism`` workers, each
chunk in one target transaction together with its ledger row; verify counts (always) and a
checksum of the copied bytes (by default) before that transaction commits.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

import psycopg2
import psycopg2.errors
from psycopg2 import sql

from airflow_pool_provider.copy import catalog, checksum, plan
from airflow_pool_provider.copy.catalog import CatalogError, Table
from airflow_pool_provider.copy.ledger import ChunkResult, Ledger
from airflow_pool_provider.copy.names import TableName
from airflow_pool_provider.copy.plan import Chunk, Keyset
from airflow_pool_provider.copy.progress import Progress
from airflow_pool_provider.copy.stream import pipe
from airflow_pool_provider.pool import ConnectionPool, PooledConnection

MODES = ("append", "replace", "upsert")

# Identifies a database on a server, to refuse copying a table onto itself.
_WHERE_AM_I = "current_database(), pg_postmaster_start_time(), current_setting('port')"


class CopyError(RuntimeError):
    """A copy that cannot start or a chunk that failed; nothing unverified was committed."""


class ChunkMismatch(CopyError):
    """Source and target disagree on a chunk's rows; its transaction was rolled back."""


@dataclass(frozen=True)
class CopySpec:
    """What to copy. Validated on creation, so bad values fail when a DAG is parsed."""

    source_table: str
    target_table: str | None = None
    columns: Sequence[str] | None = None
    where: str | None = None
    chunk_size: int = 50_000
    parallelism: int = 2
    mode: str = "append"
    conflict_columns: Sequence[str] | None = None
    key: Sequence[str] | None = None
    verify_checksums: bool = True
    max_chunk_retries: int = 3
    ledger_schema: str = "public"
    source_name: TableName = field(init=False, repr=False)
    target_name: TableName = field(init=False, repr=False)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "source_name", TableName.parse(self.source_table))
        set_(self, "target_name", TableName.parse(self.target_table or self.source_table))
        for name in ("chunk_size", "parallelism"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.max_chunk_retries, int) or self.max_chunk_retries < 0:
            raise ValueError(f"max_chunk_retries must be 0 or more, got {self.max_chunk_retries!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        for name in ("columns", "conflict_columns", "key"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, str) or not value or not all(isinstance(c, str) and c for c in value):
                raise ValueError(f"{name} must be a non-empty list of column names, got {value!r}")
            if len(set(value)) != len(value):
                raise ValueError(f"{name} lists a column twice: {list(value)}")
        if self.conflict_columns and self.mode != "upsert":
            raise ValueError("conflict_columns only applies to mode='upsert'")
        if self.where is not None and (not isinstance(self.where, str) or ";" in self.where):
            raise ValueError(
                f"where must be one SQL condition without ';', got {self.where!r}"
            )


@dataclass
class _Run:
    """What one run works with, fixed after preparation."""

    source: Table
    target: Table
    columns: tuple[str, ...]
    keyset: Keyset
    chunks: list[Chunk]
    done: set[int]
    snapshot: str
    binary: bool
    checksum: str
    verify_in_range: bool
    conflict: tuple[str, ...] = ()


class TableCopy:
    """Copies ``spec`` from ``source_pool`` to ``target_pool``; ``copy_id`` names it in the ledger.

    Run it again with the same ``copy_id`` after a failure and it resumes: chunks the ledger
    records as done are skipped, the rest are copied.
    """

    def __init__(self, source_pool: ConnectionPool, target_pool: ConnectionPool, spec: CopySpec,
                 copy_id: str, log: logging.Logger | logging.LoggerAdapter | None = None) -> None:
        self.source_pool = source_pool
        self.target_pool = target_pool
        self.spec = spec
        self.copy_id = copy_id
        self.log = log or logging.getLogger(__name__)
        self.ledger = Ledger(spec.ledger_schema)
        workers = spec.parallelism
        # Each worker holds one source and one target connection; the coordinator holds one of
        # each for the whole run. Sized so that workers can never wait on each other.
        if source_pool is target_pool:
            source_pool.grow(2 * workers + 2)
        else:
            source_pool.grow(workers + 1)
            target_pool.grow(workers + 1)

    # -- the run ----------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        started = time.monotonic()
        with self.source_pool.connection() as coordinator:
            run = self._prepare(coordinator)
            pending = [c for c in run.chunks if c.no not in run.done]
            pools = [self.source_pool] if self.source_pool is self.target_pool else [self.source_pool, self.target_pool]
            progress = Progress(self.log, run.chunks, run.done, pools)
            copied = self._copy_all(run, pending, progress)
            coordinator.rollback()
        with self.target_pool.connection() as conn:
            with conn.cursor() as cur:
                totals = self.ledger.totals(cur, self.copy_id)
                cur.execute("SET LOCAL synchronous_commit = on")
                cur.execute("SELECT pg_current_xact_id()")  # a commit record, flushed with all before it
            conn.commit()
        seconds = time.monotonic() - started
        summary = {
            "copy_id": self.copy_id,
            "source": str(run.source.name),
            "target": str(run.target.name),
            "mode": self.spec.mode,
            "key": run.keyset.kind if run.keyset.kind == "ctid" else list(run.keyset.columns),
            "format": "binary" if run.binary else "text",
            "rows": copied["rows"],
            "chunks": copied["chunks"],
            "chunks_skipped": len(run.done),
            "bytes": copied["bytes"],
            "seconds": round(seconds, 3),
            "rows_per_second": round(copied["rows"] / seconds) if seconds > 0 else None,
            "total_rows": totals["rows"],
            "total_chunks": totals["chunks"],
            "verification": {
                "counts": "match",
                "checksums": f"match ({run.checksum} hash)" if self.spec.verify_checksums else "off",
                "chunks_verified": copied["chunks"],
            },
        }
        progress.finish(summary)
        return summary

    def _prepare(self, coordinator: PooledConnection) -> _Run:
        spec = self.spec
        with coordinator.cursor() as cur:
            cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            source = catalog.load_table(cur, spec.source_name, "source")
            cur.execute("SELECT pg_export_snapshot(), " + _WHERE_AM_I)
            snapshot, *source_server = cur.fetchone()
            with self.target_pool.connection() as tconn:
                target, columns, conflict = self._check_target(tconn, source, tuple(source_server))
                with tconn.cursor() as tcur:
                    self.ledger.ensure(tcur)
                    tcur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (self.copy_id,))
                    keyset, chunks, done = self._plan_or_resume(cur, tcur, source, target, snapshot)
                tconn.commit()
        binary = all(source.by_name[c].builtin and target.by_name[c].builtin for c in columns)
        if not binary:
            self.log.info("copy %s: text COPY format (a column has a user-defined type)", self.copy_id)
        # The target-side check finds a chunk's rows by key range only where the range means the
        # same there: key copied, same type, same collation. Else it scans the target's new rows.
        same_key = keyset.kind == "key" and all(
            c in columns and (source.by_name[c].type, source.by_name[c].collation)
            == (target.by_name[c].type, target.by_name[c].collation)
            for c in keyset.columns
        )
        if spec.verify_checksums and not same_key:
            self.log.warning(
                "copy %s: the chunk key does not map onto the target's (not copied, or another type or "
                "collation), so each chunk's check scans the target table's new rows", self.copy_id,
            )
        how = checksum.method(source, target, columns)
        return _Run(source, target, columns, keyset, chunks, done, snapshot, binary, how, same_key, conflict)

    def _plan_or_resume(self, cur, tcur, source: Table, target: Table,
                        snapshot: str) -> tuple[Keyset, list[Chunk], set[int]]:
        """The stored plan of this copy_id, or a new one stored now (truncating for replace)."""
        spec = self.spec
        stored = self.ledger.load_plan(tcur, self.copy_id, str(source.name), str(target.name))
        if stored is not None and stored[0].kind == "ctid" and stored[2] and spec.mode != "upsert":
            # Page ranges are only stable within one snapshot: rows updated since may have moved
            # into a chunk not yet copied. Resuming could double or lose them.
            if spec.mode == "append":
                raise CopyError(
                    f"copy {self.copy_id} of {source.name} (no unique key, so chunked by ctid) cannot "
                    f"resume exactly once: rows may have moved since the first attempt. Delete its rows from "
                    f"{target.name} and its ledger rows, or give the table a unique key, or use mode='replace'"
                )
            self.log.warning(
                "copy %s: %s has no unique key, so it cannot resume exactly once; starting over "
                "(mode=replace)", self.copy_id, source.name,
            )
            self.ledger.forget(tcur, self.copy_id)
            stored = None
        if stored is not None:
            keyset, chunks, done = stored
            self.log.info(
                "copy %s resumes: %d of %d chunk(s) already done (ledger); the rest are read from a NEW "
                "snapshot of the source (%s), taken now - rows changed since the earlier attempt are "
                "copied as they are now", self.copy_id, len(done), len(chunks), snapshot,
            )
            return keyset, chunks, done
        keyset = plan.choose_keyset(source, tuple(spec.key) if spec.key else None)
        chunks = plan.plan(cur, source, keyset, spec.where, spec.chunk_size)
        if spec.mode == "replace":
            tcur.execute(sql.SQL("TRUNCATE {}").format(target.ident))
        self.ledger.save_plan(tcur, self.copy_id, str(source.name), str(target.name), keyset, chunks)
        self.log.info(
            "copy %s: %s -> %s, %d chunk(s) of up to %d rows by %s; all workers read one snapshot of "
            "the source (%s)%s", self.copy_id, source.name, target.name, len(chunks), spec.chunk_size,
            keyset.reason, snapshot, "; target truncated (mode=replace)" if spec.mode == "replace" else "",
        )
        return keyset, chunks, set()

    def _check_target(self, tconn: PooledConnection, source: Table,
                      source_server: tuple) -> tuple[Table, tuple[str, ...], tuple[str, ...]]:
        spec = self.spec
        with tconn.cursor() as tcur:
            target = catalog.load_table(tcur, spec.target_name, "target")
            tcur.execute("SELECT " + _WHERE_AM_I)
            same_database = tuple(tcur.fetchone()) == source_server
        tconn.commit()
        if same_database and target.oid == source.oid:
            raise CatalogError(
                f"source and target are the same table ({source.name} in database {source_server[0]}): "
                "name another target_table or another target connection"
            )
        columns = tuple(spec.columns) if spec.columns else source.copyable_columns()
        catalog.check_compatible(source, target, columns)
        conflict: tuple[str, ...] = ()
        if spec.mode == "upsert":
            conflict = tuple(spec.conflict_columns or target.primary_key or ())
            if not conflict:
                raise CatalogError(
                    f"mode='upsert' needs a key: target {target.name} has no primary key; pass "
                    "conflict_columns=[...] naming a unique index of the target"
                )
            if conflict not in target.unique_keys and tuple(sorted(conflict)) not in {
                tuple(sorted(k)) for k in target.unique_keys
            }:
                raise CatalogError(
                    f"mode='upsert': conflict_columns {list(conflict)} are not a unique index of "
                    f"target {target.name}; unique keys: {[list(k) for k in target.unique_keys] or 'none'}"
                )
            if not set(conflict) <= set(columns):
                raise CatalogError(f"mode='upsert': conflict_columns {list(conflict)} must be copied")
        return target, columns, conflict

    # -- chunks -----------------------------------------------------------------------------

    def _copy_all(self, run: _Run, pending: list[Chunk], progress: Progress) -> dict[str, int]:
        totals = {"rows": 0, "chunks": 0, "bytes": 0}
        lock = threading.Lock()
        stop = threading.Event()

        def work(chunk: Chunk) -> None:
            if stop.is_set():
                return
            try:
                result = self._copy_chunk_with_retries(run, chunk)
            except BaseException:
                stop.set()  # start no further chunks; those running finish or fail on their own
                raise
            if result is None:
                return
            with lock:
                totals["rows"] += result.rows
                totals["bytes"] += result.bytes
                totals["chunks"] += 1
            progress.chunk_done(chunk, result)

        with ThreadPoolExecutor(self.spec.parallelism, thread_name_prefix="copy-worker") as pool:
            futures = [pool.submit(work, chunk) for chunk in pending]
            finished, _ = wait(futures, return_when=FIRST_EXCEPTION)
            failed = [f for f in finished if f.exception() is not None]
            if failed:
                for future in futures:
                    future.cancel()
                wait(futures)
                raise failed[0].exception()
        return totals

    def _copy_chunk_with_retries(self, run: _Run, chunk: Chunk) -> ChunkResult | None:
        attempts = self.spec.max_chunk_retries + 1
        for attempt in range(1, attempts + 1):
            try:
                with self.source_pool.connection() as src, self.target_pool.connection() as tgt:
                    return self._copy_chunk(run, chunk, src, tgt)
            except psycopg2.errors.UniqueViolation as exc:
                raise CopyError(
                    f"chunk {chunk.no}: {_first_line(exc)}. The target already holds rows with these keys: "
                    "use mode='upsert' to merge them or mode='replace' to start from an empty table"
                ) from exc
            except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
                if attempt == attempts:
                    raise CopyError(
                        f"chunk {chunk.no} failed {attempts} time(s); last error: {exc}".strip()
                    ) from exc
                delay = min(0.2 * 2 ** (attempt - 1), 5.0) * random.uniform(0.8, 1.2)
                self.log.warning(
                    "chunk %d: connection failed (%s); nothing of it was committed; retry %d/%d in %.1f s",
                    chunk.no, _first_line(exc), attempt, attempts - 1, delay,
                )
                time.sleep(delay)
        return None

    def _copy_chunk(self, run: _Run, chunk: Chunk, src: PooledConnection,
                    tgt: PooledConnection) -> ChunkResult | None:
        started = time.monotonic()
        spec = self.spec
        with src.cursor() as scur, tgt.cursor() as tcur:
            if not self.ledger.claim(tcur, self.copy_id, chunk.no):
                tgt.rollback()
                return None  # another attempt finished it meanwhile
            scur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            scur.execute("SET TRANSACTION SNAPSHOT %s", (run.snapshot,))
            # Both sides print and parse values alike (text COPY, row hashes), whatever the
            # databases' own DateStyle, IntervalStyle or extra_float_digits.
            checksum.stable_output(scur)
            checksum.stable_output(tcur)
            # A chunk's commit need not wait for its WAL flush: its rows and its ledger row are
            # lost or kept together, and run() ends with one synchronous commit that makes every
            # earlier chunk durable before the copy reports success.
            tcur.execute("SET LOCAL synchronous_commit = off")
            cols = sql.SQL(", ").join(sql.Identifier(c) for c in run.columns)
            fmt = sql.SQL("(FORMAT binary)" if run.binary else "(FORMAT text)")
            selected = sql.SQL("{} AND {}").format(
                plan.range_predicate(run.keyset, chunk), plan.filter_clause(spec.where)
            )
            copy_out = sql.SQL("COPY (SELECT {} FROM {} WHERE {}) TO STDOUT {}").format(
                cols, run.source.ident, selected, fmt
            )
            into = run.target.ident
            if spec.mode == "upsert":
                into = sql.Identifier(f"pool_provider_stage_{chunk.no}")
                tcur.execute(sql.SQL("CREATE TEMP TABLE {} ON COMMIT DROP AS SELECT {} FROM {} WITH NO DATA").format(
                    into, cols, run.target.ident))
            copy_in = sql.SQL("COPY {} ({}) FROM STDIN {}").format(into, cols, fmt)
            source_sum = None
            if spec.verify_checksums:
                source_sum = checksum.query(run.checksum, run.columns, run.source.ident, selected)
            streamed = pipe(scur, copy_out, tcur, copy_in, after_source=source_sum and (
                lambda: _fetch(scur, source_sum)))
            if streamed.source_rows != streamed.target_rows:
                raise ChunkMismatch(
                    f"chunk {chunk.no}: the source sent {streamed.source_rows} rows but the target "
                    f"loaded {streamed.target_rows}; rolled back"
                )
            if spec.mode == "upsert":
                self._merge(tcur, run, into, cols)
            digest = None
            if spec.verify_checksums:
                digest = self._verify(tcur, run, chunk, into, streamed.after_source)
            result = ChunkResult(streamed.target_rows, streamed.bytes, digest)
            self.ledger.finish(tcur, self.copy_id, chunk.no, result, time.monotonic() - started)
        tgt.commit()
        src.rollback()
        return result

    def _merge(self, tcur, run: _Run, stage: sql.Identifier, cols: sql.Composable) -> None:
        updates = [c for c in run.columns if c not in run.conflict]
        action = (
            sql.SQL("DO UPDATE SET {}").format(sql.SQL(", ").join(
                sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c)) for c in updates))
            if updates else sql.SQL("DO NOTHING")
        )
        tcur.execute(
            sql.SQL("INSERT INTO {target} ({cols}) OVERRIDING SYSTEM VALUE SELECT {cols} FROM {stage} "
                    "ON CONFLICT ({conflict}) {action}").format(
                target=run.target.ident, cols=cols, stage=stage,
                conflict=sql.SQL(", ").join(sql.Identifier(c) for c in run.conflict), action=action,
            )
        )

    def _verify(self, tcur, run: _Run, chunk: Chunk, stage: sql.Identifier,
                source_sum: tuple[int, str]) -> str:
        """Hash the rows this chunk left in the target and compare with the source's hash."""
        if self.spec.mode == "upsert":
            # The chunk's rows are the target rows whose key is in the staging table.
            keys = sql.SQL(" AND ").join(
                sql.SQL("{} = {}").format(sql.Identifier("t", c), sql.Identifier("s", c)) for c in run.conflict
            )
            source = sql.SQL("{} t JOIN {} s ON {}").format(run.target.ident, stage, keys)
            query = checksum.query(run.checksum, run.columns, source, sql.SQL("true"), alias="t")
        else:
            # The chunk's rows are those this transaction inserted (in the key range, for speed).
            in_range = plan.range_predicate(run.keyset, chunk) if run.verify_in_range else sql.SQL("true")
            written = sql.SQL("{} AND xmin = pg_current_xact_id()::xid").format(in_range)
            query = checksum.query(run.checksum, run.columns, run.target.ident, written)
        target_sum = _fetch(tcur, query)
        if target_sum != source_sum:
            raise ChunkMismatch(
                f"chunk {chunk.no}: checksum mismatch - source has {source_sum[0]} rows hashing to "
                f"{source_sum[1]}, target has {target_sum[0]} rows hashing to {target_sum[1]}; rolled "
                f"back. Check for triggers or rules on {run.target.name} that change rows"
            )
        return f"{run.checksum}:{target_sum[1]}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _fetch(cur, query: sql.Composable) -> tuple[Any, ...]:
    cur.execute(query)
    return tuple(cur.fetchone())
