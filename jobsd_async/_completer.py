"""Writing how attempts ended: plan each follow-up, then write them in batches until they land.

Used for the attempts this instance runs and for the rows its resurrector takes over.
Completions arriving within ``_FLUSH_DELAY`` share one transaction (up to ``_BATCH_MAX``).
A write that fails on a database error is retried with backoff until it succeeds; a row
that turns out to be closed already (resurrected elsewhere) has its late ending discarded.
A crash before a batch is written leaves its rows running: the resurrector re-runs them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from datetime import datetime

from ._attempt import Ending
from ._chain import FollowUp, Outcome, plan_follow_up
from ._clock import DbClock
from ._config import Config
from ._errors import ScheduleError
from ._schedules import ScheduleFunc, next_tick, resolve
from ._store import _complete
from ._store._dialect import DRIVER_ERRORS
from ._store._instances import Counters
from ._store._rows import RunRow, Store

_RETRY_FIRST = 0.05  # seconds before the first retry of a failed write
_RETRY_MAX = 5.0  # seconds, the backoff cap
_BATCH_MAX = 200  # completions per transaction
_FLUSH_DELAY = 0.002  # seconds a completion waits for others to share its transaction
_CLOSE_TIMEOUT = 10.0  # seconds close() waits for buffered completions to be written

# A queued completion, how its attempt ended, and the future its batch resolves.
_Pending = tuple[_complete.Completion, Ending, "asyncio.Future[_complete.Completed | None]"]


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
        on_chain_change: Callable[[], None],
    ) -> None:
        self._log = config.logger
        self._store = store
        self._clock = clock
        self._id = instance_id
        self._schedules = schedules
        self._counters = counters
        self._on_follow_up = on_follow_up
        self._on_chain_change = on_chain_change
        self._pending: list[_Pending] = []
        self._flush_timer: asyncio.TimerHandle | None = None
        self._flushes: set[asyncio.Task[int]] = set()

    async def record(self, row: RunRow, ending: Ending, *, owner_id: int) -> bool:
        """Close ``row`` (if ``owner_id`` still holds it open) and insert its follow-up.

        Returns False when the row had already been closed: nothing was written for it.
        """
        # Shielded: a caller that gives up does not unwrite its completion.
        return await asyncio.shield(self.submit(row, ending, owner_id=owner_id)) is not None

    def submit(
        self, row: RunRow, ending: Ending, *, owner_id: int
    ) -> asyncio.Future[_complete.Completed | None]:
        """Queue the completion of ``row``; the future gives what was written, or None if the
        row had already been closed elsewhere (see ``record``).

        Completions arriving within a few milliseconds share one transaction.
        """
        item = _complete.Completion(
            row=row,
            closing=_complete.Closing(
                error=ending.error, result=ending.result, success=ending.outcome is Outcome.SUCCEEDED
            ),
            follow_up=self.plan(row, ending.outcome),
            owner_id=owner_id,
        )
        loop = asyncio.get_running_loop()
        future: asyncio.Future[_complete.Completed | None] = loop.create_future()
        self._pending.append((item, ending, future))
        if len(self._pending) >= _BATCH_MAX:
            self._start_flush()
        elif self._flush_timer is None:
            self._flush_timer = loop.call_later(_FLUSH_DELAY, self._start_flush)
        return future

    async def close(self) -> int:
        """Write what is buffered, then stop; returns how many completions were abandoned.

        A write still failing after ``_CLOSE_TIMEOUT`` is abandoned: its rows stay running
        and the timeout check recovers them.
        """
        if self._pending:
            self._start_flush()
        abandoned = 0
        if self._flushes:
            _, stuck = await asyncio.wait(self._flushes, timeout=_CLOSE_TIMEOUT)
            for task in stuck:
                task.cancel()
            for outcome in await asyncio.gather(*stuck, return_exceptions=True):
                if isinstance(outcome, int):
                    abandoned += outcome
        return abandoned

    def _start_flush(self) -> None:
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        batch, self._pending = self._pending, []
        if batch:
            task = asyncio.create_task(self._flush(batch), name=f"jobsd completions #{self._id}")
            self._flushes.add(task)
            task.add_done_callback(self._flushes.discard)

    async def _flush(self, batch: list[_Pending]) -> int:
        """Write one batch until it lands; returns 0, or the batch size if it was abandoned."""
        items = [item for item, _, _ in batch]
        delay = _RETRY_FIRST
        try:
            while True:
                try:
                    results = await self._store.dialect.retrying(
                        lambda conn: _complete.complete_many(self._store, conn, items, instance_id=self._id)
                    )
                    break
                except DRIVER_ERRORS as exc:
                    self._log.warning(
                        "jobsd: recording %d runs failed, retrying in %.2fs: %s",
                        len(items),
                        delay,
                        exc,
                        extra={"instance_id": self._id, "row_ids": [i.row.id for i in items]},
                    )
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, _RETRY_MAX)
        except asyncio.CancelledError:
            for _, _, future in batch:
                future.cancel()
            return len(batch)
        except BaseException as exc:
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            raise
        for (item, ending, future), done in zip(batch, results, strict=True):
            if done is not None:
                self._after(item, ending, done)
            if not future.done():
                future.set_result(done)
        self._on_chain_change()
        return 0

    def _after(self, item: _complete.Completion, ending: Ending, done: _complete.Completed) -> None:
        row, follow_up = item.row, item.follow_up
        self._log.debug(
            "jobsd: run %s %s",
            row.id,
            "cancelled" if done.cancelled else ending.outcome.value,
            extra={"instance_id": self._id, "run_id": row.run_id, "row_id": row.id, "job": row.job},
        )
        if follow_up is not None and done.follow_up_id is not None:
            if follow_up.rescheduled:
                self._counters.runs_rescheduled += 1
            self._on_follow_up(done.follow_up_id, follow_up.run_at or self._clock.now())

    @property
    def schedule_names(self) -> list[str]:
        """The schedules whose follow-ups this instance can compute."""
        return list(self._schedules)

    def plan(self, row: RunRow, outcome: Outcome) -> FollowUp | None:
        def tick() -> datetime:
            assert row.schedule is not None
            func = resolve(row.schedule, self._schedules)
            if func is None:
                raise ScheduleError(f"schedule {row.schedule!r} cannot be computed on this instance")
            return next_tick(row.schedule, func, self._clock.now())

        try:
            return plan_follow_up(row, outcome, tick, self._clock.now)
        except ScheduleError as exc:
            self._log.error(
                "jobsd: run %s: %s; its chain ends here",
                row.id,
                exc,
                extra={"instance_id": self._id, "run_id": row.run_id, "job": row.job},
            )
            return None
