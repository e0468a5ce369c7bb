"""The dispatcher: finds due work and claims it, never more than the free worker slots.

- The **poller** reads pending rows due soon for locally registered jobs (any creator,
  this instance included) into the local queue, every ``poll_interval``.
- The **claim loop** waits for a due row (or a wake-up: a run created here, a NOTIFY), takes
  the free slots' permits, claims up to that many rows in one statement, gives back the
  permits it did not use and starts the rows it won in the worker pool.
- **Direct start** (``reserve`` / ``start_claimed``): a run created here that is inserted
  already claimed takes its permit before the insert.
- **Hand-back**: a claimed row this instance cannot run (another version of its job, or a job
  it does not have) returns to pending for the instances that can, and is avoided here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from ._attempt import Attempt
from ._clock import DbClock
from ._config import Config, JobLimits
from ._jobs import Job
from ._pool import WorkerPool
from ._queue import LocalQueue
from ._schedules import ScheduleFunc
from ._signal import wait_event
from ._store import _claim, _instances, _limits, _read
from ._store._claim import Limited
from ._store._dialect import DRIVER_ERRORS
from ._store._instances import Counters
from ._store._rows import RunRow, Store
from ._supervisor import Loops, ticking

# A claim that came before the database clock (our estimate of it is off by up to half the
# round trip of its last reading, which a loaded host makes long) is tried again after
# 20 ms, 40 ms, 80 ms ... (about 2.5 s in all), then the row is left to the poller.
_EARLY_RETRY = 0.02
_EARLY_TRIES = 8
_HAND_BACK_DELAY = 1.0  # seconds before a handed-back row is due again
_AVOID_FOR = 600.0  # seconds this instance leaves a handed-back row alone
_RESERVATIONS_WAIT = 10.0  # seconds stop() waits for inserts that reserved a slot


class Dispatcher:
    """Claims due rows for one instance and starts them in its worker pool."""

    def __init__(
        self,
        *,
        config: Config,
        store: Store,
        clock: DbClock,
        instance_id: int,
        jobs: Mapping[str, Job[Any]],
        schedules: Mapping[str, ScheduleFunc],
        counters: Counters,
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
        self._wakeup = asyncio.Event()
        self._claim_now = False  # rows may be due that are not queued here: claim at once
        self._avoid: dict[int, float] = {}  # handed-back row id -> monotonic time to forget it
        self._reserved = 0  # permits held for rows being inserted already claimed here
        self._no_reservations = asyncio.Event()
        self._no_reservations.set()
        self._loops = Loops(f"#{instance_id}", log=config.logger, extra=self._extra)
        # Jobs with cluster-wide limits are claimed apart (see ``_claim.claim_limited``); the
        # limits in force are the cluster's, read at every poll (see ``_store._limits``).
        self._unlimited: list[str] = []
        self._limited: dict[str, JobLimits] = {}
        self._set_limits({name: job.limits.spec for name, job in jobs.items() if job.limits is not None})
        # A limited job had due runs its limits held back: a finished run may free a slot.
        self._held_back = False
        self.pool: WorkerPool | None = None  # set by the runner before start()

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Start the poller (which polls at once) and the claim loop."""
        if self._config.workers == 0:
            return
        stopping = self._loops.stopping
        self._loops.spawn(
            "jobsd poller", ticking(self.poll_once, self._config.poll_interval, stopping), retry_max=5.0
        )
        self._loops.spawn("jobsd dispatcher", self._dispatch_step, retry_max=1.0)

    async def stop(self) -> None:
        """Stop claiming; rows being inserted already claimed here still start (then drain)."""
        self._loops.stopping.set()
        self._wakeup.set()
        await self._loops.stop()
        self._queue.clear()
        await wait_event(self._no_reservations, _RESERVATIONS_WAIT)

    @property
    def _stopping(self) -> bool:
        return self._loops.stopping.is_set()

    def _set_limits(self, limited: dict[str, JobLimits]) -> None:
        self._limited = limited
        self._unlimited = [name for name in self._jobs if name not in limited]

    # ---------------------------------------------------------------- the local queue

    def enqueue(self, row_id: int, due: datetime) -> None:
        """Offer a pending row to this instance's dispatcher."""
        if self._stopping or self._config.workers == 0 or row_id in self._avoid:
            return
        if self._queue.push(row_id, due):
            self._wakeup.set()

    def wake(self) -> None:
        """Rows may have been inserted (a NOTIFY): try a claim at once."""
        self._claim_now = True
        self._wakeup.set()

    def wake_for_slot(self) -> None:
        """A slot was freed: a row waiting for one can be claimed."""
        if self._held_back:
            self._claim_now = True
        self._wakeup.set()

    def runs_finished(self) -> None:
        """Runs finished somewhere in the cluster (a PostgreSQL notification): runs a
        limit held back may be claimable now."""
        if self._held_back:
            self.wake()

    def is_runnable_here(self, job: str) -> bool:
        return self._config.workers > 0 and job in self._jobs

    def takes_queue(self, queue: str) -> bool:
        """Whether this instance takes runs from ``queue``."""
        return self._config.queues is None or queue in self._config.queues

    # ---------------------------------------------------------------- direct start

    async def reserve(self, job: str, queue: str) -> bool:
        """Take a slot for a run of ``job`` in ``queue`` about to be inserted already claimed
        here (never for a job with limits, whose runs only start through a claim).

        The caller must then call :meth:`start_claimed` with the row, or :meth:`unreserve`.
        """
        assert self.pool is not None
        if (
            self._stopping
            or not self.is_runnable_here(job)
            or job in self._limited
            or not self.takes_queue(queue)
            or not await self.pool.slots.take(1)
        ):
            return False
        self._reserved += 1
        self._no_reservations.clear()
        return True

    def unreserve(self) -> None:
        """Give back a reserved slot whose row was not inserted."""
        assert self.pool is not None
        self._done_reserving()
        self.pool.slots.give()

    def start_claimed(self, row: RunRow) -> bool:
        """Start, in its reserved slot, a row this instance inserted already claimed.

        False once the instance has stopped claiming: the slot is given back and the caller
        hands the row back (it must not start on an instance going down).
        """
        assert self.pool is not None
        if self._stopping:
            self.unreserve()
            return False
        self._counters.runs_started += 1
        self.pool.start(row)
        self._done_reserving()
        return True

    def _done_reserving(self) -> None:
        self._reserved -= 1
        if not self._reserved:
            self._no_reservations.set()

    # ---------------------------------------------------------------- poller

    async def poll_once(self) -> None:
        store = self._store
        async with store.dialect.reading(patient=True) as conn:
            await _read.sample_clock(store, conn, self._clock)
            rows = await _claim.poll_due(
                store,
                conn,
                jobs=list(self._jobs),
                schedules=list(self._schedules),
                horizon=self._config.poll_interval,
                limit=self._config.poll_limit,
                queues=self._config.queues,
            )
            limited = await _limits.read(store, conn, list(self._jobs))
        self._set_limits(limited)
        self._forget_avoided()
        for row_id, run_at in rows:
            self.enqueue(row_id, run_at)

    async def nothing_due(self) -> bool:
        """Whether no row this instance could claim is due now (``jobsd worker --burst``)."""
        if self._config.workers == 0 or not self._jobs:
            return True
        store = self._store
        async with store.dialect.reading() as conn:
            rows = await _claim.poll_due(
                store,
                conn,
                jobs=list(self._jobs),
                schedules=list(self._schedules),
                horizon=0.0,
                limit=1,
                queues=self._config.queues,
            )
        return not [row_id for row_id, _ in rows if row_id not in self._avoid]

    # ---------------------------------------------------------------- claims

    async def _dispatch_step(self) -> None:
        """Claim what is due, if a slot is free; else wait for a row to come due or a slot."""
        assert self.pool is not None
        self._wakeup.clear()
        now = self._clock.now()
        head = self._queue.next_due()
        if self._claim_now or (head is not None and head <= now):
            free = await self.pool.slots.take(self.pool.slots.total)
            if free:
                await self._claim_and_start(now, free)
                return
            head = None  # no slot: wait for one to free up (which wakes us)
        timeout = None if head is None else max(0.0, (head - now).total_seconds())
        if not self._stopping:
            await wait_event(self._wakeup, timeout)

    async def _claim_and_start(self, now: datetime, free: int) -> None:
        """Claim up to ``free`` due rows (holding ``free`` permits), start what was won."""
        assert self.pool is not None
        self._claim_now = False
        # Queued ids are hints: a claim takes whatever is due, so pop only as many as it may
        # win, and keep the rest for the next one.
        due = self._queue.pop_due(now, free)
        won: list[RunRow] = []
        try:
            won = await self._claim(free)
        except DRIVER_ERRORS as exc:
            # The claim may have committed before the error: such rows are ours but not
            # running, and the timeout check hands them over.
            self._log.warning("jobsd: claim failed: %s", exc, extra=self._extra)
            retry_at = self._clock.now() + timedelta(seconds=1)
            for row_id in due:
                self.enqueue(row_id, retry_at)
            return
        finally:
            self.pool.slots.give(free - len(won))  # each row won keeps its permit
        for row in won:
            self._counters.runs_started += 1
            self._queue.discard(row.id)
            self.pool.start(row)
        if len(won) == free:
            # Slots ran out first: more may be due, whether queued here or not; claim again
            # as soon as a slot frees up.
            self._claim_now = True
            retry_at = self._clock.now()
            for row_id in due:
                if not self.pool.is_tracking(row_id):
                    self.enqueue(row_id, retry_at)
            return
        # The database had nothing more for us: the rest were taken by others, or are not
        # due yet by the database clock (then try again shortly, a few times).
        now = self._clock.now()
        for row_id in due:
            if self.pool.is_tracking(row_id):
                continue
            tries = self._queue.note_try(row_id)
            if tries < _EARLY_TRIES:
                self.enqueue(row_id, now + timedelta(seconds=_EARLY_RETRY * 2 ** (tries - 1)))
            else:
                self._queue.forget(row_id)

    async def _claim(self, free: int) -> list[RunRow]:
        """Claim up to ``free`` due rows, highest priority first.

        Jobs without limits are claimed in one statement; each job with limits in a
        transaction of its own (see ``_claim.claim_limited``).  When a limited job has runs
        due, the others' runs of a higher priority are claimed before them, and the rest
        after them.
        """
        store = self._store
        top: int | None = None
        if self._limited:
            async with store.dialect.reading() as conn:
                top = await _claim.top_priority(
                    store,
                    conn,
                    jobs=list(self._limited),
                    schedules=list(self._schedules),
                    queues=self._config.queues,
                )
        won: list[RunRow] = []
        if self._unlimited:
            won = await self._claim_unlimited(free, above=top)
        if top is None:
            self._held_back = False
            return won
        held_back = False
        try:
            for job, limits in self._limited.items():
                if len(won) >= free:
                    held_back = True  # not tried: as good as held back
                    break
                claimed, left = await self._claim_limited(job, limits, free - len(won))
                won.extend(claimed)
                held_back = held_back or left
            if self._unlimited and len(won) < free:
                won.extend(await self._claim_unlimited(free - len(won), above=None))
        except DRIVER_ERRORS as exc:
            if not won:
                raise
            # What was claimed already starts; the rest waits for the next claim.
            self._log.warning("jobsd: claim failed: %s", exc, extra=self._extra)
            held_back = True
        self._held_back = held_back
        return won

    async def _claim_unlimited(self, limit: int, *, above: int | None) -> list[RunRow]:
        store = self._store
        return await store.dialect.retrying(
            lambda conn: _claim.claim_due(
                store,
                conn,
                jobs=self._unlimited,
                schedules=list(self._schedules),
                limit=limit,
                instance_id=self._id,
                avoid=list(self._avoid),
                queues=self._config.queues,
                above=above,
            ),
            # One UPDATE where the dialect returns what it changed; a claim whose answer
            # is lost is handed over by the timeout check, so it may run again.
            one_statement=store.dialect.update_returning,
        )

    async def _claim_limited(self, job: str, limits: JobLimits, limit: int) -> Limited:
        store = self._store
        return await store.dialect.retrying(
            lambda conn: _claim.claim_limited(
                store,
                conn,
                job=job,
                limits=limits,
                schedules=list(self._schedules),
                limit=limit,
                instance_id=self._id,
                avoid=list(self._avoid),
                queues=self._config.queues,
            )
        )

    # ---------------------------------------------------------------- hand-back

    async def leave_for_others(self, attempt: Attempt, problem: str) -> bool:
        """Hand ``attempt``'s row back if a live instance runs another version of its job.

        During a rolling deploy a run created by one version may not bind to the other's
        function: it is left for the instances that run the version it was made for.  With
        no such instance alive it cannot run anywhere, and the caller fails it.
        """
        row = attempt.row
        store = self._store
        local = attempt.contract.fingerprint if attempt.contract is not None else None
        async with store.dialect.reading() as conn:
            versions = await _instances.live_versions(store, conn, row.job, besides=self._id)
        if not versions - {local}:
            return False
        await store.dialect.retrying(
            lambda conn: _claim.hand_back(store, conn, row.id, instance_id=self._id, delay=_HAND_BACK_DELAY)
        )
        self._avoid[row.id] = time.monotonic() + _AVOID_FOR
        self._log.warning(
            "jobsd: run %s left for instances running another version of job %r: %s",
            row.run_id,
            row.job,
            problem,
            extra={**self._extra, **attempt.log_extra},
        )
        return True

    def _forget_avoided(self) -> None:
        now = time.monotonic()
        for row_id in [r for r, until in self._avoid.items() if until <= now]:
            del self._avoid[row_id]
