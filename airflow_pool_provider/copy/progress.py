"""Progress lines for the task log: per chunk and overall rows, %, rows/s and ETA, then a summary."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

from airflow_pool_provider.copy.ledger import ChunkResult
from airflow_pool_provider.copy.plan import Chunk
from airflow_pool_provider.pool import ConnectionPool


class Progress:
    #: A pool-stats line every this many chunks, to show waits while they happen (the task's end
    #: line comes from the provider's listener).
    POOL_STATS_EVERY = 10

    def __init__(self, log: logging.Logger | logging.LoggerAdapter, chunks: list[Chunk],
                 done: set[int], pools: Sequence[ConnectionPool] = ()) -> None:
        self.log = log
        self.pools = pools
        self.total_chunks = len(chunks)
        self.total_rows = sum(c.expected_rows or 0 for c in chunks)
        self.done_chunks = len(done)
        self.done_rows = sum(c.expected_rows or 0 for c in chunks if c.no in done)
        self.rows_this_run = 0
        self.started = time.monotonic()
        self._lock = threading.Lock()

    def chunk_done(self, chunk: Chunk, result: ChunkResult) -> None:
        with self._lock:
            self.done_chunks += 1
            self.done_rows += result.rows
            self.rows_this_run += result.rows
            elapsed = max(time.monotonic() - self.started, 1e-9)
            rate = self.rows_this_run / elapsed
            left = max(self.total_rows - self.done_rows, 0)
            percent = 100.0 * self.done_rows / self.total_rows if self.total_rows else 100.0
            eta = left / rate if rate > 0 else float("nan")
            self.log.info(
                "chunk %d done: %d rows, %.1f MB | %d/%d chunks, %d/%d rows (%.1f%%), %.0f rows/s, ETA %.0f s",
                chunk.no, result.rows, result.bytes / 1e6, self.done_chunks, self.total_chunks,
                self.done_rows, self.total_rows, min(percent, 100.0), rate, eta,
            )
            if self.done_chunks % self.POOL_STATS_EVERY == 0:
                self._log_pools()

    def _log_pools(self) -> None:
        for pool in self.pools:
            self.log.info("%s", pool.stats_line())

    def finish(self, summary: dict[str, Any]) -> None:
        rows = [
            ("copy", summary["copy_id"]),
            ("source -> target", f"{summary['source']} -> {summary['target']}"),
            ("mode / key / format", f"{summary['mode']} / {summary['key']} / {summary['format']}"),
            ("rows copied (this run)", f"{summary['rows']:,}"),
            ("chunks copied / skipped", f"{summary['chunks']} / {summary['chunks_skipped']}"),
            ("rows in target (ledger)", f"{summary['total_rows']:,}"),
            ("MB streamed", f"{summary['bytes'] / 1e6:,.1f}"),
            ("seconds", f"{summary['seconds']:.2f}"),
            ("rows/s", f"{summary['rows_per_second'] or 0:,}"),
            ("verification", ", ".join(f"{k}={v}" for k, v in summary["verification"].items())),
        ]
        width = max(len(k) for k, _ in rows)
        table = "\n".join(f"  {k.ljust(width)}  {v}" for k, v in rows)
        self.log.info("copy finished:\n%s", table)
