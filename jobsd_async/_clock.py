"""Time: the local clock (injectable) and an estimate of the database clock.

Due checks in SQL use the database clock.  To know *when* to try a claim, an instance
estimates the database clock: it reads ``db_now`` now and then, and counts the time since
on the monotonic clock.  So instances whose wall clocks disagree, or whose wall clock steps
(NTP, a VM resumed), still try at the right moment.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TypeAlias

Clock: TypeAlias = Callable[[], datetime]
"""Returns the current time as an aware datetime."""


def system_clock() -> datetime:
    return datetime.now(UTC)


class DbClock:
    """The database clock as seen from here: its last reading plus monotonic time since."""

    __slots__ = ("_local", "_monotonic", "_read_at", "_reading")

    def __init__(self, local: Clock, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._local = local
        self._monotonic = monotonic
        self._reading: datetime | None = None
        self._read_at = 0.0

    def monotonic(self) -> float:
        return self._monotonic()

    def now(self) -> datetime:
        """Best estimate of the database clock right now (the local clock before any reading)."""
        if self._reading is None:
            return self._local()
        return self._reading + timedelta(seconds=self._monotonic() - self._read_at)

    def sample(self, db_now: datetime, sent_at: float, received_at: float) -> None:
        """Record a database clock reading taken between two monotonic readings."""
        self._reading = db_now
        self._read_at = sent_at + (received_at - sent_at) / 2
