"""Writing how an attempt ended: plan the follow-up, then retry the write until it lands.

Used for the attempts this instance runs and for the rows its resurrector takes over.  A
write that fails on a database error is retried with backoff until it succeeds or the row
turns out to be closed already (resurrected elsewhere): then the late ending is discarded.
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

    async def record(self, row: RunRow, ending: Ending, *, owner_id: int) -> bool:
        """Close ``row`` (if ``owner_id`` still holds it open) and insert its follow-up.

        Returns False when the row had already been closed: nothing was written.
        """
        extra = {"instance_id": self._id, "run_id": row.run_id, "row_id": row.id, "job": row.job}
        follow_up = self.plan(row, ending.outcome)
        closing = _complete.Closing(
            error=ending.error, result=ending.result, success=ending.outcome is Outcome.SUCCEEDED
        )
        delay = _RETRY_FIRST
        while True:
            try:
                done = await self._store.dialect.retrying(
                    lambda conn: _complete.complete(
                        self._store,
                        conn,
                        row=row,
                        closing=closing,
                        follow_up=follow_up,
                        instance_id=self._id,
                        owner_id=owner_id,
                    )
                )
                break
            except DRIVER_ERRORS as exc:
                self._log.warning(
                    "jobsd: recording run %s failed, retrying in %.2fs: %s", row.id, delay, exc, extra=extra
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX)
        if done is None:
            return False
        self._log.debug("jobsd: run %s %s", row.id, ending.outcome.value, extra=extra)
        if follow_up is not None and done.follow_up_id is not None:
            if follow_up.rescheduled:
                self._counters.runs_rescheduled += 1
            self._on_follow_up(done.follow_up_id, follow_up.run_at or self._clock.now())
        self._on_chain_change()
        return True

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
