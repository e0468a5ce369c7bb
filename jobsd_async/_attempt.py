"""One attempt of a run on this instance: the job's task and how it ended.

An attempt ends exactly once, by whichever comes first: the job returning or raising, its
timeout firing, a ``cancel_run``, or a kill at shutdown.  The first ending is recorded;
anything the job does afterwards is discarded.  The job's task may outlive that moment
(it gets ``RunInfo.cancel`` and then, after ``cancel_grace``, a task cancel), and its
worker slot stays taken until the task has really ended.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

from ._chain import Outcome
from ._jobs import JobFunc, decode_args
from ._runs import RunInfo
from ._store._rows import RunRow


@dataclass(frozen=True, slots=True)
class Ending:
    outcome: Outcome
    error: str | None = None
    result: str | None = None


class Attempt:
    """A claimed row being executed here."""

    __slots__ = ("_info", "args", "contract", "decode_error", "ending", "kwargs", "row", "task")

    def __init__(self, row: RunRow, contract: JobFunc) -> None:
        assert row.run_started_at is not None and row.run_started_by is not None
        self.row = row
        self.contract = contract
        self.decode_error: ValueError | None = None
        try:
            self.args, self.kwargs = decode_args(row.job_args, row.job_kwargs)
        except ValueError as exc:  # written by something other than jobsd_async
            self.args, self.kwargs, self.decode_error = (), {}, exc
        self.ending: Ending | None = None
        self.task: asyncio.Task[Any] | None = None
        self._info: RunInfo | None = None  # built only for jobs that take it

    @property
    def info(self) -> RunInfo:
        """The RunInfo handed to the job (its ``cancel`` is set when the attempt is stopped)."""
        if self._info is None:
            row = self.row
            assert row.run_started_at is not None and row.run_started_by is not None
            self._info = RunInfo(
                id=row.id,
                origin_id=row.origin_id,
                parent_id=row.parent_id,
                name=row.name,
                job=row.job,
                job_args=self.args,
                job_kwargs=dict(self.kwargs),
                run_at=row.run_at,
                run_total_count=row.run_total_count,
                run_success_count=row.run_success_count,
                run_success_limit=row.run_success_limit,
                run_started_at=row.run_started_at,
                run_started_by=row.run_started_by,
                run_timeout=row.run_timeout,
                run_timeout_at=row.run_timeout_at,
                retries_on_error_count=row.retries_on_error_count,
                retries_on_error_limit=row.retries_on_error_limit,
                retries_on_timeout_count=row.retries_on_timeout_count,
                retries_on_timeout_limit=row.retries_on_timeout_limit,
                schedule=row.schedule,
                created_at=row.created_at,
                created_by=row.created_by,
                cancel=asyncio.Event(),
            )
            if self.ending is not None and self.ending.outcome not in (Outcome.SUCCEEDED, Outcome.FAILED):
                self._info.cancel.set()
        return self._info

    async def call(self, executor: Executor) -> Any:
        """Run the job function with this attempt's arguments."""
        if self.decode_error is not None:
            raise self.decode_error
        contract = self.contract
        info = self.info if contract.takes_run_info else None
        return await contract.call(info, self.args, self.kwargs, executor)

    def end(self, ending: Ending) -> bool:
        """Record how the attempt ended; False if it had already ended another way."""
        if self.ending is not None:
            return False
        self.ending = ending
        if self._info is not None and ending.outcome not in (Outcome.SUCCEEDED, Outcome.FAILED):
            self._info.cancel.set()
        return True

    @property
    def log_extra(self) -> dict[str, Any]:
        return {"run_id": self.row.run_id, "row_id": self.row.id, "job": self.row.job}
