"""Schedules: functions ``(now) -> next due time`` that make a run recur."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import TypeAlias

from ._errors import ScheduleError

ScheduleFunc: TypeAlias = Callable[[datetime], datetime]
"""A registered schedule: given the current time (UTC), return the next due time."""


def next_tick(name: str, func: ScheduleFunc, now: datetime) -> datetime:
    """The schedule's next due time after ``now``, in UTC; raises ScheduleError if unusable."""
    try:
        due = func(now)
    except Exception as exc:
        raise ScheduleError(f"schedule {name!r} raised {exc!r}") from exc
    if not isinstance(due, datetime):
        raise ScheduleError(f"schedule {name!r} must return a datetime, got {due!r}")
    if due.tzinfo is None or due.utcoffset() is None:
        raise ScheduleError(f"schedule {name!r} returned a naive datetime {due!r}; return an aware one")
    return due.astimezone(UTC)
