"""Operating a cluster from outside it: what the command line and the dashboard do.

An :class:`Admin` works on a database and a table prefix without being an instance: it
registers nothing and runs nothing.  It lists and shows runs, cancels and retries them,
lists instances, prunes history and checks health.  A cancel reaches the instance running
the run like ``JobsD.cancel_run`` (PostgreSQL ``NOTIFY``, else its next heartbeat); a
retry inserts a new chain that any instance with the job runs.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from ._codec import decode_result
from ._config import JobLimits, check_name, check_table_prefix
from ._errors import RunNotFoundError
from ._queues_api import set_paused
from ._runs import RunState, RunStatus
from ._store import _browse, _cancel, _create, _limits, _migrations, _prune, _queues, _stats
from ._store._browse import InstanceRecord, JobBacklog, RunFilter
from ._store._dialect import Dialect, wrap_errors
from ._store._queues import QueueInfo
from ._store._rows import RunRow, Store
from ._store._schema import build_tables
from ._store._stats import Activity

OPERATOR = 0  # ``created_by`` of runs an operator created (no instance has id 0)
_MAX_ID = 2**63 - 1
RETRYABLE = (RunStatus.FAILED, RunStatus.TIMED_OUT, RunStatus.CANCELLED)


@dataclass(frozen=True, slots=True)
class Chain:
    """A run: its state (from its latest row) and every row of it, oldest first."""

    state: RunState
    rows: list[RunRow]


class Admin:
    """Operations on the runs and instances of one table prefix."""

    def __init__(self, engine: AsyncEngine, *, table_prefix: str) -> None:
        self.engine = engine
        self.tables = build_tables(check_table_prefix(table_prefix))
        self._store: Store | None = None

    async def store(self) -> Store:
        if self._store is None:
            dialect = await wrap_errors(Dialect.detect(self.engine), "connecting")
            self._store = Store(dialect, self.tables)
        return self._store

    async def _read(self, what: str, work: Any) -> Any:
        store = await self.store()

        async def run() -> Any:
            async with store.dialect.reading() as conn:
                return await work(store, conn)

        return await wrap_errors(run(), what)

    # ---------------------------------------------------------------- runs

    def state(self, row: RunRow) -> RunState:
        try:
            result = decode_result(row.run_result)
        except Exception as exc:
            result = f"<undecodable stored result: {exc!r}>"
        return RunState.of_row(row, result, loader=self.run_state)

    async def run_state(self, run_id: int) -> RunState:
        """The state of a run (its chain's latest row); RunNotFoundError if none."""
        return (await self.chain(run_id)).state

    async def list_runs(self, filters: RunFilter, *, limit: int = 50) -> list[RunState]:
        """Runs matching ``filters``, newest first, at most ``limit``."""
        rows = await self._read(
            "listing runs", lambda store, conn: _browse.latest_rows(store, conn, filters, limit=limit)
        )
        return [self.state(row) for row in rows]

    async def chain(self, run_id: int) -> Chain:
        """A run and every attempt of it; RunNotFoundError if there is no such run."""
        rows: list[RunRow] = []
        if 0 < run_id <= _MAX_ID:
            rows = await self._read(
                "reading a run", lambda store, conn: _browse.chain_rows(store, conn, run_id)
            )
        if not rows or rows[0].id != run_id:
            raise RunNotFoundError(f"no run with id {run_id}")
        return Chain(self.state(rows[-1]), rows)

    async def cancel(self, run_id: int) -> bool:
        """Cancel a run's chain; False if it had already finished (see ``JobsD.cancel_run``)."""
        if not 0 < run_id <= _MAX_ID:
            raise RunNotFoundError(f"no run with id {run_id}")
        store = await self.store()
        outcome, _ = await wrap_errors(
            store.dialect.retrying(lambda conn: _cancel.request_cancel(store, conn, run_id)),
            "cancelling a run",
        )
        if outcome is _cancel.CancelOutcome.NOT_FOUND:
            raise RunNotFoundError(f"no run with id {run_id}")
        return outcome is not _cancel.CancelOutcome.ALREADY_FINISHED

    async def retry(self, run_id: int) -> int:
        """Start a new chain with the job, arguments and options of a run that ended failed,
        timed out or cancelled; returns its run id.

        The new chain takes the old one's name as its unique name, so retrying twice gives
        the same new run while it is pending or running.
        """
        chain = await self.chain(run_id)
        if chain.state.status not in RETRYABLE:
            raise ValueError(
                f"run {run_id} is {chain.state.status.value}: only a run that ended failed, "
                "timed out or cancelled can be retried"
            )
        first = chain.rows[0]
        store = await self.store()
        values = _create.first_row_values(
            instance_id=OPERATOR,
            name=first.name,
            job=first.job,
            job_args=first.job_args or "[]",
            job_kwargs=first.job_kwargs or "{}",
            delay=0.0,
            run_at=store.dialect.now(),
            created_at=store.dialect.now(),
            run_success_limit=first.run_success_limit,
            run_timeout=first.run_timeout,
            retries_on_error_limit=first.retries_on_error_limit,
            retries_on_timeout_limit=first.retries_on_timeout_limit,
            retry_backoff=None,
            schedule=first.schedule,
            retry_policy=first.retry_policy,
            queue=first.queue,
            priority=first.priority,
            limit_key=first.limit_key,
        )
        values["retry_backoff"], values["retry_backoff_cap"] = first.retry_backoff, first.retry_backoff_cap
        new_id, _ = await wrap_errors(
            store.dialect.retrying(lambda conn: _create.insert_unique(store, conn, values)), "retrying a run"
        )
        return int(new_id)

    async def create(self, job: str, args_json: str, kwargs_json: str, *, name: str | None = None) -> int:
        """Insert a one-off run of ``job`` (for the dashboard's "enqueue"); returns its run id."""
        store = await self.store()
        unique = name if name is not None else uuid.uuid4().hex
        values = _create.first_row_values(
            instance_id=OPERATOR,
            name=unique,
            job=job,
            job_args=args_json,
            job_kwargs=kwargs_json,
            delay=0.0,
            run_at=store.dialect.now(),
            created_at=store.dialect.now(),
            run_success_limit=1,
            run_timeout=None,
            retries_on_error_limit=None,
            retries_on_timeout_limit=None,
            retry_backoff=None,
            schedule=None,
        )
        run_id, _ = await wrap_errors(
            store.dialect.retrying(lambda conn: _create.insert_unique(store, conn, values)), "creating a run"
        )
        return int(run_id)

    async def run_now(self, run_id: int) -> bool:
        """Make a run's pending attempt due now; False if it is not pending and due later."""
        chain = await self.chain(run_id)
        store = await self.store()
        latest = chain.rows[-1].id
        return bool(
            await wrap_errors(
                store.dialect.retrying(lambda conn: _stats.run_now(store, conn, latest)),
                "making a run due now",
            )
        )

    async def upcoming(self, *, limit: int = 50) -> list[RunRow]:
        """Pending attempts not due yet, soonest first."""
        return list(
            await self._read(
                "listing upcoming runs", lambda store, conn: _browse.upcoming_rows(store, conn, limit=limit)
            )
        )

    async def activity(self, window: timedelta) -> Activity:
        """What finished within ``window``: by job and outcome, per minute, start delays."""
        return await self._read(  # type: ignore[no-any-return]
            "reading activity", lambda store, conn: _stats.activity(store, conn, window=window)
        )

    async def backlog(self) -> dict[str, JobBacklog]:
        """Pending and running runs by job, with each job's oldest due pending run's age."""
        return await self._read("reading the backlog", _browse.backlog_by_job)  # type: ignore[no-any-return]

    # ---------------------------------------------------------------- queues

    async def pause_queue(self, queue: str) -> bool:
        """Pause ``queue`` across the cluster; False if it already was."""
        return await set_paused(await self.store(), check_name("queue", queue), paused=True)

    async def resume_queue(self, queue: str) -> bool:
        """Resume ``queue``; False if it was not paused."""
        return await set_paused(await self.store(), check_name("queue", queue), paused=False)

    async def queues(self) -> list[QueueInfo]:
        """The queues that hold unfinished runs or have been paused, by name."""
        return list(await self._read("listing queues", _queues.list_queues))

    async def limits(self) -> dict[str, JobLimits]:
        """The limits in force, by job."""
        return await self._read(  # type: ignore[no-any-return]
            "reading limits", lambda store, conn: _limits.read(store, conn, None)
        )

    # ---------------------------------------------------------------- instances and upkeep

    async def instances(self, *, include_gone: bool = False) -> list[InstanceRecord]:
        """The live instances, newest first (with ``include_gone``, every instance row)."""
        return list(
            await self._read(
                "listing instances",
                lambda store, conn: _browse.instance_records(store, conn, include_gone=include_gone),
            )
        )

    async def prune(self, older_than: float) -> int:
        """Delete chains finished more than ``older_than`` seconds ago (see ``JobsD.prune``)."""
        store = await self.store()
        return int(await wrap_errors(_prune.prune(store, older_than=older_than), "pruning"))

    async def now(self) -> datetime:
        """The database clock."""
        result: datetime = await self._read("reading the clock", _browse.database_now)
        return result

    async def schema_version(self) -> int:
        """The schema version of the tables (0: none)."""

        async def read(store: Store, conn: Any) -> int:
            return int(await conn.run_sync(_migrations.version_of, store.tables))

        return int(await self._read("reading the schema version", read))

    async def ping(self) -> None:
        """Raise StoreError unless the database answers."""
        await self.now()
