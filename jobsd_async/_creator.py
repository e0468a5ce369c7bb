"""RunCreator: the chainable builder returned by ``create_run``."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from ._config import (
    Backoff,
    Duration,
    RunOptions,
    check_due_time,
    check_name,
    to_count,
    to_seconds,
)
from ._errors import JobsDStateError
from ._schedules import BuiltinSchedule

PERIODIC_PREFIX = "periodic:"
"""Unique names starting with this are reserved for periodic jobs' chains (see ``_periodic``)."""

if TYPE_CHECKING:
    from typing import Self

    from ._jobs import Job

__all__ = ("RunCreator",)


@dataclass(frozen=True, slots=True)
class RunRequest:
    """Everything a submission needs, gathered by the creator."""

    job: str | Job[Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    options: RunOptions = field(default_factory=RunOptions)
    unique: str | None = None
    schedule: str | None = None
    limit: int | None = None
    delay: float = 0.0
    at: datetime | None = None


Conn: TypeAlias = AsyncConnection | AsyncSession
"""A caller's connection or session: the run is inserted in its transaction."""


class Submitter(Protocol):
    async def __call__(self, request: RunRequest, conn: Conn | None) -> int: ...


class RunCreator:
    """Builds one run: ``jd.create_run(job, *args).unique("x").run_timeout(60).run()``.

    Setters return the creator.  One of :meth:`run`, :meth:`run_after` or :meth:`run_at`
    submits it, once; they return the run id (the id of the chain's first row).
    """

    __slots__ = ("_request", "_submit", "_submitted")

    def __init__(self, submit: Submitter, request: RunRequest) -> None:
        self._submit = submit
        self._request = request
        self._submitted = False

    def unique(self, name: str) -> Self:
        """Give the chain a cluster-wide name; while it is active, no second chain starts.

        Names starting with ``periodic:`` are reserved for periodic jobs' chains.
        """
        check_name("unique run", name)
        if name.startswith(PERIODIC_PREFIX):
            raise ValueError(
                f"unique run name {name!r}: names starting with {PERIODIC_PREFIX!r} are reserved for "
                "periodic jobs; register the job with periodic= instead"
            )
        self._request = replace(self._request, unique=name)
        return self

    def run_timeout(self, timeout: Duration | None) -> Self:
        """Per-run timeout (None or 0: no timeout), overriding the job's."""
        return self._option(run_timeout=timeout)

    def retries_error_limit(self, limit: int | None) -> Self:
        """Retries after errors (None or -1: unlimited), overriding the job's."""
        return self._option(retries_error_limit=limit)

    def retries_timeout_limit(self, limit: int | None) -> Self:
        """Retries after timeouts (None or -1: unlimited), overriding the job's."""
        return self._option(retries_timeout_limit=limit)

    def retry_backoff(self, backoff: Duration | Backoff | None) -> Self:
        """Wait before retries (a base duration or a Backoff; None: at once), overriding the job's."""
        return self._option(retry_backoff=backoff)

    def retry_on(self, *exceptions: type[BaseException]) -> Self:
        """Retry failures only for these exception classes (and subclasses), overriding the
        job's; with none, for any exception."""
        return self._option(retry_on=exceptions or None)

    def no_retry_on(self, *exceptions: type[BaseException]) -> Self:
        """Never retry failures for these exception classes (and subclasses), overriding the
        job's; with none, no exception is excluded."""
        return self._option(no_retry_on=exceptions or None)

    def queue(self, name: str) -> Self:
        """Put the run in queue ``name``, overriding the job's (see ``JobsD(queues=...)``)."""
        return self._option(queue=name)

    def priority(self, priority: int) -> Self:
        """The run's priority, overriding the job's: higher runs first among due runs."""
        return self._option(priority=priority)

    def _option(self, **value: object) -> Self:
        options = RunOptions.parse(**value).over(self._request.options)
        self._request = replace(self._request, options=options)
        return self

    def schedule(self, schedule: str | BuiltinSchedule) -> Self:
        """Make the run recur: on a registered schedule's name, or on ``every(...)``/``cron(...)``.

        The first run is at the schedule's first tick.
        """
        spec = schedule.spec if isinstance(schedule, BuiltinSchedule) else check_name("schedule", schedule)
        self._request = replace(self._request, schedule=spec, limit=None)
        return self

    def limit(self, successes: int) -> Self:
        """Stop a scheduled run after this many successful executions."""
        if self._request.schedule is None:
            raise ValueError("limit() only applies to a scheduled run; call schedule() first")
        self._request = replace(self._request, limit=to_count("limit", successes, minimum=0))
        return self

    async def run(self, *, conn: Conn | None = None) -> int:
        """Submit the run: due now, or at the schedule's first tick.

        With ``conn`` (an ``AsyncConnection`` or ``AsyncSession``), the row is inserted in
        the caller's transaction and runs only if that transaction commits.
        """
        return await self._once(self._request, conn)

    async def run_after(self, delay: Duration, *, conn: Conn | None = None) -> int:
        """Submit the run, due after ``delay`` (then at the next schedule tick if scheduled)."""
        seconds = to_seconds("delay", delay)
        assert seconds is not None
        return await self._once(replace(self._request, delay=seconds), conn)

    async def run_at(self, when: datetime, *, conn: Conn | None = None) -> int:
        """Submit the run, due at ``when`` (timezone-aware)."""
        if not isinstance(when, datetime):
            raise TypeError(f"when must be a datetime, got {when!r}")
        if when.tzinfo is None or when.utcoffset() is None:
            raise ValueError(f"when must be timezone-aware, got naive {when!r}")
        check_due_time("when", when)
        return await self._once(replace(self._request, at=when), conn)

    async def _once(self, request: RunRequest, conn: Conn | None) -> int:
        if self._submitted:
            raise JobsDStateError("this RunCreator was already submitted; call create_run() again")
        if conn is not None and not isinstance(conn, AsyncConnection | AsyncSession):
            raise TypeError(f"conn must be an AsyncConnection or AsyncSession, got {conn!r}")
        run_id = await self._submit(request, conn)
        self._submitted = True
        return run_id
