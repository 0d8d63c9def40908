"""Progress for the task log and metrics: per chunk and overall rows, %, rows/s and ETA."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

from airflow_pool_provider.copy.ledger import ChunkResult
from airflow_pool_provider.copy.plan import Chunk
from airflow_pool_provider.metrics import PREFIX, Metrics, NoMetrics, report_pool
from airflow_pool_provider.pool import ConnectionPool


class Progress:
    #: A pool-stats line (and pool gauges) every this many chunks, to show waits while they happen;
    #: the end-of-task line comes from the provider's listener.
    POOL_STATS_EVERY = 10

    def __init__(
        self,
        log: logging.Logger | logging.LoggerAdapter,
        chunks: Sequence[Chunk],
        done: frozenset[int],
        pools: Sequence[ConnectionPool] = (),
        metrics: Metrics | None = None,
        tags: dict[str, str] | None = None,
    ) -> None:
        self.log = log
        self.pools = pools
        self.metrics = metrics or NoMetrics()
        self.tags = tags or {}
        self.total_chunks = len(chunks)
        self.total_rows = sum(c.expected_rows or 0 for c in chunks)
        self.done_chunks = len(done)
        self.done_rows = sum(c.expected_rows or 0 for c in chunks if c.no in done)
        self.rows_this_run = 0
        self.bytes_this_run = 0
        self.chunks_this_run = 0
        self.started = time.monotonic()
        self._lock = threading.Lock()

    def chunk_done(self, chunk: Chunk, result: ChunkResult) -> None:
        with self._lock:
            self.done_chunks += 1
            self.done_rows += result.rows
            self.rows_this_run += result.rows
            self.bytes_this_run += result.bytes
            self.chunks_this_run += 1
            elapsed = max(time.monotonic() - self.started, 1e-9)
            rate = self.rows_this_run / elapsed
            left = max(self.total_rows - self.done_rows, 0)
            percent = 100.0 * self.done_rows / self.total_rows if self.total_rows else 100.0
            eta = left / rate if rate > 0 else float("nan")
            self.log.info(
                "chunk %d/%d done: %d rows, %.1f MB | %d/%d chunks, %d/%d rows (%.1f%%), %.0f rows/s, ETA %.0f s",
                chunk.no + 1,
                self.total_chunks,
                result.rows,
                result.bytes / 1e6,
                self.done_chunks,
                self.total_chunks,
                self.done_rows,
                self.total_rows,
                min(percent, 100.0),
                rate,
                eta,
            )
            self.metrics.incr(f"{PREFIX}.copy.rows", result.rows, tags=self.tags)
            self.metrics.incr(f"{PREFIX}.copy.bytes", result.bytes, tags=self.tags)
            self.metrics.incr(f"{PREFIX}.copy.chunks", 1, tags=self.tags)
            if self.done_chunks % self.POOL_STATS_EVERY == 0 and self.done_chunks < self.total_chunks:
                self.report_pools()

    def chunk_retried(self) -> None:
        self.metrics.incr(f"{PREFIX}.copy.chunk_retries", 1, tags=self.tags)

    def report_pools(self) -> None:
        for pool in self.pools:
            self.log.info("%s", pool.stats_line())
            report_pool(self.metrics, pool)
