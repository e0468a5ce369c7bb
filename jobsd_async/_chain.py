"""Rows and chains: what follows an attempt once it ends.

One row per attempt.  When an attempt ends, the same transaction that completes its row
inserts the follow-up, if any: a retry, the next tick of a schedule, or a re-run of an
attempt killed at shutdown.  This module decides which, without touching the database.
"""

from __future__ import annotations

import enum
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from ._config import MAX_COUNT, MAX_DURATION, backoff_delay
from ._runs import CANCELLED_TEXT, KILLED_TEXT, TIMED_OUT_TEXT
from ._store._rows import RunRow
from ._text import MAX_ERROR_LENGTH, MAX_TRACEBACK_LENGTH, storable


class Outcome(enum.Enum):
    """How one attempt ended."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    # Stopped at shutdown, or claimed but never started: re-run without consuming a retry.
    KILLED = "killed"
    CANCELLED = "cancelled"
    # The row itself cannot run (its stored arguments cannot be decoded or bound): recorded
    # as failed, and its chain ends, because a retry would fail the same way.
    REJECTED = "rejected"

    @property
    def stops_the_job(self) -> bool:
        """Whether this ending comes from outside the job, which is then told to stop."""
        return self in (Outcome.TIMED_OUT, Outcome.KILLED, Outcome.CANCELLED)

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
        return describe(error)


def traceback_text(error: BaseException) -> str:
    """The traceback of ``error``, storable and cut to MAX_TRACEBACK_LENGTH characters."""
    try:
        text = "".join(traceback.format_exception(error))
    except BaseException:  # a hostile __str__: the frames without the message
        text = "".join(traceback.format_tb(error.__traceback__)) + describe(error) + "\n"
    if len(text) > MAX_TRACEBACK_LENGTH:  # keep the end, where the error is
        text = "... [cut]\n" + text[-MAX_TRACEBACK_LENGTH + 10 :]
    return storable(text, MAX_TRACEBACK_LENGTH)


def describe(error: BaseException) -> str:
    """``"ExcType: message"`` for any exception, even one whose ``__str__`` raises; storable."""
    try:
        message = str(error)
    except BaseException:  # a hostile __str__ may even raise SystemExit
        message = f"<unprintable {type(error).__name__} object>"
    return storable(f"{type(error).__name__}: {message}", MAX_ERROR_LENGTH)


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
    # A count at the column's maximum cannot grow: such a row (written by hand) retries no more.
    return (limit is None or count < limit) and count < MAX_COUNT


def plan_follow_up(
    row: RunRow,
    outcome: Outcome,
    next_tick: Callable[[], datetime],
    now: Callable[[], datetime],
    *,
    retry: bool = True,
) -> FollowUp | None:
    """The follow-up of ``row`` after ``outcome``.

    ``next_tick()`` gives the schedule's next time and ``now()`` the database clock.  A retry
    of a scheduled run is due at the next tick; of a one-off run at once, or after the
    row's backoff.  A failure with ``retry`` False (its retry policy) gets no retry: a
    scheduled chain goes on at its next tick, a one-off run ends.
    """

    def retry_due(retry: int) -> datetime | None:
        if scheduled:
            return next_tick()
        if row.retry_backoff is None:
            return None
        delay = backoff_delay(row.retry_backoff, row.retry_backoff_cap or row.retry_backoff, retry)
        return now() + timedelta(seconds=min(delay, MAX_DURATION))

    successes = row.run_success_count + (1 if outcome is Outcome.SUCCEEDED else 0)
    scheduled = needs_scheduling(row, successes)
    error_count = row.retries_on_error_count
    timeout_count = row.retries_on_timeout_count

    if outcome is Outcome.CANCELLED or outcome is Outcome.REJECTED:
        return None
    if outcome is Outcome.KILLED:
        # A kill at shutdown is not the job's fault: re-run this attempt, consuming nothing.
        return FollowUp(None, successes, error_count, timeout_count, rescheduled=False)
    if outcome is Outcome.FAILED and retry and _under(row.retries_on_error_limit, error_count):
        return FollowUp(retry_due(error_count + 1), successes, error_count + 1, timeout_count, False)
    if outcome is Outcome.TIMED_OUT and _under(row.retries_on_timeout_limit, timeout_count):
        return FollowUp(retry_due(timeout_count + 1), successes, error_count, timeout_count + 1, False)
    if scheduled:
        return FollowUp(next_tick(), successes, 0, 0, rescheduled=True)
    return None
