"""The listener: one PostgreSQL ``LISTEN`` connection per process and database.

Every insert of runs notifies ``{prefix}new`` (on commit), and listening instances try a
claim at once; ``cancel_run`` notifies ``{prefix}cancel`` with ``owner:row``; each batch of
completions notifies ``{prefix}done`` with the run ids it touched, which wakes their
``wait_for_run`` callers.  All are shortcuts only: the poller, the heartbeat's cancel check
and the waiters' own re-checks remain.  Each time a channel is listened to again (after a
lost connection), its members are called once with an empty payload, for whatever was
announced while nobody listened.

All instances of a process (on one event loop) that listen to the same database share one
connection: each :meth:`Listener.join` adds its callbacks, and the connection closes when
the last one leaves.  It is the only connection jobsd holds for good, and it is named
``jobsd listener (pid N)`` in ``application_name``.  A lost connection (a restart,
``pg_terminate_backend``) is opened again at the next :meth:`Subscription.ensure`, which
each member's heartbeat calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import weakref
from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from ._store._connections import discard as _discard
from ._store._connections import retry_delay

_CLOSE_TIMEOUT = 2.0  # seconds closing may take (UNLISTEN) before the connection is dropped
_ENSURE_TIMEOUT = 10.0  # seconds connecting and subscribing may take before they are given up

Callback = Callable[[str], None]

_Loop = asyncio.AbstractEventLoop
_shared: weakref.WeakKeyDictionary[_Loop, dict[str, Listener]] = weakref.WeakKeyDictionary()


class Listener:
    """The shared ``LISTEN`` connection to one database, on one event loop."""

    def __init__(self, key: str, engine: AsyncEngine, *, own_engine: bool) -> None:
        self._key = key
        self._engine = engine
        self._own_engine = own_engine  # created for a ``listen=URL``: disposed at the end
        self._callbacks: dict[str, list[Callback]] = {}
        self._members = 0
        self._conn: AsyncConnection | None = None
        self._driver: Any = None
        self._listening: set[str] = set()
        self._listened: set[str] = set()  # channels listened to on this or an earlier connection
        self._lock = asyncio.Lock()
        self._failures = 0  # connection attempts refused in a row
        self._retry_at = 0.0

    @classmethod
    def join(
        cls,
        source: AsyncEngine | str,
        channels: Mapping[str, Callback],
        *,
        logger: logging.Logger,
        extra: Mapping[str, object],
    ) -> Subscription:
        """Subscribe ``channels`` on the listener of ``source`` (an engine, or a server URL)."""
        loop = asyncio.get_running_loop()
        listeners = _shared.setdefault(loop, {})
        key = source if isinstance(source, str) else source.url.render_as_string(hide_password=False)
        listener = listeners.get(key)
        if listener is None:
            if isinstance(source, str):
                listener = cls(key, create_async_engine(source, poolclass=NullPool), own_engine=True)
            else:
                listener = cls(key, source, own_engine=False)
            listeners[key] = listener
        listener._members += 1
        for channel, callback in channels.items():
            listener._callbacks.setdefault(channel, []).append(callback)
        return Subscription(listener, dict(channels), logger, dict(extra))

    @property
    def members(self) -> int:
        return self._members

    async def _ensure(self) -> None:
        async with self._lock, asyncio.timeout(_ENSURE_TIMEOUT):
            if self._conn is not None and self._lost():
                await self._drop()
            if self._conn is None:
                if time.monotonic() < self._retry_at:
                    return  # a server refusing connections sees one attempt per delay
                try:
                    await self._connect()
                except Exception:
                    self._failures += 1
                    self._retry_at = time.monotonic() + retry_delay(self._failures)
                    raise
                self._failures = 0
            driver = self._driver
            added = [c for c, on in self._callbacks.items() if on and c not in self._listening]
            for channel in added:
                try:
                    await driver.add_listener(channel, self._dispatch)
                except Exception as exc:  # the driver's own errors: the connection was lost
                    await self._drop()
                    raise ConnectionError(f"LISTEN failed: {exc}") from exc
                self._listening.add(channel)
            again = [c for c in added if c in self._listened]
            self._listened.update(added)
        # Listening again after a lost connection: what was announced meanwhile reached
        # nobody here, so the members look again now, as for an announcement that names
        # nothing in particular.  (The first time, they have just looked: they started.)
        for channel in again:
            self._dispatch(None, 0, channel, "")

    async def _connect(self) -> None:
        conn = await self._engine.connect()
        try:
            name = f"jobsd listener (pid {os.getpid()})"
            await conn.execute(select(func.set_config("application_name", name, False)))
            await conn.commit()
            self._driver = (await conn.get_raw_connection()).driver_connection
        except BaseException:
            await _discard(conn)
            raise
        self._conn = conn
        self._listening = set()

    def _dispatch(self, _conn: object, _pid: int, channel: str, payload: str) -> None:
        for callback in list(self._callbacks.get(channel, ())):
            callback(payload)

    def _lost(self) -> bool:
        conn = self._conn
        if conn is None or conn.closed or conn.invalidated:
            return True
        return self._driver is not None and bool(self._driver.is_closed())

    async def _leave(self, channels: Mapping[str, Callback]) -> None:
        for channel, callback in channels.items():
            callbacks = self._callbacks.get(channel, [])
            with contextlib.suppress(ValueError):
                callbacks.remove(callback)
        self._members -= 1
        if self._members > 0:
            return
        listeners = _shared.get(asyncio.get_running_loop(), {})
        if listeners.get(self._key) is self:
            del listeners[self._key]
        try:
            async with asyncio.timeout(_CLOSE_TIMEOUT):
                await self._lock.acquire()
        except TimeoutError:
            # An ensure() still holds the lock, waiting on a server that stopped answering.
            await self._drop()
        else:
            try:
                await self._drop(unlisten=True)
            finally:
                self._lock.release()
        if self._own_engine:
            await self._engine.dispose()

    async def _drop(self, *, unlisten: bool = False) -> None:
        conn, driver, self._conn, self._driver = self._conn, self._driver, None, None
        listening, self._listening = self._listening, set()
        if conn is None:
            return
        if unlisten and driver is not None and not driver.is_closed():
            with contextlib.suppress(Exception):
                async with asyncio.timeout(_CLOSE_TIMEOUT):
                    for channel in listening:
                        await driver.remove_listener(channel, self._dispatch)
        # Never back to the pool: its session was changed (application_name, LISTEN).
        await _discard(conn)


class Subscription:
    """One instance's membership of a :class:`Listener`."""

    def __init__(
        self,
        listener: Listener,
        channels: dict[str, Callback],
        logger: logging.Logger,
        extra: dict[str, object],
    ) -> None:
        self.listener = listener
        self._channels = channels
        self._log = logger
        self._extra = extra
        self._left = False

    async def ensure(self) -> None:
        """Be listening (connect again if the connection was lost); errors are logged: polling goes on.

        Returns at once while another member is already at it.
        """
        if self.listener._lock.locked():
            return
        try:
            await self.listener._ensure()
        except Exception as exc:
            if isinstance(exc, TimeoutError):
                await self.listener._drop()
            self._log.warning(
                "jobsd: cannot hold the LISTEN connection (polling only meanwhile): %r",
                exc,
                extra=self._extra,
            )

    async def leave(self) -> None:
        """Stop receiving; the last member to leave closes the connection."""
        if not self._left:
            self._left = True
            await self.listener._leave(self._channels)
