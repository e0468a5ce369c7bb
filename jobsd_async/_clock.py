"""Time: the local clock (injectable) and an estimate of the database clock.

Due checks in SQL use the database clock.  To know *when* to try a claim, an instance
estimates the database clock from its own: it samples ``db_now`` now and then and keeps
the offset, so instances whose clocks disagree still try at the right moment.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TypeAlias

Clock: TypeAlias = Callable[[], datetime]
"""Returns the current time as an aware datetime."""


def system_clock() -> datetime:
    return datetime.now(UTC)


class DbClock:
    """The database clock as seen from here: the local clock plus a measured offset."""

    __slots__ = ("_local", "_offset")

    def __init__(self, local: Clock) -> None:
        self._local = local
        self._offset = timedelta(0)

    def local(self) -> datetime:
        return self._local()

    def now(self) -> datetime:
        """Best estimate of the database clock right now."""
        return self._local() + self._offset

    def sample(self, db_now: datetime, sent_at: datetime, received_at: datetime) -> None:
        """Record a database clock reading taken between two local readings."""
        midpoint = sent_at + (received_at - sent_at) / 2
        self._offset = db_now - midpoint
