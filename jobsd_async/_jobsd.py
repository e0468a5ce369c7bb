"""JobsD: the facade users hold — configuration, registration, lifecycle and run submission."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import logging
from collections.abc import Iterable
from contextlib import AsyncExitStack
from datetime import datetime
from types import TracebackType
from typing import Any, ParamSpec

from sqlalchemy import MetaData
from sqlalchemy.ext.asyncio import AsyncEngine

from . import schema
from ._clock import Clock, DbClock, system_clock
from ._config import (
    DEFAULT_CANCEL_GRACE,
    DEFAULT_HEARTBEAT_INTERVAL,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_POLL_INTERVAL,
    DEFAULT_POLL_LIMIT,
    DEFAULT_RETRIES_ERROR_LIMIT,
    DEFAULT_RETRIES_TIMEOUT_LIMIT,
    DEFAULT_RUN_TIMEOUT,
    DEFAULT_SHUTDOWN_TIMEOUT,
    DEFAULT_TABLE_PREFIX,
    DEFAULT_TIMEOUT_CHECK,
    DEFAULT_WORKERS,
    Backoff,
    Duration,
    build_config,
)
from ._errors import JobsDStateError, SchemaError
from ._jobs import Job
from ._queues_api import QueuesAPI
from ._registry import Registrations
from ._runner import Runner
from ._runs import InstanceInfo
from ._runs_api import RunsAPI
from ._schedules import ScheduleFunc
from ._store import _instances, _read
from ._store._dialect import Dialect, wrap_errors
from ._store._rows import Store
from ._store._schema import build_tables
from ._submission import Submitter
from ._telemetry import Telemetry
from ._waiters import Waiters

__all__ = ("JobsD",)


P = ParamSpec("P")
_WAIT_POLL_MAX = 0.25  # seconds between checks of a chain finishing on another instance
_MAX_ID = 2**63 - 1  # the largest id a BIGINT column holds


class _State(enum.Enum):
    NEW = "new"
    STARTING = "starting"
    STARTED = "started"
    STOPPING = "stopping"
    STOPPED = "stopped"


class JobsD(Registrations, RunsAPI, QueuesAPI):
    """One member of a jobsd cluster: registers jobs and schedules, creates and runs runs.

    Use it as ``async with JobsD(engine) as jd:`` (or ``await jd.up()`` / ``await jd.down()``).
    Every instance sharing the database competes for the runs stored there.
    """

    def __init__(
        self,
        engine: AsyncEngine | None = None,
        *,
        workers: int = DEFAULT_WORKERS,
        poll_interval: Duration = DEFAULT_POLL_INTERVAL,
        poll_limit: int = DEFAULT_POLL_LIMIT,
        timeout_check: Duration = DEFAULT_TIMEOUT_CHECK,
        run_timeout: Duration | None = DEFAULT_RUN_TIMEOUT,
        retries_error_limit: int | None = DEFAULT_RETRIES_ERROR_LIMIT,
        retries_timeout_limit: int | None = DEFAULT_RETRIES_TIMEOUT_LIMIT,
        retry_backoff: Duration | Backoff | None = None,
        retention: Duration | None = None,
        auto_migrate: bool = True,
        table_prefix: str = DEFAULT_TABLE_PREFIX,
        heartbeat_interval: Duration = DEFAULT_HEARTBEAT_INTERVAL,
        shutdown_timeout: Duration | None = DEFAULT_SHUTDOWN_TIMEOUT,
        cancel_grace: Duration = DEFAULT_CANCEL_GRACE,
        listen: bool | str = True,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        queues: Iterable[str] | None = None,
        logger: logging.Logger | None = None,
        clock: Clock | None = None,
    ) -> None:
        if engine is not None and not isinstance(engine, AsyncEngine):
            raise TypeError(f"engine must be a SQLAlchemy AsyncEngine, got {engine!r}")
        self._config = build_config(
            workers=workers,
            poll_interval=poll_interval,
            poll_limit=poll_limit,
            timeout_check=timeout_check,
            run_timeout=run_timeout,
            retries_error_limit=retries_error_limit,
            retries_timeout_limit=retries_timeout_limit,
            retry_backoff=retry_backoff,
            retention=retention,
            auto_migrate=auto_migrate,
            table_prefix=table_prefix,
            heartbeat_interval=heartbeat_interval,
            shutdown_timeout=shutdown_timeout,
            cancel_grace=cancel_grace,
            listen=listen,
            max_connections=max_connections,
            queues=queues,
            logger=logger,
        )
        self._engine = engine
        self._tables = build_tables(self._config.table_prefix)
        self._local_clock = clock or system_clock
        self._clock = DbClock(self._local_clock)
        self._jobs: dict[str, Job[Any]] = {}
        self._schedules: dict[str, ScheduleFunc] = {}
        self._state = _State.NEW
        self._store: Store | None = None
        self._runner: Runner | None = None
        self._submitter: Submitter | None = None
        self._instance_id: int | None = None
        self._created_at: datetime | None = None
        self._shutdown_at: datetime | None = None
        self._counters = _instances.Counters()
        self._exit_stack: AsyncExitStack | None = None
        self._waiters = Waiters()
        self._telemetry = Telemetry()
        # up() and down() take turns: a down() during an up() stops what that up() started,
        # and a second down() returns when the first has finished.
        self._lifecycle = asyncio.Lock()

    # ------------------------------------------------------------------ properties

    @property
    def engine(self) -> AsyncEngine:
        """The SQLAlchemy engine given at construction or to use_engine() (never disposed by JobsD)."""
        if self._engine is None:
            raise JobsDStateError("JobsD has no engine; pass one to JobsD(engine) or jd.use_engine(engine)")
        return self._engine

    def use_engine(self, engine: AsyncEngine, *, table_prefix: str | None = None) -> None:
        """Use ``engine`` (and ``table_prefix``) from the next ``up()`` on.

        For a module-level JobsD whose engine the app builds later (an app factory, or a test
        with a database of its own); only while the instance is not running.
        """
        self._require_registering("use_engine")
        if not isinstance(engine, AsyncEngine):
            raise TypeError(f"engine must be a SQLAlchemy AsyncEngine, got {engine!r}")
        if table_prefix is not None:
            self._reconfigure(table_prefix=table_prefix)
            self._tables = build_tables(self._config.table_prefix)
        self._engine = engine

    @property
    def is_running(self) -> bool:
        """True between a successful ``up()`` and the start of ``down()``."""
        return self._state is _State.STARTED

    @property
    def logger(self) -> logging.Logger:
        """The logger this instance writes to (``jobsd_async`` unless one was given)."""
        return self._config.logger

    @property
    def metadata(self) -> MetaData:
        """SQLAlchemy ``MetaData`` holding ``{prefix}runs`` and ``{prefix}instances``."""
        return self._tables.metadata

    @property
    def instance_id(self) -> int:
        """This instance's id in ``{prefix}instances``; known once ``up()`` has run."""
        if self._instance_id is None:
            raise JobsDStateError(
                "JobsD has no instance id before up(); use `async with JobsD(engine) as jd:` "
                "or `await jd.up()` first"
            )
        return self._instance_id

    @property
    def instance(self) -> InstanceInfo:
        """A snapshot of this instance's row and counters."""
        instance_id = self.instance_id
        assert self._created_at is not None
        config = self._config
        c = self._counters
        return InstanceInfo(
            id=instance_id,
            workers=config.workers,
            supported_jobs=tuple(self._jobs),
            supported_schedules=tuple(self._schedules),
            poll_interval=config.poll_interval,
            poll_limit=config.poll_limit,
            timeout_check=config.timeout_check,
            heartbeat_interval=config.heartbeat_interval,
            run_timeout=config.run_timeout,
            retries_on_error_limit=config.retries_error_limit,
            retries_on_timeout_limit=config.retries_timeout_limit,
            runs_started=c.runs_started,
            runs_rescheduled=c.runs_rescheduled,
            runs_timed_out=c.runs_timed_out,
            runs_timed_out_res=c.runs_timed_out_res,
            runs_errors=c.runs_errors,
            last_seen_at=self._runner.last_seen_at if self._runner else None,
            shutdown_at=self._shutdown_at,
            created_at=self._created_at,
        )

    def _reconfigure(self, **changes: Any) -> None:
        """Change settings before ``up()`` (the command line's overrides), validated again."""
        self._require_registering("reconfiguring")
        settings = {f.name: getattr(self._config, f.name) for f in dataclasses.fields(self._config)}
        self._config = build_config(**{**settings, **changes})

    async def _idle(self) -> bool:
        """Nothing runs here, nothing is being written, and nothing is due for this instance."""
        runner = self._runner
        return runner is not None and await runner.idle()

    def _require_registering(self, what: str) -> None:
        if self._state not in (_State.NEW, _State.STOPPED):
            raise JobsDStateError(
                f"{what}() must be called before up() (or after down()); register everything first"
            )

    # ------------------------------------------------------------------ lifecycle

    async def up(self) -> None:
        """Create or upgrade the tables, write the instance row and start the background loops.

        After ``down()``, ``up()`` starts the same object again as a new instance (a new
        instance row and id, counters from zero); registrations and ``Job`` handles stay valid.
        """
        if self._state not in (_State.NEW, _State.STOPPED):
            raise JobsDStateError(
                f"JobsD is {self._state.value}; call up() once, and again only after down()"
            )
        if self._engine is None:
            raise JobsDStateError("JobsD has no engine; pass one to JobsD(engine) or jd.use_engine(engine)")
        self._state = _State.STARTING
        # Per start: an instance of its own (and a lock of this event loop: a module-level
        # JobsD may serve one app lifespan, then another on a new loop).
        self._lifecycle = asyncio.Lock()
        self._counters = _instances.Counters()
        self._shutdown_at = None
        self._clock = DbClock(self._local_clock)
        async with self._lifecycle:
            try:
                await self._start()
            except BaseException:
                self._state = _State.STOPPED
                self._runner = None
                self._submitter = None
                raise
            self._state = _State.STARTED
        self.logger.info(
            "jobsd: instance %s up (%d workers, jobs: %s)",
            self._instance_id,
            self._config.workers,
            ", ".join(self._jobs) or "none",
            extra={"instance_id": self._instance_id},
        )

    async def _start(self) -> None:
        async with AsyncExitStack() as stack:
            store = Store(await wrap_errors(Dialect.detect(self.engine), "connecting"), self._tables)
            await wrap_errors(self._prepare_schema(store), "preparing the tables")
            await wrap_errors(self._sample_clock(store), "reading the database clock")
            fingerprints = {name: job.contract.fingerprint for name, job in self._jobs.items()}
            periodic = [name for name, job in self._jobs.items() if job.periodic is not None]
            limits = {
                name: None if job.limits is None else job.limits.spec for name, job in self._jobs.items()
            }
            self._instance_id = await wrap_errors(
                store.dialect.retrying(
                    lambda conn: _instances.register(
                        store, conn, self._config, fingerprints, list(self._schedules), periodic, limits
                    )
                ),
                "registering the instance",
            )
            self._created_at = self._clock.now()
            self._store = store
            runner = Runner(
                config=self._config,
                store=store,
                clock=self._clock,
                instance_id=self._instance_id,
                jobs=self._jobs,
                schedules=self._schedules,
                counters=self._counters,
                waiters=self._waiters,
                telemetry=self._telemetry,
            )
            await wrap_errors(runner.start(), "starting")
            stack.push_async_callback(self._stopped)
            stack.push_async_callback(runner.stop)
            self._runner = runner
            self._submitter = runner.submitter
            self._exit_stack = stack.pop_all()

    async def _stopped(self) -> None:
        self._shutdown_at = self._clock.now()

    async def down(self, *, graceful: bool = True) -> None:
        """Stop: let running jobs finish for ``shutdown_timeout``, then kill and hand them over.

        Idempotent; a ``down()`` during ``up()`` waits for it and then stops what it started.
        Killed runs get a follow-up row that another instance runs.  With ``graceful=False``
        running jobs are killed and handed over at once, also by a ``down()`` already under
        way (a second SIGTERM).
        """
        if not graceful and self._runner is not None:
            self._runner.pool.hurry()
        async with self._lifecycle:
            if self._state is not _State.STARTED:
                if self._state is _State.NEW:
                    self._state = _State.STOPPED
                return
            self._state = _State.STOPPING
            self.logger.info(
                "jobsd: instance %s going down", self._instance_id, extra={"instance_id": self._instance_id}
            )
            assert self._exit_stack is not None
            closing = asyncio.ensure_future(self._exit_stack.aclose())
            try:
                await asyncio.shield(closing)
            except asyncio.CancelledError:
                # The caller gave up waiting: hand running jobs over at once, and still finish
                # (an instance half down would beat forever and never write shutdown_at).
                if self._runner is not None:
                    self._runner.pool.hurry()
                while not closing.done():
                    with contextlib.suppress(asyncio.CancelledError):
                        await asyncio.shield(closing)
                raise
            finally:
                if closing.done():
                    self._state = _State.STOPPED
                    self._waiters.notify_all()
        self.logger.info(
            "jobsd: instance %s down", self._instance_id, extra={"instance_id": self._instance_id}
        )

    async def __aenter__(self) -> JobsD:
        await self.up()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.down()

    async def _prepare_schema(self, store: Store) -> None:
        """Upgrade the tables (``auto_migrate``) or insist they are current; check the rest."""
        prefix = self._config.table_prefix
        if self._config.auto_migrate:
            async with store.dialect.transaction() as conn:
                await conn.run_sync(schema._upgrade_locked, prefix, schema.CURRENT_VERSION)
        else:
            async with store.dialect.reading() as conn:
                await conn.run_sync(schema._check, self._tables)

    async def _sample_clock(self, store: Store) -> None:
        async with store.dialect.reading() as conn:
            await _read.sample_clock(store, conn, self._clock)

    def _require_started(self) -> Submitter:
        if self._state is not _State.STARTED or self._submitter is None:
            if self._state in (_State.STOPPING, _State.STOPPED):
                raise JobsDStateError("JobsD is down; start it again with `await jd.up()` to submit runs")
            raise JobsDStateError(
                "JobsD is not running; use `async with JobsD(engine) as jd:` or `await jd.up()` first"
            )
        if self._runner is not None and self._runner.newer_schema is not None:
            raise SchemaError(
                f"the tables are now at schema version {self._runner.newer_schema}, newer than "
                f"version {schema.CURRENT_VERSION} that this jobsd_async knows; upgrade it"
            )
        return self._submitter

    def _require_store(self) -> Store:
        if self._store is None:
            raise JobsDStateError(
                "JobsD has not been started; use `async with JobsD(engine) as jd:` or `await jd.up()` first"
            )
        return self._store
