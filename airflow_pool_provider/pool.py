"""A bounded, thread-safe, fork-safe psycopg2 connection pool.

``psycopg2.pool`` raises at once when exhausted, closes every connection above ``minconn``, hands
out dead connections and breaks its parent's sessions after ``fork()``. This pool waits with a
timeout, keeps idle connections up to ``max_size``, checks them at checkout, resets them at
return, forgets inherited connections in a forked child and keeps stats.

It knows nothing of Airflow: it is given a ``connect`` callable and a name for its messages, so a
password never reaches it except inside that callable.
"""

from __future__ import annotations

import atexit
import logging
import os
import random
import select
import sys
import threading
import time
import traceback
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum
from types import FrameType
from typing import Any

import psycopg2
import psycopg2.extensions as ext
from psycopg2 import sql

from airflow_pool_provider.backoff import Backoff
from airflow_pool_provider.errors import (
    CheckoutCancelled,
    ConnectFailed,
    InvalidSetting,
    Kind,
    PoolClosed,
    PoolError,
    PoolTimeout,
    classify,
    first_line,
    is_transient,
)

#: How often a cancellable wait for a connection looks at its cancel.
_CANCEL_POLL = 0.05

#: Waits between connect attempts while the server is unreachable.
CONNECT_BACKOFF = Backoff(first=0.01, cap=2.0)

__all__ = ["ConnectionPool", "PoolClosed", "PoolError", "PoolStats", "PoolTimeout", "PooledConnection"]

log = logging.getLogger(__name__)

Connect = Callable[[], "ext.connection"]


@dataclass(slots=True)
class _Slot:
    """One physical connection and the facts the pool keeps about it."""

    conn: ext.connection
    created: float
    expires: float
    last_used: float
    checked_out_at: float = 0.0
    # The wrapper handed out (weakly: a dropped wrapper must be collectable) and the line that
    # took it; the wrapper holds the taker's frame, for leak reports.
    holder: weakref.ref | None = None
    taken_at_line: int = 0
    leak_reported: bool = False
    # Session settings a checkout asked for, kept on the session until a checkout asks for others,
    # and what they were before (the server's, the role's or the connection's own).
    settings: dict[str, str] = field(default_factory=dict)
    settings_before: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class _Checkout:
    """One ``getconn`` call: its deadline starts with its first wait or its first connect."""

    timeout: float
    cancel: threading.Event | None
    deadline: float | None = None
    waited: bool = False

    def start_clock(self, now: float) -> float:
        """The deadline, fixed the first time it is asked for."""
        if self.deadline is None:
            self.deadline = now + self.timeout
        return self.deadline

    def seconds_left(self) -> float:
        return self.start_clock(time.monotonic()) - time.monotonic()

    def first_wait(self) -> bool:
        """True the first time only: a checkout counts as one wait however often it waits."""
        first, self.waited = not self.waited, True
        return first


class _Unusable(Enum):
    """Why a connection is not handed out, as counted in the stats."""

    BROKEN = "broken"
    EXPIRED = "expired"


@dataclass(slots=True)
class PoolStats:
    """Counters since the pool was made. Gauges (size, idle, ...) are read live by ``stats()``."""

    connections_created: int = 0
    connection_errors: int = 0
    checkouts: int = 0
    returns: int = 0
    waits: int = 0
    wait_time: float = 0.0
    timeouts: int = 0
    pings: int = 0
    discarded_broken: int = 0
    discarded_expired: int = 0
    rollbacks_on_return: int = 0
    leaks_detected: int = 0
    peak_in_use: int = 0


class PooledConnection:
    """A checked-out psycopg2 connection: behaves like one, and ``close()`` gives it back.

    A fresh wrapper is made for each checkout, so a wrapper that was given back cannot be used or
    returned a second time by mistake. ``raw`` is the psycopg2 connection itself, for APIs that
    insist on one (``psycopg2.sql.Composable.as_string``, ``psycopg2.extras``).

    ``with conn:`` commits (or rolls back on an exception) and then gives the connection back, as
    psycopg 3 and psycopg_pool do: psycopg2's own ``with`` keeps the connection, which in a pool
    would hold it until garbage collection.
    """

    __slots__ = ("_pool", "_slot", "_taker", "_ended_by_with", "__weakref__")

    def __init__(self, pool: ConnectionPool, slot: _Slot, taker: FrameType | None = None) -> None:
        set_ = object.__setattr__  # past our __setattr__, which forwards to psycopg2
        set_(self, "_pool", pool)
        set_(self, "_slot", slot)
        set_(self, "_taker", taker)
        set_(self, "_ended_by_with", False)
        if taker is not None:
            slot.holder = weakref.ref(self)
            slot.taken_at_line = taker.f_lineno

    @property
    def raw(self) -> ext.connection:
        return self._live_slot().conn

    def _live_slot(self) -> _Slot:
        slot = self._slot
        if slot is None:
            if self._ended_by_with:
                raise PoolError(
                    f"this connection was given back to pool {self._pool.name!r} at the end of its "
                    "with-block; call get_conn() again (pool.getconn() without a hook) for a new one"
                )
            raise PoolError(f"this connection was already given back to pool {self._pool.name!r}")
        return slot

    @property
    def settings_before(self) -> Mapping[str, str]:
        """What the session settings this checkout asked for were before they were set."""
        return dict(self._live_slot().settings_before)

    def close(self) -> None:
        """Give the connection back to its pool (idempotent, like psycopg2's ``close``)."""
        if self._slot is not None:
            self._pool.putconn(self)

    @property
    def closed(self) -> int:
        slot = self._slot
        return 1 if slot is None else slot.conn.closed

    def __getattr__(self, name: str) -> Any:
        return getattr(self.raw, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in PooledConnection.__slots__:
            object.__setattr__(self, name, value)
        else:
            setattr(self.raw, name, value)

    def __enter__(self) -> PooledConnection:
        self.raw.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        """Commit, or roll back on an exception (psycopg2), then give the connection back."""
        try:
            self.raw.__exit__(*exc)
        finally:
            object.__setattr__(self, "_ended_by_with", True)
            self.close()

    def __del__(self) -> None:
        if self._slot is not None:
            self._pool._reclaim(self)

    def __repr__(self) -> str:
        state = "returned" if self._slot is None else "in use"
        return f"<PooledConnection pool={self._pool.name!r} {state}>"


class ConnectionPool:
    """Bounded pool of psycopg2 connections made by ``connect``.

    - ``min_size``: connections kept open even when idle longer than ``max_idle``.
    - ``max_size``: connections open at once, in use or idle; ``getconn`` waits beyond it.
    - ``timeout``: seconds ``getconn`` waits for a free connection (or for the server to come
      back) before raising :class:`PoolTimeout`.
    - ``max_lifetime``: seconds after which a connection is replaced (with up to 5 % jitter, so
      connections made together do not all expire together).
    - ``max_idle``: seconds an idle connection above ``min_size`` is kept.
    - ``ping_after``: an idle connection older than this is pinged before it is handed out; a
      younger one only gets a non-blocking look at its socket.
    - ``leak_threshold``: seconds a connection may be held before a warning with the stack of the
      code that took it is logged (``None`` turns the check off).
    """

    def __init__(
        self,
        connect: Connect,
        *,
        name: str = "pool",
        min_size: int = 0,
        max_size: int = 4,
        timeout: float = 30.0,
        max_lifetime: float | None = 3600.0,
        max_idle: float | None = 600.0,
        ping_after: float = 0.5,
        leak_threshold: float | None = 300.0,
    ) -> None:
        if max_size < 1:
            raise InvalidSetting(f"pool {name!r}: max_size must be at least 1, got {max_size}")
        if not 0 <= min_size <= max_size:
            raise InvalidSetting(f"pool {name!r}: min_size must be within 0..max_size, got {min_size}")
        if timeout <= 0:
            raise InvalidSetting(f"pool {name!r}: timeout must be positive, got {timeout}")
        self.name = name
        self.min_size = min_size
        self.max_size = max_size
        self.timeout = timeout
        self.max_lifetime = max_lifetime
        self.max_idle = max_idle
        self.ping_after = ping_after
        self.leak_threshold = leak_threshold
        self._connect = connect
        self._init_state()
        _live_pools.add(self)

    def _init_state(self) -> None:
        # An RLock, because a wrapper dropped without close() gives itself back from __del__,
        # which the garbage collector may run while this thread already holds the lock.
        self._lock = threading.RLock()
        self._available = threading.Condition(self._lock)
        self._idle: deque[_Slot] = deque()
        self._in_use: dict[int, _Slot] = {}
        self._opening = 0  # being connected: count against max_size
        self._resetting = 0  # given back, being reset: count against max_size
        self._waiting = 0
        self._closed = False
        self._stats = PoolStats()
        self._pid = os.getpid()

    # -- checkout ---------------------------------------------------------------------------

    def getconn(
        self,
        timeout: float | None = None,
        cancel: threading.Event | None = None,
        settings: Mapping[str, str] | None = None,
    ) -> PooledConnection:
        """Check out a healthy connection, waiting up to ``timeout`` (default: the pool's); a set
        ``cancel`` ends the wait at once with :class:`CheckoutCancelled`. ``settings``: session
        settings (``statement_timeout``: value) the session has for this checkout; a checkout
        without them gets the session as the server and the role set it."""
        taker = sys._getframe(1) if self.leak_threshold is not None else None
        checkout = _Checkout(self.timeout if timeout is None else timeout, cancel)
        while True:
            slot = self._take_idle_or_reserve(checkout)
            if slot is None:
                slot = self._open(checkout)
            elif not self._healthy(slot, slot.checked_out_at):
                self._discard_checked_out(slot)
                continue
            self._settle(slot, dict(settings or {}))
            return PooledConnection(self, slot, taker)

    def _settle(self, slot: _Slot, wanted: dict[str, str]) -> None:
        """Give a checked-out session the ``wanted`` settings (nothing to do when it has them: they
        are kept across checkouts); a session that cannot take them is closed."""
        if slot.settings == wanted:
            return
        try:
            slot.settings_before = _set_session(slot.conn, slot.settings, wanted)
        except BaseException:
            self._discard_checked_out(slot)
            raise
        slot.settings = wanted

    def _take_idle_or_reserve(self, checkout: _Checkout) -> _Slot | None:
        """Check out the most recently used idle connection, or reserve a place to open one (None),
        waiting while neither is free."""
        while True:
            with self._lock:
                self._raise_if_closed()
                now = time.monotonic()
                self._report_leaks(now)
                stale = self._take_stale_idle(now)
                if self._idle:
                    slot = self._idle.pop()
                    self._check_out(slot, now)
                    break
                if self._has_room():
                    self._opening += 1
                    slot = None
                    break
                self._wait_for_return(checkout, now)
        for old in stale:
            _close_quietly(old.conn)
        return slot

    def _raise_if_closed(self) -> None:
        if self._closed:
            raise PoolClosed(f"pool {self.name!r} is closed")

    def _has_room(self) -> bool:
        """Whether one more connection fits within ``max_size`` (lock held)."""
        return len(self._in_use) + self._opening + self._resetting < self.max_size

    def _take_stale_idle(self, now: float) -> list[_Slot]:
        """Remove idle connections past ``max_idle``, oldest first, keeping ``min_size`` (lock held).

        Checkout takes the most recently used connection, so the oldest ones would otherwise
        never be looked at when load is low.
        """
        stale: list[_Slot] = []
        if self.max_idle is None:
            return stale
        idle = self._idle
        while (
            idle
            and now - idle[0].last_used > self.max_idle
            and len(idle) + len(self._in_use) + self._resetting > self.min_size
        ):
            stale.append(idle.popleft())
        self._stats.discarded_expired += len(stale)
        return stale

    def _check_out(self, slot: _Slot, now: float) -> None:
        """Mark ``slot`` as taken (lock held)."""
        slot.checked_out_at = now
        slot.leak_reported = False
        self._in_use[id(slot.conn)] = slot
        stats = self._stats
        stats.checkouts += 1
        if len(self._in_use) > stats.peak_in_use:
            stats.peak_in_use = len(self._in_use)

    def _discard_checked_out(self, slot: _Slot) -> None:
        """Close a connection that failed its checkout check, freeing its place for a waiter."""
        with self._lock:
            self._in_use.pop(id(slot.conn), None)
            self._available.notify()
        _close_quietly(slot.conn)

    def _wait_for_return(self, checkout: _Checkout, now: float) -> None:
        """Block until a connection is given back or the checkout's deadline passes (lock held)."""
        remaining = checkout.start_clock(now) - now
        if checkout.first_wait():
            self._stats.waits += 1
        if checkout.cancel is not None and checkout.cancel.is_set():
            raise CheckoutCancelled(f"pool {self.name!r}: the wait for a connection was cancelled")
        if remaining <= 0:
            self._stats.timeouts += 1
            raise PoolTimeout(
                f"pool {self.name!r}: no connection free after {checkout.timeout:g} s "
                f"(max_size={self.max_size}, in use={len(self._in_use)}, "
                f"opening={self._opening}, waiting={self._waiting}). Give connections back "
                f"sooner (close() them), raise pool_max_size, or raise pool_timeout."
            )
        self._waiting += 1
        try:
            # In slices when it can be cancelled: nothing notifies the condition of a cancel.
            self._available.wait(remaining if checkout.cancel is None else min(remaining, _CANCEL_POLL))
        finally:
            self._waiting -= 1
            self._stats.wait_time += time.monotonic() - now

    def _healthy(self, slot: _Slot, now: float) -> bool:
        """Decide whether an idle connection may be handed out; count why not."""
        unusable = self._why_unusable(slot, now)
        if unusable is None:
            return True
        with self._lock:
            if unusable is _Unusable.BROKEN:
                self._stats.discarded_broken += 1
            else:
                self._stats.discarded_expired += 1
        log.debug("pool %r: discarding a %s connection at checkout", self.name, unusable.value)
        return False

    def _why_unusable(self, slot: _Slot, now: float) -> _Unusable | None:
        """Why an idle connection may not be handed out; None if it may. Pings only when in doubt."""
        conn = slot.conn
        if conn.closed:
            return _Unusable.BROKEN
        if now >= slot.expires or self._idle_too_long(slot, now):
            return _Unusable.EXPIRED
        if now - slot.last_used > self.ping_after or _readable(conn):
            return None if self._ping(conn) else _Unusable.BROKEN
        return None

    def _idle_too_long(self, slot: _Slot, now: float) -> bool:
        """Idle past ``max_idle`` while the pool holds more than ``min_size``."""
        return (
            self.max_idle is not None
            and now - slot.last_used > self.max_idle
            and len(self._in_use) + len(self._idle) > self.min_size
        )

    def _ping(self, conn: ext.connection) -> bool:
        with self._lock:
            self._stats.pings += 1
        try:
            autocommit = conn.autocommit
            conn.autocommit = True  # one round trip instead of BEGIN, SELECT, ROLLBACK
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
            conn.autocommit = autocommit
            return True
        except psycopg2.Error:
            return False

    def _open(self, checkout: _Checkout) -> _Slot:
        """Make a new connection in the place reserved for it; the place is freed if that fails."""
        checkout.start_clock(time.monotonic())
        try:
            conn = self._connect_retrying(checkout)
        except BaseException:
            with self._lock:
                self._opening -= 1
                self._available.notify()
            raise
        return self._admit(conn)

    def _connect_retrying(self, checkout: _Checkout) -> ext.connection:
        """Connect, retrying with backoff while the server is unreachable, up to the checkout's deadline."""
        attempt = 0
        while True:
            attempt += 1
            try:
                return self._connect()
            except psycopg2.OperationalError as exc:
                left = self._time_left_to_retry(exc, checkout)
                delay = CONNECT_BACKOFF.delay(attempt)
                log.warning("pool %r: cannot connect (%s); retrying in %.2f s", self.name, first_line(exc), delay)
                self._back_off(min(delay, left), checkout.cancel)

    def _time_left_to_retry(self, exc: psycopg2.OperationalError, checkout: _Checkout) -> float:
        """Count a failed connect; the seconds left to retry it, or the error that ends the checkout."""
        with self._lock:
            self._stats.connection_errors += 1
        left = checkout.seconds_left()
        if not is_transient(exc, connecting=True):
            if classify(exc, connecting=True) is Kind.MISTAKE:
                raise ConnectFailed(
                    f"pool {self.name!r}: could not connect: {str(exc).strip()}. Check the "
                    "connection's host, port, database, login and password."
                ) from exc
            raise exc
        if left <= 0:
            with self._lock:
                self._stats.timeouts += 1
            raise PoolTimeout(
                f"pool {self.name!r}: could not connect within {checkout.timeout:g} s: "
                f"{str(exc).strip()}. Check that the server is up and reachable."
            ) from exc
        return left

    def _admit(self, conn: ext.connection) -> _Slot:
        """Check out a new connection in the place reserved for it, unless the pool closed meanwhile."""
        now = time.monotonic()
        lifetime = self.max_lifetime
        expires = now + lifetime * random.uniform(0.95, 1.0) if lifetime else float("inf")
        slot = _Slot(conn=conn, created=now, expires=expires, last_used=now)
        with self._lock:
            self._opening -= 1
            self._stats.connections_created += 1
            if self._closed:
                _close_quietly(conn)
                raise PoolClosed(f"pool {self.name!r} was closed while connecting")
            self._check_out(slot, now)
        return slot

    def _back_off(self, seconds: float, cancel: threading.Event | None) -> None:
        if cancel is None:
            time.sleep(seconds)
        elif cancel.wait(seconds):
            raise CheckoutCancelled(f"pool {self.name!r}: the wait for the server was cancelled")

    @contextmanager
    def connection(
        self,
        timeout: float | None = None,
        cancel: threading.Event | None = None,
        settings: Mapping[str, str] | None = None,
    ) -> Iterator[PooledConnection]:
        """Check out a connection for the ``with`` block and give it back after."""
        conn = self.getconn(timeout, cancel, settings)
        try:
            yield conn
        finally:
            conn.close()

    # -- return -----------------------------------------------------------------------------

    def putconn(self, pooled: PooledConnection) -> None:
        """Give a connection back; it is reset, or discarded if it cannot be."""
        if not isinstance(pooled, PooledConnection) or pooled._pool is not self:
            raise PoolError(f"pool {self.name!r}: this connection was not checked out from this pool")
        slot = pooled._slot
        if slot is None:
            raise PoolError(f"pool {self.name!r}: this connection was already given back")
        object.__setattr__(pooled, "_slot", None)
        object.__setattr__(pooled, "_taker", None)
        slot.holder = None
        with self._lock:
            if self._in_use.pop(id(slot.conn), None) is None:
                raise PoolError(f"pool {self.name!r}: this connection was already given back")
            self._resetting += 1  # still counts against max_size while it is being reset
            self._stats.returns += 1
        keep = False
        try:
            keep = not self._closed and self._reset(slot.conn)
        finally:
            now = time.monotonic()
            with self._lock:
                self._resetting -= 1
                if keep and not self._closed and now < slot.expires:
                    slot.last_used = now
                    self._idle.append(slot)
                else:
                    if keep and not self._closed:
                        self._stats.discarded_expired += 1
                    keep = False
                self._available.notify()
            if not keep:
                _close_quietly(slot.conn)

    def _reclaim(self, pooled: PooledConnection) -> None:
        """Give back a connection whose wrapper was dropped without ``close()``."""
        if self._pid != os.getpid():
            return
        log.warning(
            "pool %r: a connection was dropped without close(); giving it back. Next time give it back "
            "with conn.close(), or use `with hook.get_conn() as conn:` / `with pool.connection() as conn:`",
            self.name,
        )
        try:
            self.putconn(pooled)
        except PoolError:
            pass

    def _reset(self, conn: ext.connection) -> bool:
        """Bring a returned connection back to a clean session; False if it is unusable."""
        if conn.closed:
            with self._lock:
                self._stats.discarded_broken += 1
            return False
        try:
            status = conn.info.transaction_status
            if status != ext.TRANSACTION_STATUS_IDLE:
                if status == ext.TRANSACTION_STATUS_UNKNOWN:
                    raise psycopg2.OperationalError("connection lost")
                if status == ext.TRANSACTION_STATUS_ACTIVE:
                    raise psycopg2.OperationalError("returned with a command still running")
                with self._lock:
                    self._stats.rollbacks_on_return += 1
                if conn.autocommit:
                    # rollback() is a no-op in autocommit mode even after an explicit BEGIN.
                    with conn.cursor() as cur:
                        cur.execute("ROLLBACK")
                else:
                    conn.rollback()
            if conn.autocommit or conn.readonly is not None or conn.deferrable is not None:
                conn.set_session(autocommit=False, readonly="default", deferrable="default")
            if conn.isolation_level is not None:
                conn.set_session(isolation_level="default")
            return True
        except psycopg2.Error:
            with self._lock:
                self._stats.discarded_broken += 1
            return False

    # -- leaks, stats, close ----------------------------------------------------------------

    def _report_leaks(self, now: float) -> None:
        """Warn once about each connection held past ``leak_threshold``, with where it was taken (lock held)."""
        threshold = self.leak_threshold
        if threshold is None:
            return
        for slot in self._in_use.values():
            if slot.leak_reported or now - slot.checked_out_at < threshold:
                continue
            slot.leak_reported = True
            self._stats.leaks_detected += 1
            stack = _format_stack(slot)
            log.warning(
                "pool %r: a connection has been held for %.1f s (leak_threshold=%g s); give it back "
                "with conn.close(), or use `with hook.get_conn() as conn:` / `with pool.connection() as conn:`"
                ", which give it back at the end of the block. It was taken here:\n%s",
                self.name,
                now - slot.checked_out_at,
                threshold,
                stack.rstrip(),
            )

    def stats(self) -> dict[str, Any]:
        """Gauges and counters; safe to log (no connection parameters)."""
        with self._lock:
            self._report_leaks(time.monotonic())
            s = self._stats
            in_use = len(self._in_use)
            return {
                "name": self.name,
                "min_size": self.min_size,
                "max_size": self.max_size,
                "size": in_use + len(self._idle),
                "idle": len(self._idle),
                "in_use": in_use,
                "waiting": self._waiting,
                "connections_created": s.connections_created,
                "connection_errors": s.connection_errors,
                "checkouts": s.checkouts,
                "returns": s.returns,
                "waits": s.waits,
                "wait_time_ms": round(s.wait_time * 1000, 3),
                "timeouts": s.timeouts,
                "pings": s.pings,
                "discarded_broken": s.discarded_broken,
                "discarded_expired": s.discarded_expired,
                "rollbacks_on_return": s.rollbacks_on_return,
                "leaks_detected": s.leaks_detected,
                "peak_in_use": s.peak_in_use,
                "closed": self._closed,
            }

    def stats_line(self) -> str:
        """The stats on one line, for logs."""
        return (
            "pool {name}: size={size}/{max_size} idle={idle} in_use={in_use} peak={peak_in_use} "
            "created={connections_created} checkouts={checkouts} waits={waits} "
            "wait_ms={wait_time_ms} timeouts={timeouts} pings={pings} "
            "discarded_broken={discarded_broken} discarded_expired={discarded_expired} "
            "rollbacks={rollbacks_on_return} leaks={leaks_detected}"
        ).format(**self.stats())

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Refuse new checkouts, close idle connections now and the others as they come back."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            idle, self._idle = list(self._idle), deque()
            self._available.notify_all()
        if self._pid == os.getpid():
            for slot in idle:
                _close_quietly(slot.conn)

    def _forget_after_fork(self) -> None:
        """In a forked child: drop inherited connections without closing them.

        Closing would send Terminate on a socket the parent still uses and end its session;
        psycopg2 frees a connection of another process without closing it. A closed pool stays
        closed.
        """
        closed = self._closed
        self._init_state()
        self._closed = closed

    def __repr__(self) -> str:
        return (
            f"<ConnectionPool {self.name!r} size={len(self._in_use) + len(self._idle)}"
            f"/{self.max_size} in_use={len(self._in_use)}{' closed' if self._closed else ''}>"
        )


def _format_stack(slot: _Slot) -> str:
    """The stack of the code that took ``slot``, with the line it was on when it took it."""
    holder = slot.holder() if slot.holder is not None else None
    frame = holder._taker if holder is not None else None
    if frame is None:
        return "  (unknown)"
    entries = traceback.extract_stack(frame)
    last = entries[-1]
    entries[-1] = traceback.FrameSummary(last.filename, slot.taken_at_line, last.name)
    return "".join(traceback.format_list(entries)).rstrip()


def _set_session(conn: ext.connection, current: Mapping[str, str], wanted: Mapping[str, str]) -> dict[str, str]:
    """Undo the ``current`` settings of an idle session and set the ``wanted`` ones, in one round
    trip; returns the values the wanted ones had before."""
    resets = [sql.SQL("RESET {};").format(sql.Identifier(name)) for name in current]
    names = list(wanted)
    reads = sql.SQL(", ").join(sql.SQL("current_setting(%s), set_config(%s, %s, false)") for _ in names)
    statement = sql.SQL(" ").join([*resets, sql.SQL("SELECT ") + reads] if names else resets)
    autocommit = conn.autocommit
    conn.autocommit = True  # a setting made in a transaction that rolls back would be undone
    try:
        with conn.cursor() as cur:
            cur.execute(statement, [v for name in names for v in (name, name, wanted[name])])
            row = cur.fetchone() if names else ()
    finally:
        conn.autocommit = autocommit
    return {name: row[2 * i] for i, name in enumerate(names)}


def _readable(conn: ext.connection) -> bool:
    """True if the server sent something to an idle connection (an error, EOF, a notice)."""
    try:
        return bool(select.select((conn,), (), (), 0)[0])
    except (OSError, ValueError, psycopg2.Error):
        return True


def _close_quietly(conn: ext.connection) -> None:
    try:
        conn.close()
    except Exception:  # noqa: BLE001 - a connection being thrown away may fail in any way
        pass


_live_pools: weakref.WeakSet[ConnectionPool] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for pool in list(_live_pools):
        pool._forget_after_fork()


def _close_all_at_exit() -> None:
    for pool in list(_live_pools):
        if pool._pid == os.getpid():
            pool.close()


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_close_all_at_exit)
