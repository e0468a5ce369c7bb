"""The heartbeat: keeps this instance alive in the database, and brings it news.

Every ``heartbeat_interval`` it writes ``last_seen_at`` and the counters (first in line for
the instance's connections), makes sure the PostgreSQL listener is listening, closes
connections left unused, stops attempts running here whose chain a ``cancel_run``
on another instance flagged, and notices tables upgraded past its release.  It beats until
the instance's very end: while a shutdown drains running jobs and writes their completions
the instance is alive, and its last beat records ``shutdown_at``.  A failed beat is tried
again within a fraction of the interval, so a peer never takes a live instance for dead
over one lost beat.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from datetime import datetime

from ._clock import DbClock
from ._config import Config
from ._listener import Subscription
from ._store import _cancel, _instances, _migrations
from ._store._connections import Connections
from ._store._instances import Counters
from ._store._rows import Store
from ._supervisor import Loops, ticking

_FINAL_BEAT = 5.0  # seconds the last beat (shutdown_at) may take


class Heartbeat:
    def __init__(
        self,
        *,
        config: Config,
        store: Store,
        clock: DbClock,
        instance_id: int,
        counters: Counters,
        running: Callable[[], list[int]],
        cancel: Callable[[int], object],
        listener: Subscription | None,
        on_newer_schema: Callable[[int], None],
    ) -> None:
        self._config = config
        self._store = store
        self._clock = clock
        self._id = instance_id
        self._counters = counters
        self._running = running
        self._cancel = cancel
        self.listener = listener
        self._connections: Connections | None = store.dialect.connections
        self._on_newer_schema = on_newer_schema
        self._log = config.logger
        self._loops = Loops(f"#{instance_id}", log=config.logger, extra={"instance_id": instance_id})
        self.last_seen_at: datetime | None = None
        self._listening: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start listening (on PostgreSQL) and beating."""
        if self.listener is not None:
            await self.listener.ensure()
        # Retries after a failed beat come well within the interval (three make a death).
        interval = self._config.heartbeat_interval
        step = ticking(self._tick, interval, self._loops.stopping)
        self._loops.spawn("jobsd heartbeat", step, retry_max=interval / 4)

    async def _tick(self) -> None:
        await self.beat()  # first: nothing else may delay it
        self._keep_listening()
        if self._connections is not None:
            await self._connections.trim()
        await self._check_cancels()
        await self._check_schema()

    def _keep_listening(self) -> None:
        """Reconnect the listener if it was lost, beside the beats (it may take seconds)."""
        if self.listener is not None and (self._listening is None or self._listening.done()):
            self._listening = asyncio.get_running_loop().create_task(self.listener.ensure())

    async def _check_schema(self) -> None:
        """Notice tables upgraded past what this instance knows (a newer release deployed)."""
        tables = self._store.tables
        version = await self._store.dialect.retrying(
            lambda conn: _migrations.latest_version(conn, tables), urgent=True, patient=True
        )
        if version > _migrations.SCHEMA_VERSION:
            self._on_newer_schema(version)

    async def stop(self) -> None:
        """Stop beating and write the last beat (``shutdown_at``)."""
        await self._loops.stop()
        if self._listening is not None:
            self._listening.cancel()
            await asyncio.wait([self._listening], timeout=_FINAL_BEAT)
        try:
            # Bounded: a database that stopped answering must not hold the shutdown forever
            # (peers then take the instance for dead three beats after its last one).
            async with asyncio.timeout(_FINAL_BEAT):
                await self.beat(shutdown=True)
        except Exception as exc:
            self._log.error(
                "jobsd: could not record the shutdown of instance %s: %r",
                self._id,
                exc,
                extra={"instance_id": self._id},
            )

    async def beat(self, *, shutdown: bool = False) -> None:
        counters = dataclasses.replace(self._counters)
        store = self._store
        await store.dialect.retrying(
            lambda conn: _instances.beat(store, conn, self._id, counters, shutdown=shutdown),
            urgent=True,
            patient=True,
        )
        self.last_seen_at = self._clock.now()

    async def _check_cancels(self) -> None:
        """Stop attempts running here whose chain was cancelled from another instance."""
        running = self._running()
        if not running:
            return
        flagged = await self._store.dialect.retrying(
            lambda conn: _cancel.cancel_requested(self._store, conn, running), urgent=True, patient=True
        )
        for row_id in flagged:
            self._cancel(row_id)
