"""What a running job sees (RunInfo), what a caller sees (RunState) and the instance snapshot."""

from __future__ import annotations

import asyncio
import enum
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, Protocol

from typing_extensions import TypeVar

if TYPE_CHECKING:
    from ._store._rows import RunRow

R = TypeVar("R", default=Any)


class ProgressSink(Protocol):
    """Where a RunInfo's progress reports go (the attempt's row)."""

    async def report(self, progress: object) -> None: ...

    def report_from_thread(self, progress: object) -> None: ...


__all__ = ("InstanceInfo", "RunInfo", "RunState", "RunStatus")

TIMED_OUT_TEXT = "job run timed out"
KILLED_TEXT = "job run killed"
CANCELLED_TEXT = "job run cancelled"


class RunStatus(enum.StrEnum):
    """Status of the latest row of a run's chain."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        """True once the row has completed, whatever the outcome."""
        return self not in (RunStatus.PENDING, RunStatus.RUNNING)

    @classmethod
    def of_row(
        cls,
        started_at: datetime | None,
        completed_at: datetime | None,
        error: str | None,
    ) -> RunStatus:
        if started_at is None and completed_at is None:
            return cls.PENDING
        if completed_at is None:
            return cls.RUNNING
        if error is None:
            return cls.SUCCEEDED
        if error == TIMED_OUT_TEXT:
            return cls.TIMED_OUT
        if error == CANCELLED_TEXT:
            return cls.CANCELLED
        return cls.FAILED


@dataclass(frozen=True, slots=True)
class RunInfo:
    """One attempt of a run, passed to a job whose first parameter is annotated ``RunInfo``.

    ``cancel`` is set when the attempt times out, is cancelled with ``cancel_run``, or is
    killed at shutdown; a job should stop soon after.  Sync jobs running in a thread call
    :meth:`is_cancelled` instead of touching the event.
    """

    id: int
    origin_id: int | None
    parent_id: int | None
    name: str
    job: str
    job_args: tuple[Any, ...]
    job_kwargs: dict[str, Any]
    run_at: datetime
    run_total_count: int
    run_success_count: int
    run_success_limit: int | None
    run_started_at: datetime
    run_started_by: int
    run_timeout: float | None
    run_timeout_at: datetime | None
    retries_on_error_count: int
    retries_on_error_limit: int | None
    retries_on_timeout_count: int
    retries_on_timeout_limit: int | None
    schedule: str | None
    created_at: datetime
    created_by: int
    cancel: asyncio.Event = field(default_factory=asyncio.Event, compare=False, repr=False)
    _progress: ProgressSink | None = field(default=None, compare=False, repr=False)

    async def set_progress(self, progress: Any) -> None:
        """Report progress: any JSON value (a fraction, counts, a stage), stored in the row.

        Shown as ``RunState.progress`` and by ``jobsd runs show``.  Reports are coalesced
        (only the newest of those waiting is written) and best effort: a database error is
        logged, not raised.  TypeError if the value has no JSON form.
        """
        await self._sink().report(progress)

    def set_progress_sync(self, progress: Any) -> None:
        """:meth:`set_progress` for a sync job, from its worker thread; returns once written."""
        self._sink().report_from_thread(progress)

    def _sink(self) -> ProgressSink:
        if self._progress is None:
            raise RuntimeError("this RunInfo belongs to no running attempt; progress cannot be stored")
        return self._progress

    @property
    def run_id(self) -> int:
        """The id of the chain's first row: the id ``create_run(...).run()`` returned."""
        return self.origin_id if self.origin_id is not None else self.id

    def is_cancelled(self) -> bool:
        """True once ``cancel`` is set; safe to call from a worker thread."""
        return self.cancel.is_set()


@dataclass(slots=True)
class RunState(Generic[R]):
    """A snapshot of the latest row of a run's chain; :meth:`refresh` reloads it.

    ``result`` is what the job returned (``R``: its return type, through a typed ``Job``
    handle).  ``traceback`` is the traceback of the latest attempt when it failed with an
    exception; ``progress`` what the job last reported with ``RunInfo.set_progress``;
    ``queue`` and ``priority`` where the run is routed.
    """

    run_id: int
    id: int
    origin_id: int | None
    name: str
    job: str
    schedule: str | None
    status: RunStatus
    run_total_count: int
    run_success_count: int
    run_started_at: datetime | None
    run_started_by: int | None
    run_completed_at: datetime | None
    run_completed_error: str | None
    retries_on_error_count: int
    retries_on_timeout_count: int
    result: R
    created_at: datetime
    created_by: int
    traceback: str | None = field(default=None, repr=False)
    progress: Any = None
    queue: str = "default"
    priority: int = 0
    _loader: Callable[[int], Awaitable[RunState[Any]]] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def of_row(
        cls, row: RunRow, result: R, *, loader: Callable[[int], Awaitable[RunState[Any]]]
    ) -> RunState[R]:
        """The state shown for ``row``, the latest of its chain, with its decoded ``result``."""
        return cls(
            run_id=row.run_id,
            id=row.id,
            origin_id=row.origin_id,
            name=row.name,
            job=row.job,
            schedule=row.schedule,
            status=RunStatus.of_row(row.run_started_at, row.run_completed_at, row.run_completed_error),
            run_total_count=row.run_total_count,
            run_success_count=row.run_success_count,
            run_started_at=row.run_started_at,
            run_started_by=row.run_started_by,
            run_completed_at=row.run_completed_at,
            run_completed_error=row.run_completed_error,
            retries_on_error_count=row.retries_on_error_count,
            retries_on_timeout_count=row.retries_on_timeout_count,
            result=result,
            created_at=row.created_at,
            created_by=row.created_by,
            traceback=row.run_completed_traceback,
            progress=decode_progress(row.run_progress),
            queue=row.queue,
            priority=row.priority,
            _loader=loader,
        )

    async def refresh(self) -> RunState[R]:
        """Reload the latest row of the chain into this object and return it."""
        if self._loader is None:
            raise RuntimeError("this RunState was not loaded from a JobsD instance")
        fresh = await self._loader(self.run_id)
        for f in fields(self):
            setattr(self, f.name, getattr(fresh, f.name))
        return self


def decode_progress(text: str | None) -> Any:
    """Stored progress as its JSON value (the raw text if it is not JSON: written by hand)."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


@dataclass(frozen=True, slots=True)
class InstanceInfo:
    """A snapshot of this instance's row in ``{prefix}instances`` and its counters."""

    id: int
    workers: int
    supported_jobs: tuple[str, ...]
    supported_schedules: tuple[str, ...]
    poll_interval: float
    poll_limit: int
    timeout_check: float
    heartbeat_interval: float
    run_timeout: float | None
    retries_on_error_limit: int | None
    retries_on_timeout_limit: int | None
    runs_started: int
    runs_rescheduled: int
    runs_timed_out: int
    runs_timed_out_res: int
    runs_errors: int
    last_seen_at: datetime | None
    shutdown_at: datetime | None
    created_at: datetime
