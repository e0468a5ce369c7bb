"""Live updates: a feed that tells the dashboard's pages when the cluster's state changed.

One feed per dashboard, shared by every open page (server-sent events).  While anyone
listens, it compares a small fingerprint of the tables every ``interval`` (the newest run,
running runs, the latest completion, the latest queue change); on PostgreSQL it also
LISTENs to the instances' announcements of new and finished runs and checks at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from sqlalchemy import func, select

from .._admin import Admin
from .._store._rows import Store

_log = logging.getLogger("jobsd_async.dashboard")


class ChangeFeed:
    """Versions of the cluster's state, counted up whenever it changes."""

    def __init__(self, admin: Admin, *, interval: float) -> None:
        self._admin = admin
        self._interval = interval
        self._version = 0
        self._changed = asyncio.Event()
        self._listeners = 0
        self._task: asyncio.Task[None] | None = None
        self._poke = asyncio.Event()

    @property
    def version(self) -> int:
        return self._version

    @contextlib.asynccontextmanager
    async def listening(self) -> AsyncIterator[None]:
        """While inside, the feed watches the database."""
        self._listeners += 1
        self._ensure_watching()
        try:
            yield
        finally:
            self._listeners -= 1
            task = self._task
            if not self._listeners and task is not None:
                self._task = None
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
                # Someone may have started listening while the watcher was stopping.
                if self._listeners:
                    self._ensure_watching()

    def _ensure_watching(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._watch(), name="jobsd dashboard feed")

    async def next_change(self, seen: int, timeout: float) -> int:
        """The version after ``seen``, once there is one (or ``seen`` after ``timeout``)."""
        if self._version != seen:
            return self._version
        changed = self._changed
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(changed.wait(), timeout)
        return self._version

    def _bump(self) -> None:
        self._version += 1
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def _watch(self) -> None:
        while True:
            try:
                store = await self._admin.store()
                break
            except Exception as exc:  # the database is down: try again, the pages wait
                _log.warning("jobsd dashboard: cannot reach the database: %s", exc)
                await asyncio.sleep(self._interval * 5)
        last: tuple[Any, ...] | None = None
        async with contextlib.AsyncExitStack() as stack:
            if store.dialect.is_postgresql:
                try:
                    await stack.enter_async_context(self._notifications(store))
                except Exception as exc:  # polling still works
                    _log.warning("jobsd dashboard: not listening for notifications: %s", exc)
            while True:
                current: tuple[Any, ...] | None
                try:
                    current = await self._fingerprint(store)
                except Exception as exc:
                    _log.warning("jobsd dashboard: cannot read the state: %s", exc)
                    current = last
                if last is not None and current != last:
                    self._bump()
                last = current
                self._poke.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._poke.wait(), self._interval)

    @contextlib.asynccontextmanager
    async def _notifications(self, store: Store) -> AsyncIterator[None]:
        async with store.dialect.engine.connect() as conn:
            raw = await conn.get_raw_connection()
            driver: Any = raw.driver_connection
            channels = (store.new_channel, store.done_channel)

            def poke(*_: object) -> None:
                self._poke.set()

            for channel in channels:
                await driver.add_listener(channel, poke)
            try:
                yield
            finally:
                for channel in channels:
                    with contextlib.suppress(Exception):
                        await driver.remove_listener(channel, poke)

    async def _fingerprint(self, store: Store) -> tuple[Any, ...]:
        runs, queues = store.runs, store.queues
        running = runs.c.run_started_at.is_not(None) & runs.c.run_completed_at.is_(None)
        parts = (
            select(func.max(runs.c.id)),
            select(func.count()).select_from(runs).where(running),
            select(func.max(runs.c.run_completed_at)),
            select(func.max(queues.c.updated_at)),
        )
        async with store.dialect.reading() as conn:  # one round trip
            found = (await conn.execute(select(*(part.scalar_subquery() for part in parts)))).one()
        return tuple(found)
