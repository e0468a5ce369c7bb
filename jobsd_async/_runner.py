"""The running side of an instance: poller, dispatcher, attempts, completions, heartbeat.

- The **poller** reads pending rows due soon for locally registered jobs (any creator,
  this instance included) into the local queue, every ``poll_interval``.
- The **dispatcher** waits for a free worker slot and a due row, claims up to the free
  slots in one statement and starts a task per won row.
- Each **attempt** task runs the job; its ending is written by a **completion** that retries
  with backoff until the database takes it.
- The **heartbeat** writes ``last_seen_at`` and the counters.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from collections.abc import Callable, Coroutine, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any

from ._attempt import Attempt, Ending
from ._chain import Outcome
from ._clock import DbClock
from ._completer import Completer
from ._config import Config
from ._jobs import Job, encode_result
from ._listener import PgListener
from ._queue import LocalQueue
from ._resurrector import Resurrector
from ._schedules import ScheduleFunc
from ._signal import wait_event
from ._store import _cancel, _claim, _instances, _prune, _read
from ._store._complete import Completed
from ._store._dialect import DRIVER_ERRORS
from ._store._rows import RunRow, Store

_EARLY_RETRY = timedelta(milliseconds=20)  # re-try a claim that came before the DB clock
_EARLY_TRIES = 5  # ... this many times, then leave the row to the poller
_LOOPS_STOP = 10.0  # seconds down() waits for the loops to finish their current step


class Runner:
    """Executes runs for one started JobsD instance."""

    def __init__(
        self,
        *,
        config: Config,
        store: Store,
        clock: DbClock,
        instance_id: int,
        jobs: Mapping[str, Job[Any]],
        schedules: Mapping[str, ScheduleFunc],
        counters: _instances.Counters,
        on_chain_change: Callable[[], None],
    ) -> None:
        self._config = config
        self._store = store
        self._clock = clock
        self._id = instance_id
        self._jobs = jobs
        self._schedules = schedules
        self._counters = counters
        self._log = config.logger
        self._extra = {"instance_id": instance_id}
        self._queue = LocalQueue()
        self._attempts: dict[int, Attempt] = {}  # by row id, until the completion is written
        self._wakeup = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []
        self._job_tasks: set[asyncio.Task[None]] = set()
        self._executor = ThreadPoolExecutor(
            max_workers=max(1, config.workers), thread_name_prefix=f"jobsd-{instance_id}"
        )
        # Loops end at their next wait once this is set: cancelling them mid-statement could
        # leave a pooled connection in an open transaction (and SQLite's lock with it).
        self._stopping = asyncio.Event()
        self._reserved = 0  # slots held for rows being inserted already claimed here
        self._no_reservations = asyncio.Event()
        self._no_reservations.set()
        self.last_seen_at: datetime | None = None
        self._completer = Completer(
            config=config,
            store=store,
            clock=clock,
            instance_id=instance_id,
            schedules=schedules,
            counters=counters,
            on_follow_up=self.enqueue,
            on_chain_change=on_chain_change,
        )
        self._resurrector = Resurrector(
            config=config,
            store=store,
            completer=self._completer,
            counters=counters,
            instance_id=instance_id,
            is_running_here=self._attempts.__contains__,
            stop=self._stopping,
        )
        self._claim_now = False  # a NOTIFY said rows were inserted: try a claim at once
        self._listener = (
            PgListener(
                store.dialect.engine,
                (store.new_channel, store.cancel_channel),
                instance_id,
                on_new=self._rows_inserted,
                on_cancel=self.cancel_local,
                logger=config.logger,
            )
            if store.dialect.is_postgresql and config.workers > 0
            else None
        )

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Start the background loops (the poller polls at once)."""
        if self._listener is not None:
            await self._listener.ensure()
        if self._config.workers > 0:
            self._spawn_loop(self._poll_loop(), "jobsd poller")
            self._spawn_loop(self._dispatch_loop(), "jobsd dispatcher")
        self._spawn_loop(self._heartbeat_loop(), "jobsd heartbeat")
        self._spawn_loop(self._resurrector.loop(), "jobsd timeout checker")
        if self._config.retention is not None:
            self._spawn_loop(self._prune_loop(self._config.retention), "jobsd pruner")

    def _spawn_loop(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        self._loops.append(asyncio.create_task(coro, name=f"{name} #{self._id}"))

    async def stop(self) -> None:
        """Stop taking work, drain running jobs, kill what is left, flush completions."""
        self._stopping.set()
        self._wakeup.set()
        _, stuck = await asyncio.wait(self._loops, timeout=_LOOPS_STOP)
        for task in stuck:  # e.g. a resurrection retrying against an unreachable database
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        if self._listener is not None:
            await self._listener.stop()
        self._loops.clear()
        self._queue.clear()
        # Rows being inserted claimed here start once inserted; let them, then drain them.
        await wait_event(self._no_reservations, _LOOPS_STOP)
        await self._drain()
        abandoned = await self._completer.close()
        if abandoned:
            self._log.error(
                "jobsd: %d completions could not be written before shutdown; "
                "their runs will be recovered by the timeout check",
                abandoned,
                extra=self._extra,
            )
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _drain(self) -> None:
        running = {t for t in self._job_tasks if not t.done()}
        if not running:
            return
        self._log.info(
            "jobsd: waiting up to %ss for %d running jobs",
            self._config.shutdown_timeout,
            len(running),
            extra=self._extra,
        )
        _, still = await asyncio.wait(running, timeout=self._config.shutdown_timeout)
        if not still:
            return
        for attempt in list(self._attempts.values()):
            if attempt.task in still:
                self._end(attempt, Ending(Outcome.KILLED, Outcome.KILLED.error_text()))
        _, still = await asyncio.wait(still, timeout=self._config.cancel_grace)
        for task in still:
            task.cancel()
        await asyncio.gather(*still, return_exceptions=True)

    # ---------------------------------------------------------------- the local queue

    def enqueue(self, row_id: int, due: datetime) -> None:
        """Offer a pending row to this instance's dispatcher."""
        if self._stopping.is_set() or self._config.workers == 0 or row_id in self._attempts:
            return
        if self._queue.push(row_id, due):
            self._wakeup.set()

    def is_runnable_here(self, job: str) -> bool:
        return self._config.workers > 0 and job in self._jobs

    def reserve_slot(self, job: str) -> bool:
        """Hold a free worker slot for a run of ``job`` about to be inserted already claimed.

        The holder must then call ``start_claimed`` with the row, or ``release_slot``.
        """
        if self._stopping.is_set() or not self.is_runnable_here(job) or self._free_slots() <= 0:
            return False
        self._reserved += 1
        self._no_reservations.clear()
        return True

    def release_slot(self) -> None:
        """Give back a reserved slot whose row was not inserted."""
        self._reserved -= 1
        if not self._reserved:
            self._no_reservations.set()
        self._wakeup.set()

    def start_claimed(self, row: RunRow) -> None:
        """Start, in its reserved slot, a row this instance inserted already claimed."""
        self._counters.runs_started += 1
        self._start(row)
        self.release_slot()

    def _free_slots(self) -> int:
        # A job's task holds its slot until it ends; a reserved slot is about to get a task.
        return self._config.workers - len(self._job_tasks) - self._reserved

    # ---------------------------------------------------------------- poller

    async def _poll_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.poll_once()
            except DRIVER_ERRORS as exc:
                self._log.warning("jobsd: poll failed: %s", exc, extra=self._extra)
            await wait_event(self._stopping, self._config.poll_interval)

    async def poll_once(self) -> None:
        store = self._store
        async with store.dialect.reading() as conn:
            await _read.sample_clock(store, conn, self._clock)
            rows = await _claim.poll_due(
                store,
                conn,
                jobs=list(self._jobs),
                schedules=list(self._schedules),
                horizon=self._config.poll_interval,
                limit=self._config.poll_limit,
            )
        for row_id, run_at in rows:
            self.enqueue(row_id, run_at)

    # ---------------------------------------------------------------- dispatcher

    async def _dispatch_loop(self) -> None:
        while not self._stopping.is_set():
            self._wakeup.clear()
            free = self._free_slots()
            timeout: float | None = None
            if free > 0:
                now = self._clock.now()
                # Queued ids are hints: a claim takes whatever is due, so pop only as many
                # as it may win, and keep the rest for the next one.
                due = self._queue.pop_due(now, free)
                if due or self._claim_now:
                    self._claim_now = False
                    await self._claim_and_start(due, free)
                    continue
                head = self._queue.next_due()
                if head is not None:
                    timeout = max(0.0, (head - now).total_seconds())
            if not self._stopping.is_set():
                await wait_event(self._wakeup, timeout)

    async def _claim_and_start(self, due: list[int], free: int) -> None:
        """Claim up to ``free`` due rows; ``due`` are the queued ids that prompted it."""
        store = self._store
        try:
            won = await store.dialect.retrying(
                lambda conn: _claim.claim_due(
                    store,
                    conn,
                    jobs=list(self._jobs),
                    schedules=list(self._schedules),
                    limit=free,
                    instance_id=self._id,
                )
            )
        except DRIVER_ERRORS as exc:
            # The claim may have committed before the error: such rows are ours but not
            # running; the resurrector picks them up.
            self._log.warning("jobsd: claim failed: %s", exc, extra=self._extra)
            retry_at = self._clock.now() + timedelta(seconds=1)
            for row_id in due:
                self.enqueue(row_id, retry_at)
            return
        for row in won:
            self._counters.runs_started += 1
            self._queue.discard(row.id)
            self._start(row)
        if len(won) == free:
            # Slots ran out first: more may be due, whether queued here or not; claim again
            # as soon as a slot frees up.
            self._claim_now = True
            retry_at = self._clock.now()
            for row_id in due:
                if row_id not in self._attempts:
                    self.enqueue(row_id, retry_at)
        else:
            # The database had nothing more for us: the rest were taken by others, or are not
            # due yet by the database clock (then try again shortly, a few times).
            retry_at = self._clock.now() + _EARLY_RETRY
            for row_id in due:
                if row_id in self._attempts:
                    continue
                if self._queue.note_try(row_id) < _EARLY_TRIES:
                    self.enqueue(row_id, retry_at)
                else:
                    self._queue.forget(row_id)

    def _start(self, row: RunRow) -> None:
        job = self._jobs[row.job]
        attempt = Attempt(row, job.contract)
        self._attempts[row.id] = attempt
        task = asyncio.create_task(self._execute(attempt), name=f"jobsd run {row.id}")
        attempt.task = task
        self._job_tasks.add(task)
        task.add_done_callback(self._release_slot)

    def _release_slot(self, task: asyncio.Task[None]) -> None:
        self._job_tasks.discard(task)
        self._wakeup.set()

    # ---------------------------------------------------------------- attempts

    async def _execute(self, attempt: Attempt) -> None:
        row = attempt.row
        loop = asyncio.get_running_loop()
        timer = None
        if row.run_timeout_at is not None and row.run_timeout is not None:
            # Counted from now, which is just after the claim time the deadline is based on:
            # never early.  (Our estimate of the database clock may be off by half a round
            # trip, which could have fired the timer early.)
            timer = loop.call_later(row.run_timeout, self._on_timeout, attempt)
        self._log.debug("jobsd: run %s started", row.id, extra={**self._extra, **attempt.log_extra})
        try:
            value = await attempt.call(self._executor)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if attempt.ending is not None:
                return  # we cancelled it after its timeout, cancel or kill
            if task is not None and task.cancelling():
                self._end(attempt, Ending(Outcome.KILLED, Outcome.KILLED.error_text()))
                raise
            self._end(attempt, Ending(Outcome.FAILED, "CancelledError: job raised CancelledError"))
        except Exception as exc:
            if attempt.ending is None:
                self._log.warning(
                    "jobsd: run %s failed: %r", row.id, exc, extra={**self._extra, **attempt.log_extra}
                )
            self._end(attempt, Ending(Outcome.FAILED, Outcome.FAILED.error_text(exc)))
        else:
            self._end(attempt, Ending(Outcome.SUCCEEDED, result=self._result_text(attempt, value)))
        finally:
            if timer is not None:
                timer.cancel()

    def _result_text(self, attempt: Attempt, value: object) -> str | None:
        try:
            return encode_result(value)
        except (TypeError, ValueError) as exc:
            self._log.warning(
                "jobsd: result of run %s is not JSON-serializable, stored as None: %s",
                attempt.row.id,
                exc,
                extra={**self._extra, **attempt.log_extra},
            )
            return None

    def _on_timeout(self, attempt: Attempt) -> None:
        if self._stop(attempt, Outcome.TIMED_OUT):
            self._log.warning(
                "jobsd: run %s timed out", attempt.row.id, extra={**self._extra, **attempt.log_extra}
            )

    def _rows_inserted(self) -> None:
        self._claim_now = True
        self._wakeup.set()

    def cancel_local(self, row_id: int) -> None:
        """Stop an attempt running here whose chain ``cancel_run`` cancelled."""
        attempt = self._attempts.get(row_id)
        if attempt is not None and self._stop(attempt, Outcome.CANCELLED):
            self._log.info("jobsd: run %s cancelled", row_id, extra={**self._extra, **attempt.log_extra})

    def _stop(self, attempt: Attempt, outcome: Outcome) -> bool:
        """End the attempt now (setting RunInfo.cancel); cancel its task after ``cancel_grace``."""
        if not self._end(attempt, Ending(outcome, outcome.error_text())):
            return False
        task = attempt.task
        if task is not None and not task.done():
            asyncio.get_running_loop().call_later(self._config.cancel_grace, task.cancel)
        return True

    def _end(self, attempt: Attempt, ending: Ending) -> bool:
        if not attempt.end(ending):
            return False
        self._spawn_completion(attempt, ending)
        return True

    # ---------------------------------------------------------------- completions

    def _spawn_completion(self, attempt: Attempt, ending: Ending) -> None:
        future = self._completer.submit(attempt.row, ending, owner_id=self._id)
        future.add_done_callback(functools.partial(self._completed, attempt, ending))

    def _completed(self, attempt: Attempt, ending: Ending, future: asyncio.Future[Completed | None]) -> None:
        self._attempts.pop(attempt.row.id, None)
        if future.cancelled():
            return  # abandoned at shutdown: the timeout check recovers the row
        exc = future.exception()
        if exc is not None:
            self._log.error(
                "jobsd: recording run %s failed: %r; the timeout check will recover it",
                attempt.row.id,
                exc,
                extra={**self._extra, **attempt.log_extra},
            )
        elif (done := future.result()) is not None:
            # Counted only with the completion that landed: a row closed elsewhere first
            # (resurrected, cancelled) is counted by whoever closed it.
            if not done.cancelled:
                if ending.outcome is Outcome.FAILED:
                    self._counters.runs_errors += 1
                elif ending.outcome is Outcome.TIMED_OUT:
                    self._counters.runs_timed_out += 1
        else:
            self._log.warning(
                "jobsd: run %s was already completed elsewhere; discarding its %s ending",
                attempt.row.id,
                ending.outcome.value,
                extra={**self._extra, **attempt.log_extra},
            )

    # ---------------------------------------------------------------- retention

    async def _prune_loop(self, retention: float) -> None:
        """Delete chains finished longer than ``retention`` ago, every ``timeout_check``."""
        while not self._stopping.is_set():
            try:
                deleted = await _prune.prune(self._store, older_than=retention)
                if deleted:
                    self._log.info("jobsd: pruned %d finished runs", deleted, extra=self._extra)
            except DRIVER_ERRORS as exc:
                self._log.warning("jobsd: pruning failed: %s", exc, extra=self._extra)
            await wait_event(self._stopping, self._config.timeout_check)

    # ---------------------------------------------------------------- heartbeat

    async def _heartbeat_loop(self) -> None:
        while True:
            await wait_event(self._stopping, self._config.heartbeat_interval)
            if self._stopping.is_set():
                return  # down() writes the last beat itself
            if self._listener is not None:
                await self._listener.ensure()
            try:
                await self.beat()
                await self._check_cancels()
            except DRIVER_ERRORS as exc:
                self._log.warning("jobsd: heartbeat failed: %s", exc, extra=self._extra)

    async def _check_cancels(self) -> None:
        """Stop attempts running here whose chain was cancelled from another instance."""
        running = [row_id for row_id, a in self._attempts.items() if a.ending is None]
        if not running:
            return
        async with self._store.dialect.reading() as conn:
            flagged = await _cancel.cancel_requested(self._store, conn, running)
        for row_id in flagged:
            self.cancel_local(row_id)

    async def beat(self, *, shutdown: bool = False) -> None:
        counters = dataclasses.replace(self._counters)
        await self._store.dialect.retrying(
            lambda conn: _instances.beat(self._store, conn, self._id, counters, shutdown=shutdown)
        )
        self.last_seen_at = self._clock.now()
