"""Retry control: which exceptions a failed attempt is retried for, and ``Retry``.

A job's (or a run's) ``retry_on`` and ``no_retry_on`` name exception classes; they travel
in the row (``retry_policy``, JSON) as ``module.qualname`` names, so whichever instance
runs the attempt decides the same way, and match an exception whose class, or any class
it derives from, has one of those names.  A job may instead give one predicate,
``retry_if(exc) -> bool``, evaluated where the attempt runs.  An exception that is not
retried fails the run at once; a scheduled chain still goes on at its next tick.

A job raises :class:`Retry` to be retried later, whatever the policy says, as long as it
has error retries left.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._config import Duration, exception_name, to_seconds

__all__ = ("Retry", "RetryIf", "RetryPolicy")

RetryIf = Callable[[BaseException], bool]
"""A job's retry predicate: True to retry the attempt that raised this exception."""


class Retry(Exception):
    """Raise from a job to have the run retried after ``after`` (a ``Duration``).

    The retry counts against the run's error retries; once they are used up, the run
    fails with this exception.  ``after=None`` waits the run's usual backoff.

    >>> raise Retry("rate limited", after=30)  # doctest: +SKIP
    """

    def __init__(self, reason: str = "", *, after: Duration | None = None) -> None:
        super().__init__(reason)
        self.after = to_seconds("after", after, allow_none=True)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Which exceptions are retried: those named in ``retry_on`` (None: any) but not in
    ``no_retry_on``."""

    retry_on: tuple[str, ...] | None = None
    no_retry_on: tuple[str, ...] = ()

    def retries(self, error: BaseException) -> bool:
        names = {exception_name(cls) for cls in type(error).__mro__}
        if not names.isdisjoint(self.no_retry_on):
            return False
        return self.retry_on is None or not names.isdisjoint(self.retry_on)

    def to_json(self) -> str:
        stored: dict[str, list[str]] = {"not_on": list(self.no_retry_on)}
        if self.retry_on is not None:
            stored["on"] = list(self.retry_on)
        return json.dumps(stored, separators=(",", ":"))

    @classmethod
    def of(cls, retry_on: tuple[str, ...] | None, no_retry_on: tuple[str, ...] | None) -> RetryPolicy | None:
        if retry_on is None and not no_retry_on:
            return None
        return cls(retry_on, no_retry_on or ())

    @classmethod
    def from_json(cls, text: str | None) -> RetryPolicy | None:
        """The stored policy; None for none, and for one that is not ours (retry as usual)."""
        if not text:
            return None
        try:
            stored: Any = json.loads(text)
            on, not_on = stored.get("on"), stored.get("not_on", [])
            if not (on is None or _names(on)) or not _names(not_on):
                return None
            return cls(None if on is None else tuple(on), tuple(not_on))
        except (ValueError, AttributeError, TypeError):
            return None


def _names(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)
