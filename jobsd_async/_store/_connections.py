"""The connection budget: the server connections one instance runs its statements on.

At most ``limit`` are open at once.  A connection is taken from the engine's pool when work
is waiting and none of the instance's is free, held between uses (so the next statement
needs no checkout), and closed after ``idle_close`` seconds unused, down to one, which the
heartbeat keeps busy.  Closed, not returned: the pool would keep it open.

With ``limit >= 2`` one connection is kept for urgent work (the heartbeat): other work holds
at most ``limit - 1`` at once, so a beat never waits behind a slow claim or a batch of
completions.  With ``limit == 1`` they share it.

When the server refuses a new connection (``too many clients already``), the instance goes
on with the connections it holds and tries to open another only after a growing, jittered
delay; while it holds none, callers get the refusal at once rather than each trying, so a
full server sees one attempt per instance per delay instead of a storm.

SQLite has no server connections: there every use is a plain checkout from the pool.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

IDLE_CLOSE = 30.0  # seconds a connection may sit unused before it is closed (all but one)
_RETRY_FIRST = 0.1  # seconds before a refused connection is tried again; doubling ...
_RETRY_CAP = 5.0  # ... up to this
_CLOSE_TIMEOUT = 2.0  # seconds closing one connection may take before it is abandoned
_GROW_AFTER = 0.05  # seconds work waits for one of the instance's connections before opening one


class ConnectionRefused(ConnectionError):
    """The server refused a new connection and the instance holds none (it retries later)."""


class Connections:
    """At most ``limit`` connections of ``engine``, leased one use at a time."""

    def __init__(
        self,
        engine: AsyncEngine,
        limit: int,
        *,
        name: str | None = None,
        autocommit: bool = False,
        logger: logging.Logger,
        extra: Mapping[str, object] | None = None,
    ) -> None:
        self._engine = engine
        self.limit = limit
        # Work that is not urgent leaves one connection to the heartbeat (when there are two).
        self._ordinary_limit = limit - 1 if limit >= 2 else limit
        self._name = name  # application_name of the connections (PostgreSQL)
        # PostgreSQL: connections stay in autocommit mode; transactions BEGIN explicitly
        # (see Dialect.transaction_on).  Switching per use would grow SQLAlchemy's reset
        # list on a connection that is never checked in.
        self.autocommit = autocommit
        self._log = logger
        self._extra = dict(extra or {})
        self.idle_close = IDLE_CLOSE
        self._idle: list[tuple[AsyncConnection, float]] = []  # most recently used last
        self._open = 0  # held: idle, leased, or being opened
        self._leased_ordinary = 0
        self._waiters: collections.deque[_Waiter] = collections.deque()
        self._refusals = 0
        self._retry_at = 0.0
        self._refused: BaseException | None = None
        self._closed = False
        self.opened = 0  # connections opened so far (for tests and operators)

    @asynccontextmanager
    async def lease(self, *, urgent: bool = False, patient: bool = False) -> AsyncIterator[AsyncConnection]:
        """A connection of the instance's for one use, its transaction ended afterwards.

        ``urgent``: first in line, and may use the connection kept for the heartbeat.
        ``patient``: background work (a poll, a timeout check) that waits a moment for a
        connection in use before opening another, so loops that happen to meet on an idle
        instance do not keep extra connections open.
        """
        conn = None if self._closed else await self._acquire(urgent, patient)
        if conn is None:  # after close() (a last statement at shutdown): a plain checkout
            async with self._engine.connect() as plain:
                yield plain
            return
        try:
            yield conn
        finally:
            if not urgent:
                self._leased_ordinary -= 1
            await self._release(conn)

    async def trim(self) -> None:
        """Close connections unused for ``idle_close`` seconds, keeping one."""
        cutoff = time.monotonic() - self.idle_close
        while len(self._idle) > 0 and self._open > 1 and self._idle[0][1] < cutoff:
            conn, _ = self._idle.pop(0)
            self._open -= 1
            await discard(conn)

    async def close(self) -> None:
        """Close every idle connection; those in use are closed when they come back.

        Leases after this open plain pooled connections (a last statement at shutdown).
        The closes run in the background (a cancelled close() leaks none), waited for
        here: an engine disposed of, or an event loop ended, right after ``down()`` must
        not cut one short.
        """
        self._closed = True
        idle, self._idle = self._idle, []
        closing = [self._forget(conn) for conn, _ in idle]
        self._wake()
        if closing:
            await asyncio.wait(closing, timeout=2 * _CLOSE_TIMEOUT)

    async def _acquire(self, urgent: bool, patient: bool) -> AsyncConnection | None:
        """A connection, counted in ``_leased_ordinary`` unless ``urgent``; None once closed.

        Those waiting are served in order (the urgent first), by hand-over: a task that
        gives a connection back and asks again at once queues behind them, so a stream of
        claims and completions on one connection cannot starve the heartbeat.
        """
        while True:
            if self._closed:
                return None
            allowed = urgent or self._leased_ordinary < self._ordinary_limit
            ahead = any(w.urgent for w in self._waiters) if urgent else bool(self._waiters)
            if allowed and self._idle and not ahead:
                conn, _ = self._idle.pop()
                if not _lost(conn):
                    self._count(urgent)
                    return conn
                self._open -= 1
                await discard(conn)
                continue
            below = allowed and self._open < self.limit
            if below and self._open == 0 and time.monotonic() < self._retry_at:
                raise ConnectionRefused(
                    f"the database refused a new connection ({self._refused}); retrying in "
                    f"{max(0.0, self._retry_at - time.monotonic()):.1f}s"
                ) from self._refused
            may_grow = below and time.monotonic() >= self._retry_at
            # Patient work first waits a while for one in use; then it may open one ahead of
            # those queued behind it (a new connection serves whoever is next).
            if may_grow and (urgent or self._open == 0 or not patient):
                grown = await self._grow(urgent)
                if grown is not None:
                    return grown
                continue  # refused: wait for one of ours (and try again after the delay)
            waiter = self._enqueue(urgent)
            try:
                if may_grow:
                    # One in use may come back within moments (a beat and a poll that meet):
                    # a new connection only for demand that lasts.
                    await asyncio.wait([waiter.future], timeout=_GROW_AFTER)
                    patient = False
                else:
                    await waiter.future
            except BaseException:
                self._pass_on(waiter)
                raise
            finally:
                self._dequeue(waiter)
            handed_over = waiter.handed()
            if handed_over is not None:
                return handed_over  # already counted
            # Woken to look again (a connection was lost or refused, or a slot freed), or
            # tired of waiting for one in use.

    def _count(self, urgent: bool) -> None:
        if not urgent:
            self._leased_ordinary += 1

    def _uncount(self, urgent: bool) -> None:
        if not urgent:
            self._leased_ordinary -= 1

    def _enqueue(self, urgent: bool, *, counted: bool = False) -> _Waiter:
        """A place in line: the urgent at the front, the others at the back.

        ``counted``: ordinary work whose lease is counted already (while it opens one).
        """
        waiter = _Waiter(urgent, counted)
        if urgent:
            self._waiters.appendleft(waiter)
        else:
            self._waiters.append(waiter)
        return waiter

    def _dequeue(self, waiter: _Waiter) -> None:
        with contextlib.suppress(ValueError):
            self._waiters.remove(waiter)

    def _pass_on(self, waiter: _Waiter) -> None:
        """A waiter cancelled just after a hand-over passes the connection on."""
        given = waiter.handed()
        if given is not None:
            if not waiter.counted:
                self._uncount(waiter.urgent)
            self._give_back(given)

    async def _grow(self, urgent: bool) -> AsyncConnection | None:
        """Open a connection, or take one of ours that comes back first (counted either
        way); None if the server refused it while the instance holds others.

        A checkout from a pool that others emptied (the application's requests, running
        jobs) waits up to ``pool_timeout``, 30 s by default: no work may wait that long for
        a connection the instance gets back in moments.
        """
        self._count(urgent)  # before the awaits: the limit holds meanwhile
        self._open += 1  # counted while it opens: nobody else may exceed the limit meanwhile
        opening = asyncio.get_running_loop().create_task(self._open_one())
        while True:
            # Counted already: the connection the heartbeat gives back may come to it too.
            waiter = self._enqueue(urgent, counted=not urgent)
            try:
                either: list[asyncio.Future[Any]] = [waiter.future, opening]
                await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            except BaseException:
                opening.add_done_callback(self._adopt)
                self._pass_on(waiter)
                self._uncount(urgent)
                self._wake()  # a lease less: others held at the limit may go
                raise
            finally:
                self._dequeue(waiter)
            if (given := waiter.handed()) is not None:
                opening.add_done_callback(self._adopt)  # kept idle, or dropped, when it ends
                return given
            if opening.done():
                try:
                    conn = opening.result()
                except BaseException as exc:
                    self._not_opened(exc)
                    self._uncount(urgent)
                    if isinstance(exc, Exception) and self._open > 0:
                        return None
                    raise
                self._opened()
                return conn

    def _adopt(self, opening: asyncio.Task[AsyncConnection]) -> None:
        """A connection opened for a lease that no longer needs it: keep it idle."""
        if opening.cancelled():
            self._not_opened(asyncio.CancelledError())
            return
        exc = opening.exception()
        if exc is not None:
            self._not_opened(exc)
            return
        self._opened()
        self._give_back(opening.result())

    async def _open_one(self) -> AsyncConnection:
        conn = await self._engine.connect()
        try:
            if self._name is not None:
                await conn.execute(select(func.set_config("application_name", self._name, False)))
                await conn.commit()
            if self.autocommit:
                await conn.execution_options(isolation_level="AUTOCOMMIT")
        except BaseException:
            await discard(conn)
            raise
        return conn

    def _not_opened(self, exc: BaseException) -> None:
        self._open -= 1
        if isinstance(exc, Exception):
            self._on_refused(exc)
        self._wake()

    def _opened(self) -> None:
        if self._refusals:
            self._log.warning(
                "jobsd: the database accepts new connections again (after %d refusals)",
                self._refusals,
                extra=self._extra,
            )
        self._refusals = 0
        self._retry_at = 0.0
        self.opened += 1

    def _on_refused(self, exc: BaseException) -> None:
        self._refusals += 1
        delay = retry_delay(self._refusals)
        self._retry_at = time.monotonic() + delay
        # Those waiting for one in use may open one once the delay is over.
        asyncio.get_running_loop().call_later(delay, self._wake)
        self._refused = exc
        if self._refusals == 1:
            self._log.warning(
                "jobsd: the database refused a new connection (%s); going on with the %d held, "
                "trying again later",
                exc,
                self._open,
                extra=self._extra,
            )

    async def _release(self, conn: AsyncConnection) -> None:
        try:
            # The implicit transaction of a read ends here, as it would back in the pool
            # (under REPEATABLE READ a held snapshot would otherwise age forever).  In
            # autocommit mode there is none: every transaction ended with its COMMIT or
            # ROLLBACK statement, or else the connection was invalidated.
            if not self.autocommit and not _lost(conn) and conn.in_transaction():
                async with asyncio.timeout(_CLOSE_TIMEOUT):
                    await conn.rollback()
        except BaseException:
            self._forget(conn)
            raise
        if _lost(conn) or self._closed:
            self._forget(conn)
            return
        self._give_back(conn)
        if len(self._idle) > 1 and self._idle[0][1] < time.monotonic() - self.idle_close:
            await self.trim()

    def _give_back(self, conn: AsyncConnection) -> None:
        """Hand ``conn`` to the first waiter that may take it, or keep it idle."""
        if self._closed:
            self._forget(conn)
            return
        for waiter in self._waiters:
            if waiter.future.done():
                continue
            if waiter.urgent or waiter.counted or self._leased_ordinary < self._ordinary_limit:
                if not waiter.counted:
                    self._count(waiter.urgent)
                waiter.future.set_result(conn)
                self._waiters.remove(waiter)
                return
        self._idle.append((conn, time.monotonic()))

    def _forget(self, conn: AsyncConnection) -> asyncio.Task[None]:
        """Stop counting ``conn`` and close it in the background (never back to the pool)."""
        self._open -= 1
        self._wake()
        task = asyncio.get_running_loop().create_task(discard(conn))
        _closing.add(task)
        task.add_done_callback(_closing.discard)
        return task

    def _wake(self) -> None:
        """Let every waiter look again (None: no connection handed over)."""
        for waiter in self._waiters:
            if not waiter.future.done():
                waiter.future.set_result(None)
        self._waiters.clear()


class _Waiter:
    __slots__ = ("counted", "future", "urgent")

    def __init__(self, urgent: bool, counted: bool = False) -> None:
        self.urgent = urgent
        self.counted = counted  # its lease is counted already: any connection may go to it
        self.future: asyncio.Future[AsyncConnection | None] = asyncio.get_running_loop().create_future()

    def handed(self) -> AsyncConnection | None:
        """The connection handed over to this waiter, if any."""
        future = self.future
        return future.result() if future.done() and not future.cancelled() else None


_closing: set[asyncio.Task[None]] = set()


def retry_delay(failures: int) -> float:
    """Seconds before connecting again after ``failures`` refusals in a row (jittered)."""
    delay: float = min(_RETRY_CAP, _RETRY_FIRST * 2.0 ** min(failures - 1, 16))
    return delay * random.uniform(0.5, 1.0)


def _lost(conn: AsyncConnection) -> bool:
    return conn.closed or conn.invalidated


async def discard(conn: AsyncConnection) -> None:
    """Close ``conn`` for good (never back to the pool, where it would stay open)."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(_CLOSE_TIMEOUT):
            await conn.invalidate()
    with contextlib.suppress(Exception):
        await conn.close()
