"""Table copy benchmark: ChunkedTableCopyOperator's engine against the tools people use today.

Copies the 2,000,000-row ``events`` table (bigint key, int, short text, small jsonb, numeric,
timestamptz, nullable unicode text; about 250 MB as COPY text) from one database to an empty
target on the same server, and prints one side-by-side table, times and ratios to the raw text
pipe, from one run:

- ``psql -c "COPY events TO STDOUT" | psql -c "COPY events FROM STDIN"``, text and binary;
- pgcopydb clone (table split, indexes built after the data), when ``pgcopydb`` is installed;
- Airflow's GenericTransfer as shipped, on a 200,000-row subset, scaled to the full size;
- this project at parallelism 1, 2 and 4, with checksum verification on and with counts only,
  each in a fresh process through PooledPostgresHook pools (what the operator's execute does);
- the peak RSS of our copying process at 200,000 and at 2,000,000 rows.

Run: ``python benchmarks/copy_benchmark.py`` (uses ``AIRFLOW_POOL_PROVIDER_PG_DSN`` if set, else a
throwaway server). ``--rows`` scales the table down for a quick look.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg2
from external import pgcopydb_clone
from psycopg2 import sql

from airflow_pool_provider.copy.spec import DEFAULT_CHUNK_SIZE  # no Airflow import: AIRFLOW_HOME is set later

HERE = Path(__file__).resolve()
RSS_PARALLELISM = 4  # the most connections and threads: the largest footprint
READER = f"bench_reader_{os.getpid()}"  # the role the filtered run reads as


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--subset", type=int, default=200_000, help="rows for GenericTransfer and the small RSS run")
    parser.add_argument("--chunk-size", type=int, default=None, help="default: the operator's default")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return _worker(json.loads(args.worker))
    _setup_airflow_env()
    from airflow_pool_provider.testing.postgres import TemporaryPostgres, server_from_env

    server = server_from_env()
    temp = None
    if server is None:
        temp = TemporaryPostgres()
        server = temp.start()
    try:
        _benchmark(server, temp, args)
    finally:
        if temp is not None:
            temp.cleanup()


def _setup_airflow_env() -> None:
    home = tempfile.mkdtemp(prefix="copy-benchmark-airflow-")
    os.environ["AIRFLOW_HOME"] = home
    os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"


def _benchmark(server, temp, args) -> None:
    from airflow_pool_provider.testing.data import create_events, table_digest

    psql = shutil.which("psql") or (str(temp.psql_path()) if temp else None)
    src_db, dst_db = server.create_database("bench_src"), server.create_database("bench_dst")
    made = [src_db, dst_db]
    results: list[dict] = []
    try:
        src = psycopg2.connect(server.dsn(src_db))
        dst = psycopg2.connect(server.dsn(dst_db))
        print(f"building {args.rows:,} rows of events ...", flush=True)
        create_events(src, args.rows)
        create_events(dst, 0)
        expected = table_digest(src)
        version = _scalar(src, "SHOW server_version")
        env = _connections_env(server, src_db, dst_db)

        def reset() -> None:
            with dst.cursor() as cur:
                cur.execute("TRUNCATE events; DROP TABLE IF EXISTS airflow_pool_provider_copy_chunks")
            dst.commit()
            server.execute("CHECKPOINT")

        def check(name: str, digest_db: str | None = None, rows: int | None = None) -> str:
            conn = dst if digest_db is None else psycopg2.connect(server.dsn(digest_db))
            got = table_digest(conn)
            if conn is not dst:
                conn.close()
            want = expected if rows is None else (rows, None)
            ok = got == want if rows is None else got[0] == rows
            if not ok:
                raise SystemExit(f"{name}: the target does not match the source ({got} != {want})")
            return "verified identical" if rows is None else f"{rows:,} rows checked"

        if psql:
            for fmt in ("text", "binary"):
                reset()
                seconds = _psql_pipe(psql, server, src_db, dst_db, fmt)
                results.append({"method": f"psql COPY pipe, {fmt}", "seconds": seconds, "note": check(fmt)})
        else:
            print("psql not found: raw pipe rows skipped (they are the reference)")
        if shutil.which("pgcopydb"):
            clone_db = server.create_database("bench_clone")
            made.append(clone_db)
            seconds = pgcopydb_clone(server, src_db, clone_db)
            results.append(
                {"method": "pgcopydb clone, split, 2 jobs", "seconds": seconds, "note": check("pgcopydb", clone_db)}
            )
        else:
            results.append({"method": "pgcopydb (not installed)", "seconds": None, "note": "apt install pgcopydb"})

        reset()
        subset = min(args.subset, args.rows)
        seconds = _generic_transfer(env, subset)
        results.append(
            {
                "method": f"GenericTransfer ({subset:,} rows, x{args.rows / subset:g})",
                "seconds": seconds * args.rows / subset,
                "note": check("GenericTransfer", rows=subset),
            }
        )

        rss = {}
        for checksums in (True, False):
            for parallelism in (1, 2, 4):
                reset()
                out = _ours(env, parallelism, checksums, args.chunk_size, None)
                label = "checksums" if checksums else "counts only"
                results.append(
                    {
                        "method": f"ours, parallelism {parallelism}, {label}",
                        "seconds": out["seconds"],
                        "note": f"{check('ours')}; peak RSS {out['maxrss_mb']:.0f} MB",
                        "ours": True,
                        "checksums": checksums,
                    }
                )
                if checksums and parallelism == RSS_PARALLELISM:
                    rss[args.rows] = out["maxrss_mb"]
        reset()
        # Same settings as the full run it is compared with; only the number of rows differs.
        # Read as a role that may only read events: a row filter is refused to a superuser.
        server.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(READER)))
        server.execute(sql.SQL("GRANT SELECT ON events TO {}").format(sql.Identifier(READER)), dbname=src_db)
        reader_env = _connections_env(server, src_db, dst_db, source_user=READER)
        small = _ours(reader_env, RSS_PARALLELISM, True, args.chunk_size, f"id <= {subset}")
        rss[subset] = small["maxrss_mb"]
        _report(results, rss, args.rows, subset, version)
        reset()
        _profile(src, dst, args.rows, args.chunk_size or DEFAULT_CHUNK_SIZE)
    finally:
        for name in made:
            server.drop_database(name)
        server.execute(
            sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(READER))
        )  # its grants went with bench_src


def _scalar(conn, query: str):
    with conn.cursor() as cur:
        cur.execute(query)
        value = cur.fetchone()[0]
    conn.commit()
    return value


def _connections_env(server, src_db: str, dst_db: str, source_user: str | None = None) -> dict[str, str]:
    env = os.environ.copy()
    for conn_id, db, user in (("BENCH_SRC", src_db, source_user), ("BENCH_DST", dst_db, None)):
        env[f"AIRFLOW_CONN_{conn_id}"] = server.airflow_connection(db, user=user)
    return env


def _psql_pipe(psql: str, server, src_db: str, dst_db: str, fmt: str) -> float:
    option = " (FORMAT binary)" if fmt == "binary" else ""
    started = time.perf_counter()
    out = subprocess.Popen(
        [psql, "-X", "-q", server.dsn(src_db), "-c", f"COPY events TO STDOUT{option}"], stdout=subprocess.PIPE
    )
    into = subprocess.run(
        [psql, "-X", "-q", server.dsn(dst_db), "-c", f"COPY events FROM STDIN{option}"], stdin=out.stdout, check=True
    )
    out.stdout.close()
    if out.wait() or into.returncode:
        raise SystemExit("the psql pipe failed")
    return time.perf_counter() - started


def _generic_transfer(env: dict[str, str], rows: int) -> float:
    code = f"""
import time, warnings
warnings.simplefilter("ignore")
from airflow.providers.common.sql.operators.generic_transfer import GenericTransfer
op = GenericTransfer(task_id="gt", source_conn_id="bench_src", destination_conn_id="bench_dst",
                     sql="SELECT * FROM events WHERE id <= {rows}", destination_table="events")
started = time.perf_counter()
op.execute(context={{}})
print(time.perf_counter() - started)
"""
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"GenericTransfer failed:\n{result.stderr[-3000:]}")
    return float(result.stdout.strip().splitlines()[-1])


def _ours(env: dict[str, str], parallelism: int, checksums: bool, chunk_size: int | None, where: str | None) -> dict:
    spec = {"parallelism": parallelism, "checksums": checksums, "chunk_size": chunk_size, "where": where}
    result = subprocess.run(
        [sys.executable, str(HERE), "--worker", json.dumps(spec)], env=env, capture_output=True, text=True
    )
    if result.returncode:
        raise SystemExit(f"our copy failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _worker(spec: dict) -> None:
    """One copy in this fresh process, as ChunkedTableCopyOperator.execute runs it."""
    from airflow_pool_provider.copy import CopySpec, TableCopy
    from airflow_pool_provider.hooks.pooled_postgres import PooledPostgresHook

    copy = CopySpec(
        "events",
        chunk_size=spec["chunk_size"] or DEFAULT_CHUNK_SIZE,
        parallelism=spec["parallelism"],
        verify_checksums=spec["checksums"],
        where=spec["where"],
    )
    started = time.perf_counter()
    source = PooledPostgresHook("bench_src").get_pool()
    target = PooledPostgresHook("bench_dst").get_pool()
    summary = TableCopy(source, target, copy, copy_id="benchmark").run()
    seconds = time.perf_counter() - started
    maxrss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "rows": summary.rows, "maxrss_mb": maxrss_mb}))


def _profile(src, dst, rows: int, chunk_size: int) -> None:
    """Where the time goes: each part of a copy alone, on one backend, so each is one core's work."""
    from psycopg2 import sql

    from airflow_pool_provider.copy import catalog, checksum
    from airflow_pool_provider.copy.names import TableName

    with src.cursor() as cur:
        columns = catalog.load_table(cur, TableName.parse("events"), catalog.Side.SOURCE).copyable_columns()
    src.rollback()
    ranges = [
        sql.SQL("id > {} AND id <= {}").format(sql.Literal(lo), sql.Literal(lo + chunk_size))
        for lo in range(0, rows, chunk_size)
    ]
    parts = []
    dumps = [tempfile.TemporaryFile() for _ in ranges]  # one binary COPY stream per chunk
    try:
        started = time.perf_counter()
        with src.cursor() as cur:
            for where, dump in zip(ranges, dumps, strict=True):
                cur.copy_expert(
                    sql.SQL("COPY (SELECT * FROM events WHERE {}) TO STDOUT (FORMAT binary)").format(where), dump
                )
        src.rollback()
        parts.append(("source read: COPY TO, binary, by chunk", time.perf_counter() - started))
        started = time.perf_counter()
        with dst.cursor() as cur:
            for dump in dumps:
                dump.seek(0)
                cur.copy_expert("COPY events FROM STDIN (FORMAT binary)", dump, size=1 << 17)
                dst.commit()
        parts.append(("target load: COPY FROM, binary, into the keyed table", time.perf_counter() - started))
    finally:
        for dump in dumps:
            dump.close()
    started = time.perf_counter()
    with src.cursor() as cur:
        for where in ranges:
            cur.execute(checksum.query(checksum.ChecksumMethod.RECORD, columns, sql.Identifier("events"), where))
            cur.fetchone()
    src.rollback()
    hashing = time.perf_counter() - started
    parts.append(("checksum of every row, one side (x2: both sides hash)", hashing))
    print(f"\nwhere the time goes (each part alone, one backend, one core; {os.cpu_count()} cores in all):")
    for name, seconds in parts:
        print(f"  {name:<56} {seconds:6.2f} s")
    work = sum(s for _, s in parts) + hashing
    print(
        f"  server work of a checksummed copy: {work:.2f} core-seconds, so at least {work / os.cpu_count():.2f} s "
        f"on {os.cpu_count()} cores before any client work; counts only: {work - 2 * hashing:.2f} core-seconds"
    )


def _report(results: list[dict], rss: dict[int, float], rows: int, subset: int, version: str) -> None:
    reference = next((r["seconds"] for r in results if r["method"] == "psql COPY pipe, text"), None)
    print(f"\nPostgreSQL {version}, {rows:,} rows, {os.cpu_count()} CPUs; ratio = time / raw text pipe time\n")
    print(f"{'method':<42} {'seconds':>8} {'ratio':>7}  note")
    print("-" * 100)
    for r in results:
        sec = "-" if r["seconds"] is None else f"{r['seconds']:.2f}"
        ratio = "-" if r["seconds"] is None or not reference else f"{r['seconds'] / reference:.2f}"
        print(f"{r['method']:<42} {sec:>8} {ratio:>7}  {r['note']}")
    print(
        f"\npeak RSS of our copying process (parallelism {RSS_PARALLELISM}, checksums): "
        f"{rss[subset]:.0f} MB at {subset:,} rows, "
        f"{rss[rows]:.0f} MB at {rows:,} rows (growth {rss[rows] - rss[subset]:+.0f} MB)"
    )
    ours_counts = min(r["seconds"] for r in results if r.get("ours") and not r["checksums"])
    ours_checked = min(r["seconds"] for r in results if r.get("ours") and r["checksums"])
    pgcopydb = next((r["seconds"] for r in results if r["method"].startswith("pgcopydb clone")), None)
    generic = next(r["seconds"] for r in results if r["method"].startswith("GenericTransfer"))
    print("\ntargets:")
    _target(
        f"counts only, best {ours_counts:.2f} s <= 0.80 x raw text pipe",
        reference and ours_counts <= 0.80 * reference,
        reference and ours_counts / reference,
    )
    if pgcopydb:
        _target(
            f"counts only, best {ours_counts:.2f} s <= 0.85 x pgcopydb {pgcopydb:.2f} s",
            ours_counts <= 0.85 * pgcopydb,
            ours_counts / pgcopydb,
        )
    _target(
        f"checksums on, best {ours_checked:.2f} s <= raw text pipe",
        reference and ours_checked <= reference,
        reference and ours_checked / reference,
    )
    _target(
        f">= 12x faster than GenericTransfer ({generic / ours_checked:.1f}x with checksums)",
        generic >= 12 * ours_checked,
        generic / ours_checked,
    )
    _target(f"peak RSS growth {rss[rows] - rss[subset]:+.0f} MB <= 50 MB", rss[rows] - rss[subset] <= 50, None)


def _target(text: str, met, ratio) -> None:
    extra = f" (ratio {ratio:.2f})" if isinstance(ratio, float) else ""
    print(f"  {'met    ' if met else 'NOT met'}  {text}{extra}")


if __name__ == "__main__":
    main()
