"""Submitting runs: validate, build each chain's first row, insert, queue locally.

Everything is validated before anything is written.  With the caller's connection
(transactional enqueue) the rows are inserted in the caller's transaction and queued here
only once it commits.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from ._clock import DbClock
from ._config import RunOptions, _Unset
from ._creator import Conn, RunRequest
from ._dispatcher import Dispatcher
from ._errors import StoreError, UnknownScheduleError
from ._jobs import Job
from ._retry import RetryPolicy
from ._schedules import ScheduleFunc, next_tick, resolve
from ._store import _claim, _create
from ._store._dialect import wrap_errors
from ._store._rows import Store
from ._telemetry import Telemetry

T = TypeVar("T")

# How far before a lost insert's first run its row may have been written, by the estimate
# of the database clock (whose error is a fraction of a round trip).
_LANDED_MARGIN = timedelta(seconds=10)
# A lost insert is looked for only this long (or the retention, if shorter): a row it wrote
# could be handed over, run, finished and pruned after that.
_RECHECK_MAX = 60.0


@dataclass(frozen=True, slots=True)
class Submitter:
    """What submissions need from a started instance."""

    store: Store
    dispatcher: Dispatcher
    clock: DbClock
    instance_id: int
    schedules: Mapping[str, ScheduleFunc]
    telemetry: Telemetry
    retention: float | None  # how long finished runs are kept (None: this instance prunes none)

    async def one(self, job: Job[Any], request: RunRequest, conn: Conn | None) -> int:
        """Insert one chain (or find the active one with its unique name); return its run id."""
        values, due = self.first_row(job, request)
        with self.telemetry.sending(job.name) as sending:
            values["trace_context"] = sending.carrier()
            run_id, inserted = await self._insert_one(job, request, values, due, conn)
            sending.sent([run_id])
        if inserted:
            self.telemetry.created(job.name, 1)
        return run_id

    async def _insert_one(
        self, job: Job[Any], request: RunRequest, values: dict[str, Any], due: datetime, conn: Conn | None
    ) -> tuple[int, bool]:
        store = self.store
        named_here = request.unique is None
        if conn is None and await self._starts_here(job, request, values["queue"]):
            # Shielded: once inserted, the row must reach its task even if our caller gives up
            # (whose failure, then, nobody is left to hear).
            task = asyncio.ensure_future(self._insert_and_start(values, named_here=named_here))
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
            return await asyncio.shield(task)
        if conn is None:
            insert = self._run_again_safely(
                named_here, lambda c, landed: _create.insert_unique(store, c, values, landed_since=landed)
            )
            run_id, inserted = await wrap_errors(
                store.dialect.retrying(insert, one_statement=named_here), "creating a run"
            )
            # Not inserted now under a name made here: the lost first insert had landed.
            inserted = inserted or named_here
        else:
            connection = await _connection(conn)
            run_id, inserted = await wrap_errors(
                _create.insert_unique(store, connection, values), "creating a run in the caller's transaction"
            )
        if inserted:
            self._queue(job, conn, [(run_id, due)])
        return run_id, inserted

    async def _starts_here(self, job: Job[Any], request: RunRequest, queue: str) -> bool:
        """Whether a run due now goes straight to a slot here (which is then reserved).

        Inserted already claimed, it needs no claim, no wake-up and no poll: one
        transaction less for every run an instance creates for itself (on the dialects
        where that is faster, see ``Dialect.direct_start``).
        """
        due_now = request.at is None and not request.delay and request.schedule is None
        return due_now and self.store.dialect.direct_start and await self.dispatcher.reserve(job.name, queue)

    async def start_here(self, job: Job[Any], request: RunRequest) -> int | None:
        """Insert a run already claimed by this instance and start it at once (for
        ``jobsd_async.testing.run_job``); None if it cannot (no free slot, or no RETURNING)."""
        values, _ = self.first_row(job, request)  # validated before a slot is taken
        if not self.store.dialect.insert_returning or not await self.dispatcher.reserve(
            job.name, values["queue"]
        ):
            return None
        with self.telemetry.sending(job.name) as sending:
            values["trace_context"] = sending.carrier()
            run_id, _ = await self._insert_and_start(values, named_here=request.unique is None)
            sending.sent([run_id])
        self.telemetry.created(job.name, 1)
        return run_id

    async def _insert_and_start(self, values: dict[str, Any], *, named_here: bool) -> tuple[int, bool]:
        """Insert a run claimed by this instance and start it; (run id, whether it was created).

        ``named_here``: its name is a fresh uuid, not a caller's unique name.  Such a run is
        inserted by one statement (on PostgreSQL without BEGIN and COMMIT).  After a lost
        answer the insert runs again, and must then find the row the first one may have
        written, whatever became of it since: any row of that name is that one (see
        ``insert_claimed``).  A unique name keeps the transaction: another chain of that
        name could not be told from a lost insert's.
        """
        store, dispatcher = self.store, self.dispatcher
        insert = self._run_again_safely(
            named_here,
            lambda c, landed: _create.insert_claimed(
                store, c, values, instance_id=self.instance_id, landed_since=landed
            ),
        )
        try:
            row, run_id = await wrap_errors(
                store.dialect.retrying(insert, one_statement=named_here), "creating a run"
            )
        except BaseException:
            dispatcher.unreserve()
            raise
        if row is None:
            dispatcher.unreserve()
            if not named_here:
                return run_id, False  # the unique name is taken: nothing was inserted
            # The first insert landed and its answer was lost.  Its row, if still claimed
            # here and never started, goes back to pending at once rather than when the
            # resurrector hands it over (which it still does if this fails): whoever holds
            # it now, it is the run.  (Not if it runs here: its queue was paused, and this
            # instance claimed it since.)
            if dispatcher.pool is not None and dispatcher.pool.is_tracking(run_id):
                return run_id, True
            with contextlib.suppress(StoreError):
                await wrap_errors(
                    store.dialect.retrying(
                        lambda c: _claim.hand_back(store, c, run_id, instance_id=self.instance_id, delay=0.0)
                    ),
                    "handing a run back",
                )
            return run_id, True
        if row.run_started_at is None:
            dispatcher.unreserve()  # its queue is paused: it was inserted pending
            return run_id, True
        if not dispatcher.start_claimed(row):  # the instance went down meanwhile
            await wrap_errors(
                store.dialect.retrying(
                    lambda c: _claim.hand_back(store, c, row.id, instance_id=self.instance_id, delay=0.0)
                ),
                "handing a run back",
            )
        return run_id, True

    def _run_again_safely(
        self, named_here: bool, insert: Callable[[AsyncConnection, datetime | None], Awaitable[T]]
    ) -> Callable[[AsyncConnection], Awaitable[T]]:
        """The work ``Dialect.retrying`` runs for ``insert(conn, landed_since)``: run again
        after a lost answer (autocommit: the first run may have landed), the insert of a run
        named here is told to look for the row the first one may have written."""
        store, clock = self.store, self.clock
        # How long its row can surely be found.
        within = _RECHECK_MAX if self.retention is None else min(_RECHECK_MAX, self.retention)
        since = clock.now() - _LANDED_MARGIN
        first_sent = clock.monotonic()
        attempts = 0

        async def work(conn: AsyncConnection) -> T:
            nonlocal attempts
            attempts += 1
            again = attempts > 1 and named_here and store.dialect.autocommit
            if again and clock.monotonic() - first_sent > within:
                # Its row may have run, finished and been pruned (retention) meanwhile.
                raise StoreError(
                    "creating a run: the answer to its insert was lost too long ago to tell "
                    "whether it landed (if it did, the run runs)"
                )
            return await insert(conn, since if again else None)

        return work

    async def many(self, job: Job[Any], requests: Sequence[RunRequest], conn: Conn | None) -> list[int]:
        """Insert one-off chains in one multi-row insert; all or nothing."""
        rows = [self.first_row(job, request) for request in requests]
        if not rows:
            return []
        store = self.store
        values = [v for v, _ in rows]
        with self.telemetry.sending(job.name, len(values)) as sending:
            for row in values:
                row["trace_context"] = sending.carrier()
            if conn is None:
                ids = await wrap_errors(
                    store.dialect.retrying(lambda c: _create.insert_many(store, c, values)), "creating runs"
                )
            else:
                connection = await _connection(conn)
                ids = await wrap_errors(
                    _create.insert_many(store, connection, values),
                    "creating runs in the caller's transaction",
                )
        self.telemetry.created(job.name, len(ids))
        self._queue(job, conn, [(run_id, due) for run_id, (_, due) in zip(ids, rows, strict=True)])
        return ids

    def _queue(self, job: Job[Any], conn: Conn | None, due_rows: list[tuple[int, datetime]]) -> None:
        dispatcher = self.dispatcher
        if not dispatcher.is_runnable_here(job.name):
            return

        def enqueue() -> None:
            for run_id, due in due_rows:
                dispatcher.enqueue(run_id, due)

        if conn is None:
            enqueue()
        else:  # the rows exist only once the caller commits; queue them then, not before
            _on_commit(conn, enqueue)

    def first_row(self, job: Job[Any], request: RunRequest) -> tuple[dict[str, Any], datetime]:
        """The chain's first row, and when this instance should try to claim it."""
        job.contract.check_args(job.name, request.args, request.kwargs)
        args_json, kwargs_json = job.contract.codec.encode(request.args, request.kwargs)
        options = request.options.over(job.options)
        dialect = self.store.dialect
        success_limit = request.limit if request.schedule is not None else 1
        run_at: Any
        clock_inputs: dict[str, float] = {}  # parameters of a run_at computed in SQL
        func = None
        if request.schedule is not None:
            func = resolve(request.schedule, self.schedules)
            if func is None:
                raise UnknownScheduleError(
                    f"schedule {request.schedule!r} is not registered on this instance"
                )
        if func is not None and request.schedule is not None and (success_limit is None or success_limit > 0):
            base = request.at or self.clock.now() + timedelta(seconds=request.delay)
            run_at = due = next_tick(request.schedule, func, base)
        elif request.at is not None:
            run_at = due = request.at
        else:
            due = self.clock.now() + timedelta(seconds=request.delay)
            # The database clock decides: a run due now is claimable at once wherever it lands.
            run_at = dialect.now()
            if request.delay:
                run_at = _create.clock_plus(self.store, _create.DELAY)
                clock_inputs[_create.DELAY] = request.delay
        values = _create.first_row_values(
            instance_id=self.instance_id,
            name=request.unique if request.unique is not None else uuid.uuid4().hex,
            job=job.name,
            job_args=args_json,
            job_kwargs=kwargs_json,
            delay=request.delay,
            run_at=run_at,
            created_at=dialect.now(),
            run_success_limit=success_limit,
            run_timeout=options.run_timeout,  # type: ignore[arg-type]
            retries_on_error_limit=options.retries_error_limit,  # type: ignore[arg-type]
            retries_on_timeout_limit=options.retries_timeout_limit,  # type: ignore[arg-type]
            retry_backoff=options.retry_backoff,  # type: ignore[arg-type]
            schedule=request.schedule,
            retry_policy=_retry_policy(options),
            queue=options.queue,  # type: ignore[arg-type]
            priority=options.priority,  # type: ignore[arg-type]
            limit_key=None
            if job.limits is None
            else job.limits.key_of(job.name, request.args, request.kwargs),
        )
        return {**values, **clock_inputs}, due


def _retry_policy(options: RunOptions) -> str | None:
    retry_on, no_retry_on = options.retry_on, options.no_retry_on
    assert not isinstance(retry_on, _Unset) and not isinstance(no_retry_on, _Unset)
    policy = RetryPolicy.of(retry_on, no_retry_on)
    return None if policy is None else policy.to_json()


async def _connection(conn: Conn) -> AsyncConnection:
    return await conn.connection() if isinstance(conn, AsyncSession) else conn


def _on_commit(conn: Conn, callback: Callable[[], None]) -> None:
    """Call ``callback`` once the caller's transaction on ``conn`` commits; never if it rolls back."""
    target: Any
    if isinstance(conn, AsyncSession):
        target, commit, rollback = conn.sync_session, "after_commit", "after_rollback"
    else:
        target, commit, rollback = conn.sync_connection, "commit", "rollback"
    loop = asyncio.get_running_loop()

    def forget(name: str, listener: Callable[..., None]) -> None:
        def remove() -> None:
            if event.contains(target, name, listener):
                event.remove(target, name, listener)

        # Later, not from inside the event being dispatched (its listeners are being iterated).
        loop.call_soon(remove)

    def committed(*_: object) -> None:
        forget(rollback, rolled_back)
        callback()

    def rolled_back(*_: object) -> None:
        forget(commit, committed)

    event.listen(target, commit, committed, once=True)
    event.listen(target, rollback, rolled_back, once=True)
