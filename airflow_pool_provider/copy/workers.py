"""Running chunks on worker threads that stop when told.

A ``ThreadPoolExecutor`` runs every queued item before its ``with`` block ends, so a failed or
timed-out copy went on committing chunks. Here each worker takes the next item only while the
copy is not stopped; the first failure stops the others (and cancels what they run).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

from airflow_pool_provider.copy.stopping import StopSignal
from airflow_pool_provider.errors import first_line

Item = TypeVar("Item")

#: How often a waiting coordinator repeats the cancel requests of a stopped copy.
RECANCEL_EVERY = 0.2


@dataclass(frozen=True, slots=True)
class WorkOutcome:
    """What became of the items: done, cut short by the stop, never started; the first failure."""

    done: int
    cancelled: int
    not_started: int
    failure: BaseException | None


def run_workers(
    items: Sequence[Item],
    workers: int,
    work: Callable[[Item], None],
    stop: StopSignal,
    describe: Callable[[Item], str] = str,
    name: str = "copy-worker",
) -> WorkOutcome:
    """Run ``work(item)`` for each item on ``workers`` threads; return when all have ended."""
    queue: Iterator[Item] = iter(items)
    lock = threading.Lock()
    counts = {"done": 0, "cancelled": 0, "started": 0}
    failures: list[BaseException] = []

    def take() -> tuple[bool, Item | None]:
        with lock:
            if stop.stopped:
                return False, None
            try:
                item = next(queue)
            except StopIteration:
                return False, None
            counts["started"] += 1
            return True, item

    def loop() -> None:
        while True:
            more, item = take()
            if not more:
                return
            try:
                work(item)
            except BaseException as exc:  # noqa: BLE001 - recorded, then the copy stops
                with lock:
                    if stop.stopped:
                        counts["cancelled"] += 1
                    else:
                        failures.append(exc)
                if not stop.stopped:
                    stop.stop(f"{describe(item)} failed: {first_line(exc)}", failure=True)
                return
            with lock:
                counts["done"] += 1

    threads = [
        threading.Thread(target=loop, name=f"{name}-{i + 1}", daemon=True)
        for i in range(max(1, min(workers, len(items))))
    ]
    for thread in threads:
        thread.start()
    join_all(threads, stop)
    return WorkOutcome(
        counts["done"], counts["cancelled"], len(items) - counts["started"], failures[0] if failures else None
    )


def join_all(threads: Sequence[threading.Thread], stop: StopSignal, timeout: float | None = None) -> bool:
    """Wait for ``threads``; once the copy is stopped, repeat its cancels until they are gone.

    Returns False if some thread was still running after ``timeout`` seconds.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    for thread in threads:
        while thread.is_alive():
            if deadline is not None and time.monotonic() >= deadline:
                return False
            thread.join(RECANCEL_EVERY)
            if stop.stopped and thread.is_alive():
                stop.cancel_watched()
    return True
