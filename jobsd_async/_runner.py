"""The running side of a started instance, and the order in which its parts start and stop.

Parts (each owns its state; the others ask it):

- :class:`~._completer.Completer` writes how attempts ended, in batches;
- :class:`~._pool.WorkerPool` runs attempts in ``workers`` slots;
- :class:`~._dispatcher.Dispatcher` polls and claims due rows into the pool;
- :class:`~._heartbeat.Heartbeat` beats (first in line for the instance's
  :class:`~._store._connections.Connections`, its connection budget), keeps the process's
  shared :class:`~._listener.Listener` listening, and applies remote cancels;
- :class:`~._resurrector.Resurrector` (and the pruner, with ``retention``) tidy up;
- :class:`~._periodic.Reconciler` keeps periodic jobs' chains as the code declares them;
- :class:`~._submission.Submitter` inserts new chains (for the facade and the reconciler).

Start: heartbeat (and its listener, so no wake-up is missed), tidying loops, dispatcher,
a first pass of the periodic reconciler.
Stop, in this order: stop claiming; stop tidying; drain the pool — the heartbeat still
beats, so no peer takes the draining instance for dead; flush completions; write the final
beat (``shutdown_at``); stop listening; close the instance's connections.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from ._chain import Outcome
from ._clock import DbClock
from ._completer import Completer
from ._config import Config
from ._dispatcher import Dispatcher
from ._heartbeat import Heartbeat
from ._jobs import Job
from ._listener import Listener, Subscription
from ._periodic import Reconciler
from ._pool import WorkerPool
from ._resurrector import Resurrector
from ._schedules import ScheduleFunc
from ._store import _browse, _migrations, _prune
from ._store._connections import Connections
from ._store._instances import Counters
from ._store._rows import Store
from ._submission import Submitter
from ._supervisor import Loops, ticking, waiting
from ._telemetry import Backlog, Telemetry
from ._waiters import Waiters


class Runner:
    """Executes runs for one started JobsD instance."""

    def __init__(
        self,
        *,
        config: Config,
        store: Store,
        clock: DbClock,
        instance_id: int,
        jobs: Mapping[str, Job[Any]],
        schedules: Mapping[str, ScheduleFunc],
        counters: Counters,
        waiters: Waiters,
        telemetry: Telemetry,
    ) -> None:
        self._config = config
        self._store = store
        self._id = instance_id
        self._log = config.logger
        self._extra = {"instance_id": instance_id}
        self.dispatcher = Dispatcher(
            config=config,
            store=store,
            clock=clock,
            instance_id=instance_id,
            jobs=jobs,
            schedules=schedules,
            counters=counters,
        )
        self.submitter = Submitter(
            store, self.dispatcher, clock, instance_id, schedules, telemetry, config.retention
        )
        self.periodic = Reconciler(
            config=config,
            store=store,
            instance_id=instance_id,
            jobs=jobs,
            submitter=self.submitter,
            dispatcher=self.dispatcher,
            on_chain_change=waiters.notify,
        )
        self.completer = Completer(
            config=config,
            store=store,
            clock=clock,
            instance_id=instance_id,
            schedules=schedules,
            counters=counters,
            on_follow_up=self.dispatcher.enqueue,
            waiters=waiters,
            revise=self.periodic.revise,
        )
        self.pool = WorkerPool(
            config=config,
            store=store,
            jobs=jobs,
            completer=self.completer,
            counters=counters,
            instance_id=instance_id,
            on_slot_free=self.dispatcher.wake_for_slot,
            leave_for_others=self.dispatcher.leave_for_others,
            telemetry=telemetry,
        )
        self._telemetry = telemetry
        self._backlog_key = (id(store.dialect.engine), store.tables.prefix)
        self._counting: asyncio.Task[None] | None = None
        self._backlog: Backlog | None = None
        self.dispatcher.pool = self.pool
        if not store.dialect.is_sqlite:
            store.dialect.connections = Connections(
                store.dialect.engine,
                config.max_connections,
                # Named for operators; not through PgBouncer, where a session setting would
                # stick to a server connection other clients share.
                name=f"jobsd #{instance_id}" if store.dialect.autocommit else None,
                autocommit=store.dialect.autocommit,
                logger=config.logger,
                extra=self._extra,
            )
        self._listener: Subscription | None = None
        listening = store.dialect.is_postgresql and config.listen is not False
        channels: dict[str, Callable[[str], None]] = {
            store.done_channel: lambda payload: self._runs_finished(waiters, payload)
        }
        if config.workers > 0:
            channels[store.new_channel] = lambda _: self.dispatcher.wake()
            channels[store.cancel_channel] = self._cancel_notice
        elif not store.dialect.autocommit and config.listen is True:
            # Producers listen only for their waiters, a shortcut: not on an engine set up
            # for PgBouncer (where LISTEN would subscribe a shared server connection).
            listening = False
        self._channels = channels if listening else None
        self.heartbeat = Heartbeat(
            config=config,
            store=store,
            clock=clock,
            instance_id=instance_id,
            counters=counters,
            running=self.pool.running,
            cancel=self.cancel_local,
            listener=None,
            on_newer_schema=self._outdated_by,
        )
        self._resurrector = Resurrector(
            config=config,
            store=store,
            completer=self.completer,
            counters=counters,
            instance_id=instance_id,
            is_running_here=self.pool.is_tracking,
        )
        self._tidying = Loops(f"#{instance_id}", log=config.logger, extra=self._extra)
        self.newer_schema: int | None = None  # the version of tables newer than this release

    @property
    def last_seen_at(self) -> datetime | None:
        return self.heartbeat.last_seen_at

    async def start(self) -> None:
        """Start every part; if one fails to start, what had started is stopped again."""
        try:
            if self._channels is not None:
                # A URL: e.g. the server itself when the engine goes through PgBouncer.
                listen = self._config.listen
                source = listen if isinstance(listen, str) else self._store.dialect.engine
                self._listener = Listener.join(source, self._channels, logger=self._log, extra=self._extra)
                self.heartbeat.listener = self._listener
            await self.heartbeat.start()
            stopping = self._tidying.stopping
            check = self._config.timeout_check
            self._tidying.spawn(
                "jobsd timeout checker",
                ticking(self._resurrector.pass_once, check, stopping),
                retry_max=check,
            )
            retention = self._config.retention
            if retention is not None:
                self._tidying.spawn(
                    "jobsd pruner", ticking(lambda: self._prune(retention), check, stopping), retry_max=check
                )
            self.dispatcher.start()
            if self.periodic.active:
                await self.periodic.reconcile()
                self._tidying.spawn(
                    "jobsd periodic reconciler",
                    waiting(self.periodic.reconcile, check, stopping),
                    retry_max=check,
                )
            self._backlog = Backlog(self._store.tables.prefix, asyncio.get_running_loop(), self._count)
            self._telemetry.watch_backlog(self._backlog_key, self._backlog)
        except BaseException:
            await self.stop()
            raise

    def _count(self) -> None:
        """Refresh the backlog gauges (a metric reader asked), unless a refresh is under way."""
        if self._counting is None or self._counting.done():
            self._counting = asyncio.get_running_loop().create_task(self._count_backlog())

    async def _count_backlog(self) -> None:
        if self._backlog is None:
            return
        try:
            async with self._store.dialect.reading(patient=True) as conn:
                self._backlog.by_job = await _browse.backlog_by_job(self._store, conn)
        except Exception as exc:
            self._log.warning("jobsd: counting the backlog for metrics failed: %s", exc, extra=self._extra)

    async def stop(self) -> None:
        """Stop claiming, drain running jobs (still beating), flush completions, beat the last time."""
        self._telemetry.watch_backlog(self._backlog_key, None)
        # (At once: with a database that stopped answering, each waits for its loops in vain.)
        await asyncio.gather(self.dispatcher.stop(), self._tidying.stop())
        await self.pool.drain()
        abandoned = await self.completer.close()
        if abandoned:
            self._log.error(
                "jobsd: %d completions could not be written before shutdown; "
                "their runs will be recovered by another instance's timeout check",
                abandoned,
                extra=self._extra,
            )
        await self.heartbeat.stop()
        if self._listener is not None:
            await self._listener.leave()
        if self._store.dialect.connections is not None:
            await self._store.dialect.connections.close()

    def _outdated_by(self, version: int) -> None:
        """Tables upgraded past this release: stop claiming (what runs here finishes)."""
        if self.newer_schema is None:
            self._log.error(
                "jobsd: the tables are at schema version %d, newer than version %d that this "
                "jobsd_async knows: this instance stops claiming runs; upgrade it",
                version,
                _migrations.SCHEMA_VERSION,
                extra=self._extra,
            )
            asyncio.get_running_loop().create_task(self.dispatcher.stop())
        self.newer_schema = version

    async def idle(self) -> bool:
        """Nothing runs here, every ending is written, and no row is due for this instance."""
        if not (self.pool.idle and self.completer.idle):
            return False
        return await self.dispatcher.nothing_due()

    def cancel_local(self, row_id: int) -> None:
        """Stop an attempt running here whose chain ``cancel_run`` cancelled."""
        self.pool.stop(row_id, Outcome.CANCELLED)

    def _cancel_notice(self, payload: str) -> None:
        owner, _, row_id = payload.partition(":")
        if owner == str(self._id) and row_id.isdigit():
            self.cancel_local(int(row_id))

    async def _prune(self, retention: float) -> None:
        deleted = await _prune.prune(self._store, older_than=retention)
        if deleted:
            self._log.info("jobsd: pruned %d finished runs", deleted, extra=self._extra)

    def runs_here(self, run_id: int) -> bool:
        """Whether the first attempt of ``run_id`` runs on this instance now (its completion
        is not written yet)."""
        return self.pool.is_tracking(run_id)

    def _runs_finished(self, waiters: Waiters, payload: str) -> None:
        # Not the waiters of runs whose attempt runs here: this instance's own completion of
        # it wakes them, with the row, and its announcement may arrive first.  (Were it
        # finished elsewhere, their re-checks notice it.)
        if payload:
            waiters.notify(run_id for run_id in _run_ids(payload) if not self.runs_here(run_id))
        else:  # listening again: what finished meanwhile was announced to nobody
            waiters.notify_all()
        self.dispatcher.runs_finished()


def _run_ids(payload: str) -> list[int]:
    """The run ids of a ``{prefix}done`` notification (anything else in it is ignored)."""
    return [int(part) for part in payload.split(",") if part.isdigit()]
