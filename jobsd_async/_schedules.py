"""Schedules: functions ``(now) -> next due time`` that make a run recur.

Two kinds:

- a **registered** schedule: any function, registered under a name on the instances that
  run its rows (only its name is stored);
- a **built-in** schedule, ``every(interval)`` or ``cron(expression, tz)``: it serialises
  itself into the ``schedule`` column (``every:30`` or ``cron:Europe/Paris:0 9 * * 1-5``),
  so any instance can compute its next tick without registering anything.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import TypeAlias
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ._config import Duration, check_due_time, to_seconds
from ._errors import ScheduleError

__all__ = ("BuiltinSchedule", "ScheduleFunc", "cron", "every")

ScheduleFunc: TypeAlias = Callable[[datetime], datetime]
"""A registered schedule: given the current time (UTC), return the next due time."""

EVERY_PREFIX = "every:"
CRON_PREFIX = "cron:"
BUILTIN_PREFIXES = (EVERY_PREFIX, CRON_PREFIX)


def cron_available() -> bool:
    """Whether the optional cron engine (``pip install jobsd-async[cron]``) is installed."""
    return importlib.util.find_spec("cronsim") is not None


class BuiltinSchedule:
    """A schedule that any instance can compute from its stored ``spec``; see every() and cron()."""

    __slots__ = ("_next", "spec")

    def __init__(self, spec: str, next_after: ScheduleFunc) -> None:
        self.spec = spec
        self._next = next_after

    def __call__(self, now: datetime) -> datetime:
        return self._next(now)

    def __repr__(self) -> str:
        return f"<schedule {self.spec}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BuiltinSchedule) and other.spec == self.spec

    def __hash__(self) -> int:
        return hash(self.spec)


def every(interval: Duration) -> BuiltinSchedule:
    """Recur every ``interval`` (seconds or a timedelta, > 0) after the previous completion."""
    seconds = to_seconds("interval", interval)
    if not seconds:
        raise ValueError(f"interval must be greater than 0, got {interval!r}")
    step = timedelta(seconds=seconds)
    return BuiltinSchedule(f"{EVERY_PREFIX}{seconds!r}", lambda now: now + step)


def cron(expression: str, tz: str = "UTC") -> BuiltinSchedule:
    """Recur on a cron expression in time zone ``tz`` (DST-aware).

    Five fields (minute hour day-of-month month day-of-week), optionally a sixth for the
    second (``*/15 * * * * 30`` = at second 30 of every 15th minute).  Needs the ``cron``
    extra: ``pip install jobsd-async[cron]``.
    """
    if not isinstance(expression, str) or ":" in expression:
        raise ValueError(f"cron expression must be a str of 5 or 6 fields, got {expression!r}")
    if not isinstance(tz, str) or ":" in tz:
        raise ValueError(f"tz must be an IANA time zone name, got {tz!r}")
    fields = expression.split()
    if len(fields) not in (5, 6):
        raise ValueError(f"cron expression must have 5 or 6 fields, got {expression!r}")
    try:
        zone = ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {tz!r}") from exc
    seconds = _seconds_field(fields[5]) if len(fields) == 6 else (0,)
    minutes = " ".join(fields[:5])
    try:
        from cronsim import CronSim, CronSimError
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError("cron() needs the cron extra: pip install 'jobsd-async[cron]'") from exc
    try:
        CronSim(minutes, datetime(2000, 1, 1, tzinfo=zone))
    except CronSimError as exc:
        raise ValueError(f"invalid cron expression {expression!r}: {exc}") from exc

    def next_after(now: datetime) -> datetime:
        # Arithmetic in UTC: wall-clock arithmetic on zoned datetimes drops the DST fold.
        now = now.astimezone(UTC)
        minute = now.astimezone(zone).replace(second=0, microsecond=0).astimezone(UTC)
        # cronsim yields matches strictly after its start: starting a second before this
        # minute tells whether the current minute itself matches.
        just_before = (minute - timedelta(seconds=1)).astimezone(zone)
        if next(CronSim(minutes, just_before)).astimezone(UTC) == minute:
            later = [s for s in seconds if minute + timedelta(seconds=s) > now]
            if later:
                return minute + timedelta(seconds=later[0])
        following = next(CronSim(minutes, minute.astimezone(zone))).astimezone(UTC)
        return following + timedelta(seconds=seconds[0])

    return BuiltinSchedule(f"{CRON_PREFIX}{tz}:{expression}", next_after)


def _seconds_field(field: str) -> tuple[int, ...]:
    """The seconds a cron seconds field names: ``*``, ``a``, ``a-b``, ``*/n``, ``a-b/n``, lists."""
    values: set[int] = set()
    for part in field.split(","):
        span, _, step_text = part.partition("/")
        try:
            step = int(step_text) if step_text else 1
            if span == "*":
                low, high = 0, 59
            elif "-" in span:
                low_text, high_text = span.split("-", 1)
                low, high = int(low_text), int(high_text)
            else:
                low = int(span)
                high = 59 if step_text else low
        except ValueError as exc:
            raise ValueError(f"invalid cron seconds field {field!r}") from exc
        if not (0 <= low <= high <= 59) or step < 1:
            raise ValueError(f"invalid cron seconds field {field!r}")
        values.update(range(low, high + 1, step))
    return tuple(sorted(values))


def parse_builtin(spec: str) -> BuiltinSchedule | None:
    """The built-in schedule stored as ``spec``, or None if ``spec`` names a registered one."""
    if spec.startswith(EVERY_PREFIX):
        return every(float(spec[len(EVERY_PREFIX) :]))
    if spec.startswith(CRON_PREFIX):
        tz, _, expression = spec[len(CRON_PREFIX) :].partition(":")
        return cron(expression, tz)
    return None


def resolve(spec: str, registered: Mapping[str, ScheduleFunc]) -> ScheduleFunc | None:
    """The function behind a stored ``schedule`` value, if this instance can compute it."""
    if spec.startswith(BUILTIN_PREFIXES):
        try:
            return parse_builtin(spec)
        except (ValueError, ModuleNotFoundError):
            return None
    return registered.get(spec)


def describe_error(error: BaseException) -> str:
    try:
        return repr(error)
    except BaseException:
        return f"<unprintable {type(error).__name__}>"


def next_tick(name: str, func: ScheduleFunc, now: datetime) -> datetime:
    """The schedule's next due time after ``now``, in UTC; raises ScheduleError if unusable."""
    try:
        due = func(now)
    except BaseException as exc:  # a schedule never ends the host, whatever it raises
        if isinstance(exc, asyncio.CancelledError):
            raise
        raise ScheduleError(f"schedule {name!r} raised {describe_error(exc)}") from exc
    if not isinstance(due, datetime):
        raise ScheduleError(f"schedule {name!r} must return a datetime, got {due!r}")
    if due.tzinfo is None or due.utcoffset() is None:
        raise ScheduleError(f"schedule {name!r} returned a naive datetime {due!r}; return an aware one")
    try:
        check_due_time(f"the time schedule {name!r} returned", due)
    except ValueError as exc:
        raise ScheduleError(str(exc)) from None
    return due.astimezone(UTC)
