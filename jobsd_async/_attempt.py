"""One attempt of a run on this instance: the row, its decoded arguments, and how it ended.

An attempt ends exactly once, by whichever comes first: the job returning or raising, its
timeout firing, a ``cancel_run``, or a kill at shutdown.  The first ending is recorded;
anything the job does afterwards is discarded.  The job's task may outlive that moment
(it gets ``RunInfo.cancel`` and then, after ``cancel_grace``, a task cancel), and its
worker slot stays taken until the task, and the thread of a sync job, have really ended.

:func:`succeeded` and :func:`failed` say how a returned value or a raised exception ends
an attempt: what is stored, and whether a retry follows (``Retry``, the retry policy).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._chain import Outcome, describe, traceback_text
from ._jobs import JobFunc
from ._retry import Retry, RetryIf, RetryPolicy
from ._runs import ProgressSink, RunInfo
from ._store._rows import RunRow
from ._text import MAX_ERROR_LENGTH, MAX_RESULT_LENGTH, storable


@dataclass(frozen=True, slots=True)
class Ending:
    """How an attempt ended; ``retry_after`` (seconds) delays its follow-up, if it has one,
    and a failure with ``retry`` False is not retried (its retry policy said so)."""

    outcome: Outcome
    error: str | None = None
    result: str | None = None
    retry_after: float | None = None
    traceback: str | None = None
    retry: bool = True

    @classmethod
    def of(cls, outcome: Outcome) -> Ending:
        """The ending of a stop from outside (timeout, cancel, kill), with its recorded text."""
        return cls(outcome, outcome.error_text())


class Attempt:
    """A claimed row being executed here."""

    __slots__ = (
        "_info",
        "args",
        "contract",
        "ending",
        "holders",
        "kwargs",
        "misfits",
        "progress",
        "row",
        "task",
    )

    def __init__(self, row: RunRow, contract: JobFunc | None) -> None:
        assert row.run_started_at is not None and row.run_started_by is not None
        self.row = row
        self.contract = contract  # None: the job is not registered here (see WorkerPool)
        self.args: tuple[Any, ...] = ()
        self.kwargs: dict[str, Any] = {}
        self.misfits: list[str] = []  # stored arguments passed as JSON: they fit no annotation
        self.ending: Ending | None = None
        self.task: asyncio.Task[None] | None = None
        self.holders = 0  # the task, and the thread of a sync job, each hold the slot
        self._info: RunInfo | None = None  # built only for jobs that take it
        self.progress: ProgressSink | None = None  # where its RunInfo's progress reports go

    def decode(self) -> None:
        """Decode the stored arguments; raises ValueError (or RecursionError) if they are not JSON."""
        assert self.contract is not None
        self.args, self.kwargs = self.contract.codec.decode(
            self.row.job_args, self.row.job_kwargs, self.misfits.append
        )

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
                _progress=self.progress,
            )
            if self.ending is not None and self.ending.outcome.stops_the_job:
                self._info.cancel.set()
        return self._info

    def end(self, ending: Ending) -> bool:
        """Record how the attempt ended; False if it had already ended another way."""
        if self.ending is not None:
            return False
        self.ending = ending
        if self._info is not None and ending.outcome.stops_the_job:
            self._info.cancel.set()
        return True

    @property
    def log_extra(self) -> dict[str, Any]:
        row = self.row
        return {"run_id": row.run_id, "row_id": row.id, "job": row.job, "attempt": row.run_total_count}


def failed(
    attempt: Attempt, exc: BaseException, retry_if: RetryIf | None, log: logging.Logger, extra: dict[str, Any]
) -> Ending:
    """How an attempt whose job raised ``exc`` ends: failed, retried unless its policy says not."""
    text = Outcome.FAILED.error_text(exc)
    stack = traceback_text(exc)
    row = attempt.row
    if isinstance(exc, Retry):
        log.info(
            "jobsd: run %s asks to be retried%s: %s",
            row.run_id,
            "" if exc.after is None else f" in {exc.after:g} s",
            text,
            extra=extra,
        )
        return Ending(Outcome.FAILED, text, traceback=stack, retry_after=exc.after)
    retry = _retries(attempt, exc, retry_if, log, extra)
    message = "jobsd: run %s failed (attempt %d)" + ("" if retry else "; its retry policy says no retry")
    args = (row.run_id, row.run_total_count)
    try:
        log.error(message, *args, exc_info=exc, extra=extra)
    except BaseException:  # formatting the traceback called a hostile __str__
        log.error(message + ": %s", *args, text, extra=extra)
    return Ending(Outcome.FAILED, text, traceback=stack, retry=retry)


def _retries(
    attempt: Attempt, exc: BaseException, retry_if: RetryIf | None, log: logging.Logger, extra: dict[str, Any]
) -> bool:
    """Whether the failure ``exc`` is retried: the row's policy, else the job's ``retry_if``."""
    policy = RetryPolicy.from_json(attempt.row.retry_policy)
    if policy is not None:
        return policy.retries(exc)
    if retry_if is None:
        return True
    try:
        return bool(retry_if(exc))
    except Exception as problem:
        log.error(
            "jobsd: run %s: retry_if of job %r raised %s; retrying",
            attempt.row.run_id,
            attempt.row.job,
            describe(problem),
            extra=extra,
        )
        return True


def succeeded(
    attempt: Attempt, value: object, log: logging.Logger, extra: Callable[[], dict[str, Any]]
) -> Ending:
    """A returned value: success with its JSON, or a failure (never retried) if it has none.

    ``extra`` gives the log record's extra fields, built only if something is logged.
    """
    assert attempt.contract is not None
    try:
        text = attempt.contract.codec.encode_result(value)
    except Exception as exc:  # not JSON, or nested too deep to encode
        problem = describe(exc)
    else:
        if text is None or len(text) <= MAX_RESULT_LENGTH:
            return Ending(Outcome.SUCCEEDED, result=text)
        problem = (
            f"ResultError: the result of job {attempt.row.job!r} is {len(text)} characters of JSON, "
            f"more than the {MAX_RESULT_LENGTH} stored"
        )
    log.error(
        "jobsd: run %s failed: its result cannot be stored (not retried): %s",
        attempt.row.run_id,
        problem,
        extra=extra(),
    )
    return Ending(Outcome.FAILED, storable(problem, MAX_ERROR_LENGTH), retry=False)
