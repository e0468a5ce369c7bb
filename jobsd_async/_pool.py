"""The worker pool: the attempts running on this instance, bounded by ``workers`` slots.

- **Slots** are an ``asyncio.Semaphore(workers)``.  The dispatcher takes permits before it
  claims (never more rows than free slots); each started attempt holds one until its task
  has ended and, for a sync job, until its thread has returned, so ``workers`` bounds what
  really runs even when a job ignores its cancellation.
- **Attempts** run as tasks the pool owns (a task group whose members never cancel each
  other): an attempt catches whatever its job raises, ``BaseException`` included, and
  always ends in a recorded completion.  Sync jobs run on daemon threads, one per attempt
  (at most ``workers``), so a job that never returns cannot keep the process from exiting.
- **Stopping** an attempt — its timeout, a ``cancel_run``, a kill at shutdown — goes
  through one path, :meth:`WorkerPool.stop`: record the ending, set ``RunInfo.cancel``,
  cancel the task after ``cancel_grace``.  A kill's completion (and the follow-up another
  instance would run) is written only once the job has really ended, so no peer runs it
  while it still runs here.
- **Drain** at shutdown: wait up to ``shutdown_timeout``, kill what is left, and abandon
  (with an error log) a job that will not end even then; its run is handed over all the same.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from ._attempt import Attempt, Ending, failed, succeeded
from ._chain import Outcome, describe
from ._completer import Completer, Reported
from ._config import MAX_DURATION, Config
from ._deadlines import Deadlines
from ._jobs import Job
from ._progress import Progress
from ._retry import RetryIf
from ._signal import wait_event
from ._store._instances import Counters
from ._store._rows import RunRow, Store
from ._telemetry import Telemetry
from ._telemetry import recording as recording_telemetry
from ._text import MAX_ERROR_LENGTH, storable

_ABANDON_AFTER = 1.0  # seconds after its task cancel that a killed attempt is abandoned at shutdown
_HAND_OVER_LATER = 5.0  # seconds before a run that could not be checked or handed back is due again
_NOT_RECORDING = contextlib.nullcontext(None)

LeaveForOthers = Callable[[Attempt, str], Awaitable[bool]]
"""Asked when a claimed row cannot run here; True if it was handed back for other instances."""


class _RaisedInThread(Exception):
    """Carries a ``BaseException`` that is not an ``Exception`` out of a sync job's thread.

    (Raised bare through the future that awaits the thread, a ``GeneratorExit`` escapes the
    handler meant to catch it.)
    """

    def __init__(self, raised: BaseException) -> None:
        super().__init__(type(raised).__name__)
        self.raised = raised


class Slots:
    """The ``workers`` permits, as an ``asyncio.Semaphore``; taken without ever waiting."""

    def __init__(self, workers: int, on_release: Callable[[], None]) -> None:
        self.total = workers
        self._semaphore = asyncio.Semaphore(workers)
        self._on_release = on_release

    async def take(self, wanted: int) -> int:
        """Take up to ``wanted`` free permits; returns how many were taken (maybe 0)."""
        taken = 0
        while taken < wanted and not self._semaphore.locked():
            await self._semaphore.acquire()  # returns at once: the semaphore is not locked
            taken += 1
        return taken

    def give(self, count: int = 1) -> None:
        """Give back ``count`` permits."""
        for _ in range(count):
            self._semaphore.release()
        if count:
            self._on_release()


class WorkerPool:
    """Runs claimed rows as attempts; owns their tasks, threads, timeouts and slots."""

    def __init__(
        self,
        *,
        config: Config,
        store: Store,
        jobs: Mapping[str, Job[Any]],
        completer: Completer,
        counters: Counters,
        instance_id: int,
        on_slot_free: Callable[[], None],
        leave_for_others: LeaveForOthers,
        telemetry: Telemetry,
    ) -> None:
        self._config = config
        self._store = store
        self._telemetry = telemetry
        self._jobs = jobs
        self._completer = completer
        self._counters = counters
        self._id = instance_id
        self._log = config.logger
        self._extra = {"instance_id": instance_id}
        self._leave_for_others = leave_for_others
        self.slots = Slots(config.workers, on_slot_free)
        self._attempts: dict[int, Attempt] = {}  # by row id, until its completion is written
        self._tasks: set[asyncio.Task[None]] = set()
        self._holding: set[int] = set()  # row ids whose attempt still holds its slot
        self._none_holding: asyncio.Event | None = None  # the drain's: set once no slot is held
        self._deferred: dict[int, Ending] = {}  # kills whose completion waits for the job to end
        self._hurry = asyncio.Event()  # set: shutdown hands running jobs over at once
        self._timeouts = Deadlines(lambda row_id: self.stop(row_id, Outcome.TIMED_OUT))

    # ---------------------------------------------------------------- what runs here

    def is_tracking(self, row_id: int) -> bool:
        """Whether ``row_id`` is an attempt of this pool whose completion is not yet written."""
        return row_id in self._attempts

    def running(self) -> list[int]:
        """Row ids of the attempts that have not ended yet."""
        return [row_id for row_id, a in self._attempts.items() if a.ending is None]

    @property
    def idle(self) -> bool:
        """Nothing runs here, and every ending has been handed to the completer."""
        return not self._attempts and not self._holding

    # ---------------------------------------------------------------- starting

    def start(self, row: RunRow) -> None:
        """Run ``row``, claimed by this instance, in a permit the caller took from ``slots``."""
        job = self._jobs.get(row.job)
        attempt = Attempt(row, job.contract if job is not None else None)
        self._attempts[row.id] = attempt
        self._holding.add(row.id)
        attempt.holders = 1
        task = asyncio.create_task(self._run(attempt), name=f"jobsd run {row.id}")
        attempt.task = task
        self._tasks.add(task)
        task.add_done_callback(lambda done: self._task_done(done, attempt))

    def _task_done(self, task: asyncio.Task[None], attempt: Attempt) -> None:
        self._tasks.discard(task)
        self._let_go(attempt)

    def _let_go(self, attempt: Attempt) -> None:
        """One holder of the attempt's slot is done (its task, or its job's thread)."""
        attempt.holders -= 1
        if attempt.holders:
            return
        self.slots.give()
        self._holding.discard(attempt.row.id)
        if not self._holding and self._none_holding is not None:
            self._none_holding.set()
        ending = self._deferred.pop(attempt.row.id, None)
        if ending is not None:  # a kill: its job has really ended, now hand the run over
            self._submit(attempt, ending)

    async def _run_sync(self, attempt: Attempt, call: Callable[[], Any]) -> Any:
        """Run a sync job's ``call`` on a daemon thread of its own; the thread holds the slot too."""
        loop = asyncio.get_running_loop()
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        attempt.holders += 1

        def work() -> None:
            try:
                result = call()
            except Exception as exc:
                future.set_exception(exc)
            except BaseException as exc:  # an awaiting future would mishandle these bare
                future.set_exception(_RaisedInThread(exc))
            else:
                future.set_result(result)
            # (A closed loop: nobody is left to run anything.)
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._let_go, attempt)

        future.set_running_or_notify_cancel()
        threading.Thread(target=work, name=f"jobsd-{self._id} run {attempt.row.id}", daemon=True).start()
        return await asyncio.wrap_future(future)

    # ---------------------------------------------------------------- running

    async def _run(self, attempt: Attempt) -> None:
        row = attempt.row
        deadline = None
        if row.run_timeout_at is not None and row.run_timeout is not None and row.run_timeout > 0:
            # Counted from now, just after the claim its deadline is based on: never early.
            deadline = self._timeouts.add(row.id, min(row.run_timeout, MAX_DURATION))
        try:
            ending = await self._execute(attempt)
        except asyncio.CancelledError:
            # Cancelled from outside the pool (the event loop is closing): hand the run over.
            self._end(attempt, Ending.of(Outcome.KILLED))
            raise
        except BaseException as exc:  # a defect of ours: still, the attempt ends recorded
            self._log.error(
                "jobsd: run %s: unexpected error", row.run_id, exc_info=True, extra=self._with(attempt)
            )
            ending = Ending(Outcome.KILLED, Outcome.KILLED.error_text(), retry_after=_HAND_OVER_LATER)
            if not isinstance(exc, Exception):
                self._end(attempt, ending)
                raise
        finally:
            if deadline is not None:
                self._timeouts.discard(row.id, deadline)
        if ending is not None:
            self._end(attempt, ending)

    async def _execute(self, attempt: Attempt) -> Ending | None:
        """Run the attempt's job; its ending, or None if it was stopped or handed back."""
        row = attempt.row
        contract = attempt.contract
        if contract is None:
            problem = f"job {row.job!r} is not registered on instance {self._id}"
            return await self._cannot_run(attempt, problem, "LookupError")
        try:
            attempt.decode()
        except Exception as exc:  # written by something other than jobsd_async
            return self._rejected(attempt, f"stored arguments cannot be decoded: {describe(exc)}")
        try:
            contract.check_args(row.job, attempt.args, attempt.kwargs)
        except Exception as exc:
            return await self._cannot_run(attempt, describe(exc), None)
        for misfit in attempt.misfits:
            self._log.warning("jobsd: run %s: %s", row.run_id, misfit, extra=self._with(attempt))
        if self._log.isEnabledFor(logging.DEBUG):  # (its extra costs more than the call)
            self._log.debug("jobsd: run %s started", row.run_id, extra=self._with(attempt))
        info = None
        if contract.takes_run_info:
            attempt.progress = Progress(self._store, row, self._id, self._log)
            info = attempt.info
        started = time.perf_counter()
        error: BaseException | None = None
        recording = recording_telemetry()
        with self._telemetry.processing(row) if recording else _NOT_RECORDING as span:  # current in the job
            try:
                value = await contract.call(
                    info, attempt.args, attempt.kwargs, lambda call: self._run_sync(attempt, call)
                )
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if attempt.ending is None and task is not None and task.cancelling():
                    raise
                if attempt.ending is not None:
                    ending = None  # we cancelled it after its timeout, cancel or kill
                else:
                    error = asyncio.CancelledError("job raised CancelledError")
                    ending = failed(attempt, error, self._retry_if(attempt), self._log, self._with(attempt))
            except BaseException as exc:  # SystemExit and KeyboardInterrupt too: a job never ends the host
                error = exc.raised if isinstance(exc, _RaisedInThread) else exc
                ending = failed(attempt, error, self._retry_if(attempt), self._log, self._with(attempt))
            else:
                ending = succeeded(attempt, value, self._log, lambda: self._with(attempt))
            if recording:
                final = ending or attempt.ending
                outcome = final.outcome.value if final is not None else Outcome.KILLED.value
                error_type = None
                if outcome != Outcome.SUCCEEDED.value:
                    error_type = type(error).__qualname__ if error is not None else outcome
                elapsed = time.perf_counter() - started
                self._telemetry.finished(span, row.job, outcome, error, error_type, elapsed)
        return ending

    async def _cannot_run(self, attempt: Attempt, problem: str, kind: str | None) -> Ending | None:
        """A claimed row this instance cannot run: left to other instances, else rejected."""
        try:
            left = await self._leave_for_others(attempt, problem)
        except Exception as exc:  # the database is away: hand it over (no retry used), try later
            self._log.warning(
                "jobsd: run %s cannot run here and could not be handed back: %s",
                attempt.row.run_id,
                exc,
                extra=self._with(attempt),
            )
            return Ending(Outcome.KILLED, Outcome.KILLED.error_text(), retry_after=_HAND_OVER_LATER)
        if left:
            self._attempts.pop(attempt.row.id, None)
            return None
        return self._rejected(attempt, f"{kind}: {problem}" if kind else problem)

    def _rejected(self, attempt: Attempt, text: str) -> Ending:
        self._log.error(
            "jobsd: run %s cannot run and ends: %s", attempt.row.run_id, text, extra=self._with(attempt)
        )
        return Ending(Outcome.REJECTED, storable(text, MAX_ERROR_LENGTH))

    def _retry_if(self, attempt: Attempt) -> RetryIf | None:
        job = self._jobs.get(attempt.row.job)
        return None if job is None else job.retry_if

    def _with(self, attempt: Attempt) -> dict[str, Any]:
        return {**self._extra, **attempt.log_extra}

    # ---------------------------------------------------------------- stopping

    def stop(self, row_id: int, outcome: Outcome) -> bool:
        """End the attempt on ``row_id`` now (timeout, cancel or kill) and tell its job to stop.

        Its ``RunInfo.cancel`` is set at once and its task cancelled ``cancel_grace`` later;
        the slot stays taken until the job has really ended.  False if it had already ended.
        """
        attempt = self._attempts.get(row_id)
        if attempt is None:
            return False
        ending = Ending.of(outcome)
        if outcome is Outcome.KILLED:
            if not attempt.end(ending):
                return False
            self._deferred[row_id] = ending  # written once the job has ended (see _let_go)
        elif not self._end(attempt, ending):
            return False
        level = logging.INFO if outcome is Outcome.CANCELLED else logging.WARNING
        self._log.log(level, "jobsd: run %s %s", attempt.row.run_id, outcome.value, extra=self._with(attempt))
        task = attempt.task
        if task is not None and not task.done():
            grace = 0.0 if self._hurry.is_set() else self._config.cancel_grace
            handle = asyncio.get_running_loop().call_later(grace, task.cancel)
            task.add_done_callback(lambda _: handle.cancel())
        return True

    def _end(self, attempt: Attempt, ending: Ending) -> bool:
        if not attempt.end(ending):
            return False
        self._submit(attempt, ending)
        return True

    def _submit(self, attempt: Attempt, ending: Ending) -> None:
        self._completer.submit_then(
            attempt.row,
            ending,
            owner_id=self._id,
            then=lambda written: self._recorded(attempt, ending, written),
        )

    def _recorded(self, attempt: Attempt, ending: Ending, future: Reported) -> None:
        self._attempts.pop(attempt.row.id, None)
        if future.cancelled():
            return  # abandoned at shutdown: another instance's timeout check recovers the row
        if future.exception() is not None:
            return  # the completer logged why; another instance's timeout check recovers the row
        done = future.result()
        if done is None:
            self._log.warning(
                "jobsd: run %s was already completed elsewhere; discarding its %s ending",
                attempt.row.run_id,
                ending.outcome.value,
                extra=self._with(attempt),
            )
        elif not done.cancelled:
            # Counted only with the completion that landed: a row closed elsewhere first
            # (resurrected, cancelled) is counted by whoever closed it.
            if ending.outcome in (Outcome.FAILED, Outcome.REJECTED):
                self._counters.runs_errors += 1
            elif ending.outcome is Outcome.TIMED_OUT:
                self._counters.runs_timed_out += 1

    # ---------------------------------------------------------------- shutdown

    def hurry(self) -> None:
        """Make the drain (under way or to come) kill and hand over running jobs at once."""
        self._hurry.set()

    async def drain(self) -> None:
        """Let running jobs finish for ``shutdown_timeout``, then kill and hand over the rest."""
        running = {t for t in self._tasks if not t.done()}
        config = self._config
        if running and not self._hurry.is_set():
            self._log.info(
                "jobsd: waiting %s for %d running jobs",
                "without limit" if config.shutdown_timeout is None else f"up to {config.shutdown_timeout}s",
                len(running),
                extra=self._extra,
            )
            # Until every job has ended, the timeout passes, or a second signal hurries us.
            ended = asyncio.ensure_future(asyncio.wait(running))
            hurried = asyncio.ensure_future(self._hurry.wait())
            try:
                await asyncio.wait(
                    {ended, hurried}, timeout=config.shutdown_timeout, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                ended.cancel()
                hurried.cancel()
        for row_id in self.running():
            self.stop(row_id, Outcome.KILLED)
        self._timeouts.close()
        # Every slot freed: each job (and each sync job's thread) has ended.
        if not self._holding:
            return
        grace = 0.0 if self._hurry.is_set() else config.cancel_grace
        self._none_holding = asyncio.Event()
        await wait_event(self._none_holding, grace + _ABANDON_AFTER)
        abandoned = list(self._holding)
        if abandoned:
            self._log.error(
                "jobsd: abandoning %d jobs that did not end when cancelled (they swallow "
                "CancelledError, or a sync job ignores RunInfo.cancel); their runs are handed over",
                len(abandoned),
                extra=self._extra,
            )
        for row_id in abandoned:
            ending = self._deferred.pop(row_id, None)
            attempt = self._attempts.get(row_id)
            if ending is not None and attempt is not None:
                self._submit(attempt, ending)
