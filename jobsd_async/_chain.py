"""Rows and chains: what follows an attempt once it ends.

One row per attempt.  When an attempt ends, the same transaction that completes its row
inserts the follow-up, if any: a retry, the next tick of a schedule, or a re-run of an
attempt killed at shutdown.  This module decides which, without touching the database.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from ._config import Backoff
from ._runs import CANCELLED_TEXT, KILLED_TEXT, TIMED_OUT_TEXT
from ._store._rows import RunRow


class Outcome(enum.Enum):
    """How one attempt ended."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    KILLED = "killed"
    CANCELLED = "cancelled"

    def error_text(self, error: BaseException | None = None) -> str | None:
        """The text recorded in ``run_completed_error`` for this outcome."""
        if self is Outcome.SUCCEEDED:
            return None
        if self is Outcome.TIMED_OUT:
            return TIMED_OUT_TEXT
        if self is Outcome.KILLED:
            return KILLED_TEXT
        if self is Outcome.CANCELLED:
            return CANCELLED_TEXT
        if error is None:
            return "job failed"
        return f"{type(error).__name__}: {error}"


@dataclass(frozen=True, slots=True)
class FollowUp:
    """The row that continues a chain: its counters and when it is due (None: at once)."""

    run_at: datetime | None
    run_success_count: int
    retries_on_error_count: int
    retries_on_timeout_count: int
    rescheduled: bool


def needs_scheduling(row: RunRow, success_count: int) -> bool:
    """A scheduled chain recurs until its success limit is reached."""
    return row.schedule is not None and (
        row.run_success_limit is None or success_count < row.run_success_limit
    )


def _under(limit: int | None, count: int) -> bool:
    return limit is None or count < limit


def plan_follow_up(
    row: RunRow, outcome: Outcome, next_tick: Callable[[], datetime], now: Callable[[], datetime]
) -> FollowUp | None:
    """The follow-up of ``row`` after ``outcome``.

    ``next_tick()`` gives the schedule's next time and ``now()`` the database clock.  A retry
    of a scheduled run is due at the next tick; of a one-off run at once, or after the
    row's backoff.
    """

    def retry_due(retry: int) -> datetime | None:
        if scheduled:
            return next_tick()
        if row.retry_backoff is None:
            return None
        backoff = Backoff(row.retry_backoff, row.retry_backoff_cap or row.retry_backoff)
        return now() + timedelta(seconds=backoff.delay(retry))

    successes = row.run_success_count + (1 if outcome is Outcome.SUCCEEDED else 0)
    scheduled = needs_scheduling(row, successes)
    error_count = row.retries_on_error_count
    timeout_count = row.retries_on_timeout_count

    if outcome is Outcome.CANCELLED:
        return None
    if outcome is Outcome.KILLED:
        # A kill at shutdown is not the job's fault: re-run this attempt, consuming nothing.
        return FollowUp(None, successes, error_count, timeout_count, rescheduled=False)
    if outcome is Outcome.FAILED and _under(row.retries_on_error_limit, error_count):
        return FollowUp(retry_due(error_count + 1), successes, error_count + 1, timeout_count, False)
    if outcome is Outcome.TIMED_OUT and _under(row.retries_on_timeout_limit, timeout_count):
        return FollowUp(retry_due(timeout_count + 1), successes, error_count, timeout_count + 1, False)
    if scheduled:
        return FollowUp(next_tick(), successes, 0, 0, rescheduled=True)
    return None
