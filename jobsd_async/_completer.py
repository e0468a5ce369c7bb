"""Writing how attempts ended: plan each follow-up, then write them in batches until they land.

Used for the attempts this instance runs and for the rows its resurrector takes over.
A completion arriving while no batch is being written is written at once (with those
ending in the same turn of the event loop); while one is, completions arriving within
``_FLUSH_DELAY`` share the next transaction, up to ``_BATCH_MAX``
of them and ``_BATCH_CHARS`` characters of text (arguments copied to follow-ups, results,
errors), so a batch stays well inside a server's packet limit.

A batch that fails is not retried blindly:

- if the database is away, busy (a lock timeout) or read-only for now, the whole batch
  waits with backoff (50 ms doubling to 5 s) and is tried again, until it lands;
- if the database refuses the data (a value out of range, text it cannot store: see
  ``Dialect.refuses``), the batch is split in halves until every other completion has
  landed, and a single refused completion is written *degraded* — as a failure that says
  why its outcome could not be stored, then, if even that is refused, without its
  follow-up.  Nothing is dropped, and no refused completion is retried forever.

A row that turns out to be closed already (resurrected elsewhere) has its late ending
discarded.  A crash before a batch is written leaves its rows running: a timeout check
re-runs them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta

from ._attempt import Ending
from ._chain import FollowUp, Outcome, describe, plan_follow_up
from ._clock import DbClock
from ._config import MAX_DURATION, Config
from ._schedules import ScheduleFunc, next_tick, resolve
from ._store import _complete
from ._store._complete import Closing, Completed, Completion
from ._store._instances import Counters
from ._store._rows import RunRow, Store
from ._supervisor import consume
from ._text import MAX_ERROR_LENGTH, storable
from ._waiters import Waiters

_RETRY_FIRST = 0.05  # seconds before the first retry of a batch while the database is away
_RETRY_MAX = 5.0  # seconds, the backoff cap
_BATCH_MAX = 200  # completions per transaction
_BATCH_CHARS = 1_000_000  # characters of stored text per transaction (one bigger item goes alone)
_FLUSH_DELAY = 0.002  # seconds a completion waits for others to share its transaction
_CLOSE_TIMEOUT = 10.0  # seconds close() waits for buffered completions to be written
_CANCEL_WAIT = 2.0  # seconds close() then waits for a cancelled write to end
_ITEM_OVERHEAD = 500  # characters a completion costs besides its texts
_REFUSALS = 3  # failed writes of one completion alone (with backoff) before it is made simpler

Written = Completed | None
"""What a completion did: its row closed (and follow-up), or None if the row was closed elsewhere."""


class Reported:
    """What became of a completion, handed to a callback the moment it is known.

    It answers like a done future (``cancelled``, ``exception``, ``result``), without a
    future per completion nor a turn of the event loop to run its callback.
    """

    __slots__ = ("_call", "_cancelled", "_done", "_exception", "_result")

    def __init__(self, call: Callable[[Reported], object]) -> None:
        self._call = call
        self._done = self._cancelled = False
        self._result: Written = None
        self._exception: BaseException | None = None

    def done(self) -> bool:
        return self._done

    def cancelled(self) -> bool:
        return self._cancelled

    def exception(self) -> BaseException | None:
        return self._exception

    def result(self) -> Written:
        return self._result

    def set_result(self, written: Written) -> None:
        if not self._done:
            self._result = written
            self._report()

    def set_exception(self, exc: BaseException) -> None:
        if not self._done:
            self._exception = exc
            self._report()

    def cancel(self) -> None:
        if not self._done:  # (as a future's: no effect once done)
            self._cancelled = True
            self._report()

    def _report(self) -> None:
        self._done = True
        try:
            self._call(self)
        except Exception as exc:  # as a future's callback would: reported, and the writer goes on
            asyncio.get_running_loop().call_exception_handler(
                {"message": "jobsd: a completion's callback failed", "exception": exc}
            )


@dataclasses.dataclass(slots=True)
class _Pending:
    item: Completion
    ending: Ending
    future: asyncio.Future[Written] | Reported
    size: int
    degraded: int = 0  # how many times the database refused it and it was made simpler
    refusals: int = 0  # failed writes of it alone, in a row


class Completer:
    def __init__(
        self,
        *,
        config: Config,
        store: Store,
        clock: DbClock,
        instance_id: int,
        schedules: Mapping[str, ScheduleFunc],
        counters: Counters,
        on_follow_up: Callable[[int, datetime], None],
        waiters: Waiters,
        revise: Callable[[RunRow], RunRow | None] = lambda row: row,
    ) -> None:
        self._log = config.logger
        self._revise = revise
        self._store = store
        self._clock = clock
        self._id = instance_id
        self._extra = {"instance_id": instance_id}
        self._schedules = schedules
        self._counters = counters
        self._on_follow_up = on_follow_up
        self._waiters = waiters
        self._pending: list[_Pending] = []
        self._pending_size = 0
        self._flush_timer: asyncio.TimerHandle | None = None
        self._flushes: dict[asyncio.Task[int], list[_Pending]] = {}  # writes under way

    async def record(self, row: RunRow, ending: Ending, *, owner_id: int) -> bool:
        """Close ``row`` (if ``owner_id`` still holds it open) and insert its follow-up.

        Returns False when the row had already been closed: nothing was written for it.
        """
        # Shielded: a caller that gives up does not unwrite its completion.
        return await asyncio.shield(self.submit(row, ending, owner_id=owner_id)) is not None

    def submit(self, row: RunRow, ending: Ending, *, owner_id: int) -> asyncio.Future[Written]:
        """Queue the completion of ``row``; the future gives what was written (see ``record``).

        Completions arriving within a few milliseconds share one transaction.  A periodic
        chain's follow-up follows the definition in code (see ``_periodic``).
        """
        future: asyncio.Future[Written] = asyncio.get_running_loop().create_future()
        self._queue(row, ending, owner_id, future)
        return future

    def submit_then(
        self, row: RunRow, ending: Ending, *, owner_id: int, then: Callable[[Reported], object]
    ) -> None:
        """:meth:`submit`, calling ``then`` with what became of it as soon as that is known."""
        self._queue(row, ending, owner_id, Reported(then))

    def _queue(
        self, row: RunRow, ending: Ending, owner_id: int, future: asyncio.Future[Written] | Reported
    ) -> None:
        revised = self._revise(row)
        success = ending.outcome is Outcome.SUCCEEDED
        follow_up = None
        if revised is not None and not (success and revised.schedule is None):
            # (A success of an unscheduled run, most runs, has no follow-up: not planned.)
            follow_up = self.plan(revised, ending)
        item = Completion(
            row=row if revised is None else revised,
            closing=Closing(ending.error, ending.result, success, ending.traceback),
            follow_up=follow_up,
            owner_id=owner_id,
        )
        pending = _Pending(item, ending, future, _size(item))
        if self._pending and self._pending_size + pending.size > _BATCH_CHARS:
            self._start_flush()
        self._pending.append(pending)
        self._pending_size += pending.size
        if len(self._pending) >= _BATCH_MAX or self._pending_size >= _BATCH_CHARS:
            self._start_flush()
        elif self._flush_timer is None:
            # With no write under way nothing is gained by waiting: write once the callbacks
            # ready now have run (completions ending together still share it).  Otherwise
            # wait a little for others to share the next transaction.
            delay = _FLUSH_DELAY if self._flushes else 0.0
            self._flush_timer = asyncio.get_running_loop().call_later(delay, self._start_flush)

    async def close(self) -> int:
        """Write what is buffered, then stop; returns how many completions were abandoned.

        A write still failing after ``_CLOSE_TIMEOUT`` is abandoned: its rows stay running
        and another instance's timeout check recovers them.
        """
        if self._pending:
            self._start_flush()
        if not self._flushes:
            return 0
        _, stuck = await asyncio.wait(list(self._flushes), timeout=_CLOSE_TIMEOUT)
        if not stuck:
            return 0
        batches = {task: self._flushes.get(task, []) for task in stuck}
        for task in stuck:
            task.cancel()
        # A cancelled write may still wait on a cleanup that never ends (a rollback on a
        # server that stopped answering): let it go.
        _, hung = await asyncio.wait(stuck, timeout=_CANCEL_WAIT)
        abandoned = 0
        for task in stuck:
            if task in hung:
                task.add_done_callback(consume)
                for pending in batches[task]:
                    if not pending.future.done():
                        pending.future.cancel()
                        abandoned += 1
            elif not task.cancelled() and task.exception() is None:
                abandoned += task.result()
        return abandoned

    @property
    def idle(self) -> bool:
        """Nothing is waiting to be written, or being written."""
        return not self._pending and not self._flushes

    def _start_flush(self) -> None:
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        batch, self._pending, self._pending_size = self._pending, [], 0
        if batch:
            task = asyncio.create_task(self._flush(batch), name=f"jobsd completions #{self._id}")
            self._flushes[task] = batch
            task.add_done_callback(lambda done: self._flushes.pop(done, None))

    # ---------------------------------------------------------------- writing

    async def _flush(self, batch: list[_Pending]) -> int:
        """Write one batch until it lands; returns 0, or how many were abandoned (cancelled)."""
        try:
            await self._write(batch)
        except asyncio.CancelledError:
            for pending in batch:
                pending.future.cancel()
            return sum(1 for p in batch if not p.future.done() or p.future.cancelled())
        final = {}
        for pending in batch:
            future = pending.future
            if future.done() and not future.cancelled() and future.exception() is None:
                done = future.result()
                if done is not None and done.final is not None:
                    final[pending.item.row.run_id] = done.final
        self._waiters.notify({p.item.row.run_id for p in batch}, final)
        return 0

    async def _write(self, batch: list[_Pending]) -> None:
        """Write ``batch``: again while the database is away, in halves if it refuses one item."""
        delay = _RETRY_FIRST
        while True:
            try:
                items = [p.item for p in batch]
                # Chains awaited here that end: their rows come back as written, so that
                # their waiters need not read them.
                awaited = self._waiters.awaited
                finals = [i.row.id for i in items if i.follow_up is None and awaited(i.row.run_id)]
                results = await self._store.dialect.retrying(
                    lambda conn, items=items, finals=finals: _complete.complete_many(  # type: ignore[misc]
                        self._store, conn, items, instance_id=self._id, finals=finals
                    ),
                    # Closing rows is idempotent (a closed row is skipped); follow-ups are not.
                    one_statement=_complete.in_one_statement(self._store, items),
                )
            except Exception as exc:
                refused = self._store.dialect.refuses(exc)
                if refused and len(batch) > 1:  # one of them is refused: let every other land
                    half = len(batch) // 2
                    await self._write(batch[:half])
                    await self._write(batch[half:])
                    return
                if refused:
                    batch[0].refusals += 1
                    if batch[0].refusals >= _REFUSALS:
                        degraded = self._degraded(batch[0], exc)
                        if degraded is None:
                            batch[0].future.set_exception(exc)
                            return
                        batch = [degraded]
                        continue
                # The database is away, busy or read-only for now: the same write, later.
                self._log.warning(
                    "jobsd: recording %d runs failed, retrying in %.2fs: %s",
                    len(batch),
                    delay,
                    exc,
                    extra={**self._extra, "row_ids": [p.item.row.id for p in batch]},
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX)
                continue
            for pending, done in zip(batch, results, strict=True):
                if done is not None:
                    self._after(pending.item, done)
                if not pending.future.done():
                    pending.future.set_result(done)
            return

    def _degraded(self, refused: _Pending, exc: Exception) -> _Pending | None:
        """The next, simpler way to record a completion the database refused; None: none left.

        First as a failure saying why its outcome could not be stored (with the follow-up a
        failure gets), then the same without a follow-up.
        """
        item = refused.item
        row = item.row
        extra = {**self._extra, "run_id": row.run_id, "row_id": row.id, "job": row.job}
        if refused.degraded >= 2:
            self._log.error(
                "jobsd: run %s: even its simplest completion was refused; it stays running",
                row.run_id,
                exc_info=exc,
                extra=extra,
            )
            return None
        if refused.degraded == 0:
            outcome = refused.ending.outcome.value
            text = storable(
                f"jobsd could not store the outcome of this attempt ({outcome}): {describe(exc)}",
                MAX_ERROR_LENGTH,
            )
            follow_up = self.plan(row, Ending(Outcome.FAILED, text))
        else:
            text, follow_up = item.closing.error or "", None
        self._log.error(
            "jobsd: run %s: the database refused its completion; recording it as failed%s",
            row.run_id,
            "" if follow_up is not None else " without a follow-up",
            exc_info=exc,
            extra=extra,
        )
        simpler = dataclasses.replace(
            item, closing=Closing(error=text, result=None, success=False), follow_up=follow_up
        )
        return _Pending(
            simpler,
            Ending(Outcome.FAILED, text),
            refused.future,
            _size(simpler),
            degraded=refused.degraded + 1,
        )

    def _after(self, item: Completion, done: Completed) -> None:
        row, follow_up = item.row, item.follow_up
        if self._log.isEnabledFor(logging.DEBUG):
            self._log.debug(
                "jobsd: run %s recorded",
                row.run_id,
                extra={**self._extra, "run_id": row.run_id, "row_id": row.id, "job": row.job},
            )
        if follow_up is not None and done.follow_up_id is not None:
            if follow_up.rescheduled:
                self._counters.runs_rescheduled += 1
            self._on_follow_up(done.follow_up_id, follow_up.run_at or self._clock.now())

    # ---------------------------------------------------------------- planning

    @property
    def schedule_names(self) -> list[str]:
        """The schedules whose follow-ups this instance can compute."""
        return list(self._schedules)

    def plan(self, row: RunRow, ending: Ending) -> FollowUp | None:
        """The follow-up of ``row`` after ``ending``; None if it has none, or it cannot be
        computed here (the chain then ends, with an error logged)."""

        def tick() -> datetime:
            assert row.schedule is not None
            func = resolve(row.schedule, self._schedules)
            if func is None:
                raise ValueError(f"schedule {row.schedule!r} cannot be computed on this instance")
            return next_tick(row.schedule, func, self._clock.now())

        try:
            follow_up = plan_follow_up(row, ending.outcome, tick, self._clock.now, retry=ending.retry)
            if follow_up is not None and ending.retry_after is not None and not follow_up.rescheduled:
                due = self._clock.now() + timedelta(seconds=min(ending.retry_after, MAX_DURATION))
                follow_up = dataclasses.replace(follow_up, run_at=due)
            return follow_up
        except Exception as exc:  # a schedule that fails, or absurd values in a row
            self._log.error(
                "jobsd: run %s: cannot plan what follows it (%s); its chain ends here",
                row.run_id,
                describe(exc),
                extra={**self._extra, "run_id": row.run_id, "row_id": row.id, "job": row.job},
            )
            return None


def _size(item: Completion) -> int:
    """Characters of text ``item`` writes: its closing, and the arguments its follow-up copies."""
    closing = item.closing
    size = _ITEM_OVERHEAD + len(closing.error or "") + len(closing.result or "")
    if item.follow_up is not None:
        size += len(item.row.job_args or "") + len(item.row.job_kwargs or "")
    return size
