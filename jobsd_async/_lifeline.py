"""The lifeline: one connection an instance holds for its life, for its heartbeat.

The heartbeat writes through a connection of its own, so a connection pool emptied by
running jobs never delays a beat (three late beats and peers take the instance for dead
and re-run its live jobs).  On PostgreSQL the same connection ``LISTEN``s: every insert of
runs notifies ``{prefix}new`` (on commit), and listening instances try a claim at once;
``cancel_run`` notifies ``{prefix}cancel`` with ``owner:row``; each batch of completions
notifies ``{prefix}done`` with the run ids it touched, which wakes their ``wait_for_run``
callers.  All are shortcuts only: the poller, the heartbeat's cancel check and the
waiters' own re-checks remain.

A lost connection (a restart, ``pg_terminate_backend``, MariaDB ``KILL``) is dropped and
opened again at the next use.  On PostgreSQL the connection is named
``jobsd lifeline #<instance>`` (``... listening`` when it listens) in ``application_name``,
for operators.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ._store._dialect import Dialect

T = TypeVar("T")

_CLOSE_TIMEOUT = 2.0  # seconds close() may take (UNLISTEN) before the connection is dropped


class Lifeline:
    def __init__(
        self,
        engine: AsyncEngine,
        dialect: Dialect,
        instance_id: int,
        *,
        channels: Mapping[str, Callable[[str], None]] | None,
        logger: logging.Logger,
    ) -> None:
        self._engine = engine
        self._dialect = dialect
        self._id = instance_id
        # Channel -> what to do with a notification's payload; None: no LISTEN.
        self._channels = {name: _listener(on) for name, on in channels.items()} if channels else None
        self._log = logger
        self._conn: AsyncConnection | None = None
        self._driver: Any = None
        self._lock = asyncio.Lock()

    async def run(self, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        """Run ``work`` in a transaction on the lifeline (connecting again if it was lost)."""
        async with self._lock:
            conn = await self._connected()
            try:
                async with self._dialect.transaction_on(conn):
                    return await work(conn)
            except BaseException:
                if self._lost(conn):
                    await self._drop()
                raise

    async def ensure(self) -> None:
        """Be connected (and listening); errors are logged, not raised: polling goes on."""
        async with self._lock:
            try:
                await self._connected()
            except Exception as exc:
                self._log.warning(
                    "jobsd: cannot hold the lifeline connection%s: %s",
                    " (LISTEN: polling only)" if self._channels else "",
                    exc,
                    extra={"instance_id": self._id},
                )

    async def close(self) -> None:
        try:
            async with asyncio.timeout(_CLOSE_TIMEOUT):
                await self._lock.acquire()
        except TimeoutError:
            # A beat abandoned at shutdown still holds the lock, waiting on a server that
            # stopped answering: drop the connection without it.
            await self._drop()
            return
        try:
            await self._drop(unlisten=True)
        finally:
            self._lock.release()

    async def _connected(self) -> AsyncConnection:
        if self._conn is not None and not self._lost(self._conn):
            return self._conn
        await self._drop()
        conn = await self._engine.connect()
        try:
            if self._dialect.is_postgresql:
                name = f"jobsd lifeline #{self._id}" + (" listening" if self._channels else "")
                await conn.execute(select(func.set_config("application_name", name, False)))
                await conn.commit()
            if self._channels is not None:
                driver: Any = (await conn.get_raw_connection()).driver_connection
                try:
                    for channel, listener in self._channels.items():
                        await driver.add_listener(channel, listener)
                except Exception as exc:  # the driver's own errors: the connection was lost
                    raise ConnectionError(f"LISTEN failed: {exc}") from exc
                self._driver = driver
        except BaseException:
            await _discard(conn)
            raise
        self._conn = conn
        return conn

    def _lost(self, conn: AsyncConnection) -> bool:
        if conn.closed or conn.invalidated:
            return True
        return self._driver is not None and bool(self._driver.is_closed())

    async def _drop(self, *, unlisten: bool = False) -> None:
        conn, driver, self._conn, self._driver = self._conn, self._driver, None, None
        if conn is None:
            return
        if unlisten and driver is not None and not driver.is_closed() and self._channels is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(_CLOSE_TIMEOUT):
                    for channel, listener in self._channels.items():
                        await driver.remove_listener(channel, listener)
        # Never back to the pool: its session was changed (application_name, LISTEN).
        await _discard(conn)


def _listener(on_payload: Callable[[str], None]) -> Callable[[object, int, str, str], None]:
    """An asyncpg listener calling ``on_payload`` with the notification's payload."""

    def listener(_conn: object, _pid: int, _channel: str, payload: str) -> None:
        on_payload(payload)

    return listener


async def _discard(conn: AsyncConnection) -> None:
    with contextlib.suppress(Exception):
        await conn.invalidate()
    with contextlib.suppress(Exception):
        await conn.close()
