"""The copying process's memory does not grow with the size of the table.

A fresh child process copies the ``events`` table in 5,000-row chunks on four workers: first a
tenth of it (the warm-up: pools, threads, buffers), then the rest, sampling its resident memory
throughout. Reading the pipe into fresh buffers of varying size once fragmented the heap by about
180 KB per chunk (20 MB over this copy, 60 MB over a 6,000,000-row table); this test caught it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import psycopg2

from airflow_pool_provider.testing.data import table_digest
from airflow_pool_provider.testing.postgres import Server

ROWS = 600_000

CHILD = textwrap.dedent(
    """
    import json, sys, threading
    import psycopg2
    from airflow_pool_provider.copy import CopySpec, TableCopy
    from airflow_pool_provider.pool import ConnectionPool

    def rss_mb():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096 / 2**20

    src_dsn, dst_dsn, rows = sys.argv[1], sys.argv[2], int(sys.argv[3])
    source = ConnectionPool(lambda: psycopg2.connect(src_dsn), name="source", max_size=5)
    target = ConnectionPool(lambda: psycopg2.connect(dst_dsn), name="target", max_size=5)

    def copy(where, copy_id):
        spec = CopySpec("events", chunk_size=5000, parallelism=4, where=where)
        return TableCopy(source, target, spec, copy_id=copy_id).run().rows

    copied = copy(f"id <= {rows // 10}", "warm-up")
    warm = peak = rss_mb()
    done = threading.Event()

    def sample():
        global peak
        while not done.wait(0.05):
            peak = max(peak, rss_mb())

    sampler = threading.Thread(target=sample)
    sampler.start()
    copied += copy(f"id > {rows // 10}", "rest")
    done.set()
    sampler.join()
    print(json.dumps({"rows": copied, "warm": warm, "peak": max(peak, rss_mb())}))
    """
)


def test_memory_stays_flat_while_copying(pg_server: Server, make_events, make_reader) -> None:
    src_db, dst_db, _, _ = make_events(ROWS)
    reader = make_reader(src_db)  # the copies have row filters
    done = subprocess.run(
        [sys.executable, "-c", CHILD, pg_server.dsn(src_db, user=reader), pg_server.dsn(dst_db), str(ROWS)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["rows"] == ROWS
    growth = report["peak"] - report["warm"]
    assert growth < 5, f"RSS grew {growth:.1f} MB while copying 108 chunks after the warm-up ({report})"
    digests = []
    for db in (src_db, dst_db):
        conn = psycopg2.connect(pg_server.dsn(db))
        digests.append(table_digest(conn))
        conn.close()
    assert digests[0] == digests[1]
