"""Go JobsD v1.1.0 §9.5-9.8: ``runnable_test.go``, ``runState_test.go``, ``jobsD_test.go`` and
``runCreator_test.go`` — running, retrying, timing out and scheduling runs on one instance.

The Go expected counts are kept.  Timing windows are kept in spirit but widened (this runs on
a small, busy machine against three databases); where Go only slept, the port awaits an event,
``eventually`` or ``wait_for_run``, and sleeps only for the "still N a little later" checks.
The 1000 ms schedule of Go #21 is shortened to 500 ms to keep the suite fast.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta

from conftest import MakeJobsD, eventually
from sqlalchemy import select

from jobsd_async import JobsD, RunInfo, RunStatus, ScheduleFunc
from jobsd_async._store import _claim
from jobsd_async._store._rows import RunRow

WAIT = 10.0  # seconds; an upper bound for waits that are expected to end far sooner


def after(milliseconds: float) -> ScheduleFunc:
    """A schedule: the next tick is ``now + milliseconds``."""
    delta = timedelta(milliseconds=milliseconds)

    def tick(now: datetime) -> datetime:
        return now + delta

    return tick


def near(actual: datetime | None, expected: datetime, tolerance: float) -> bool:
    """Go's ``WithinDuration``: ``|actual - expected| <= tolerance`` seconds."""
    return actual is not None and abs((actual - expected).total_seconds()) <= tolerance


async def _run_at_of_row(jd: JobsD, table_prefix: str, row_id: int) -> datetime:
    runs = jd.metadata.tables[f"{table_prefix}runs"]
    async with jd.engine.connect() as conn:
        value = (await conn.execute(select(runs.c.run_at).where(runs.c.id == row_id))).scalar_one()
    assert isinstance(value, datetime)
    return value


# ---------------------------------------------------------------------------- §9.5 runnable_test.go


async def test_runnable_lock(make_jobsd: MakeJobsD) -> None:
    """Go #11 TestRunnableLock: insert-or-get of one row, then only one claim of it succeeds.

    One instance is up (producer-only, ``workers=0``, so it does not claim by itself; the claims
    are made directly, as Go calls ``lock`` directly).  A unique run r0 is inserted: its id is
    > 0 and ``created_by`` is the instance.  r1 with the same unique name returns the same id
    and the same fields (``created_at`` equal).  Claiming the row for the instance succeeds and
    sets ``run_started_by``; a second claim of the same row fails.  (Go claims again from the
    same instance; the port's claim assumes the claimer does not already own the row — the
    dispatcher guarantees that — so the second claim comes from a second instance.)
    """
    jd = make_jobsd(workers=0)
    other = make_jobsd(workers=0)

    async def job(message: str) -> None:
        return None

    jd.register_job("TestRunnableLock", job)
    await jd.up()
    await other.up()
    name = uuid.uuid4().hex

    r0 = await jd.create_run("TestRunnableLock", "r0").unique(name).run()
    assert r0 > 0
    s0 = await jd.get_run_state(r0)
    assert s0.created_by == jd.instance_id
    assert s0.status is RunStatus.PENDING

    r1 = await jd.create_run("TestRunnableLock", "r1").unique(name).run()
    assert r1 == r0
    s1 = await jd.get_run_state(r1)
    assert (s1.id, s1.name, s1.job, s1.created_by) == (s0.id, s0.name, s0.job, s0.created_by)
    assert near(s1.created_at, s0.created_at, 0.001)

    store = jd._require_store()

    async def claim(instance_id: int) -> list[RunRow]:
        return await store.dialect.retrying(
            lambda conn: _claim.claim_due(
                store,
                conn,
                jobs=["TestRunnableLock"],
                schedules=[],
                limit=1,
                instance_id=instance_id,
            )
        )

    first = await claim(jd.instance_id)
    assert [row.id for row in first] == [r0]
    assert first[0].run_started_by == jd.instance_id
    second = await claim(other.instance_id)
    assert second == []

    state = await jd.get_run_state(r0)
    assert state.status is RunStatus.RUNNING
    assert state.run_started_by == jd.instance_id


async def test_runnable_reschedule(make_jobsd: MakeJobsD, table_prefix: str) -> None:
    """Go #12 TestRunnableReschedule: after a success, a scheduled run inserts its next row.

    Go calls the reschedule step directly with a schedule of now + 200 minutes.  Here the run
    goes through the instance: its first tick is 50 ms away, every later tick is now + 200
    minutes, and there is no success limit.  After the first execution, the chain's latest row
    is a new pending row (origin = the run id, success count 1, created by the instance) due
    within 50 ms of (the time the schedule was asked + 200 min), the time being the instance's
    clock at completion, i.e. within a second of the wall clock.
    """
    jd = make_jobsd()
    asked: list[datetime] = []

    def schedule(now: datetime) -> datetime:
        asked.append(now)
        if len(asked) == 1:
            return now + timedelta(milliseconds=50)
        return now + timedelta(minutes=200)

    jd.register_schedule("in200minutes", schedule)
    executed = asyncio.Event()

    @jd.job("TestRunnableReschedule")
    async def job() -> None:
        executed.set()

    async with jd:
        run_id = await job.create_run().schedule("in200minutes").run()
        await asyncio.wait_for(executed.wait(), WAIT)

        async def rescheduled() -> bool:
            state = await jd.get_run_state(run_id)
            return state.id != run_id

        await eventually(rescheduled, WAIT, "the follow-up row")
        observed = datetime.now(UTC)
        state = await jd.get_run_state(run_id)
        run_at = await _run_at_of_row(jd, table_prefix, state.id)

    assert state.status is RunStatus.PENDING
    assert state.origin_id == run_id
    assert state.run_success_count == 1
    assert state.schedule == "in200minutes"
    assert state.created_by == jd.instance_id
    assert len(asked) == 2
    assert near(asked[1], observed, 1.0)
    assert near(run_at, asked[1] + timedelta(minutes=200), 0.05)


async def test_runnable_panic(make_jobsd: MakeJobsD) -> None:
    """Go #13 TestRunnablePanic: a job that raises ("panics") on its first call is retried.

    Default limits (3 error retries).  One ``run()`` gives **exactly 2 starts** (the failure and
    its retry), finished well within 1 s of submission in Go; here within 2 s.  The chain ends
    succeeded with one error retry used.
    """
    jd = make_jobsd()
    starts = 0

    @jd.job("TestRunnablePanic")
    def panics_once() -> None:
        nonlocal starts
        starts += 1
        if starts == 1:
            raise RuntimeError("panic: first call")

    async with jd:
        began = time.monotonic()
        run_id = await panics_once.create_run().run()
        state = await jd.wait_for_run(run_id, timeout=WAIT)
        took = time.monotonic() - began

    assert starts == 2
    assert took < 2.0
    assert state.status is RunStatus.SUCCEEDED
    assert state.run_total_count == 2
    assert state.retries_on_error_count == 1


async def test_runnable_cancel(make_jobsd: MakeJobsD) -> None:
    """Go #14 TestRunnableCancel: a timed-out run sees ``RunInfo.cancel``.

    The job takes RunInfo; on its first call it waits for ``info.cancel`` or a fallback delay
    (Go: 400 ms; here 1 s, for margin), later calls return at once.  Submitted with run-level
    ``run_timeout(0.3)`` (default timeout retries: 3).  Expect **2 executions**, the first ended
    through the cancel signal (1) and the fallback never taken (0).
    """
    jd = make_jobsd()
    executions = 0
    ended_by_cancel = 0
    ended_by_fallback = 0

    @jd.job("TestRunnableCancel")
    async def job(info: RunInfo) -> None:
        nonlocal executions, ended_by_cancel, ended_by_fallback
        executions += 1
        if executions == 1:
            try:
                await asyncio.wait_for(info.cancel.wait(), 1.0)
            except TimeoutError:
                ended_by_fallback += 1
            else:
                ended_by_cancel += 1

    async with jd:
        run_id = await job.create_run().run_timeout(0.3).run()
        state = await jd.wait_for_run(run_id, timeout=WAIT)
        await eventually(lambda: ended_by_cancel + ended_by_fallback == 1, WAIT, "the first call ending")

    assert executions == 2
    assert ended_by_cancel == 1
    assert ended_by_fallback == 0
    assert state.status is RunStatus.SUCCEEDED
    assert state.run_total_count == 2
    assert state.retries_on_timeout_count == 1


# ---------------------------------------------------------------------------- §9.6 runState_test.go


async def test_run_state(make_jobsd: MakeJobsD) -> None:
    """Go #15 TestRunState: RunState before, during and after a run.

    The job signals that it started, then blocks until released; it is submitted with
    ``run_after(0.2)``.  Go's windows (100 ms, 800 ms) are widened to 1-2 s.

    - At once: pending; success count 0; started/completed fields and error None; retry counts
      0; schedule None; created_at near now; created_by the instance.
    - Started, after ``refresh()``: running; started_at near now (and not before created_at +
      the 200 ms delay); started_by the instance; completed and error None; counts 0; schedule
      None; created fields unchanged.
    - Released, finished, ``down()``, ``refresh()``: succeeded; success count **1**; started
      fields unchanged; completed_at near the release time; error None; counts 0; schedule
      None; created fields unchanged.
    """
    jd = make_jobsd()
    started = asyncio.Event()
    release = asyncio.Event()

    @jd.job("TestRunState")
    async def job() -> None:
        started.set()
        await release.wait()

    await jd.up()
    run_id = await job.create_run().run_after(0.2)
    state = await jd.get_run_state(run_id)
    assert state.run_id == run_id
    assert state.status is RunStatus.PENDING
    assert state.run_success_count == 0
    assert state.run_started_at is None
    assert state.run_started_by is None
    assert state.run_completed_at is None
    assert state.run_completed_error is None
    assert state.retries_on_error_count == 0
    assert state.retries_on_timeout_count == 0
    assert state.schedule is None
    assert near(state.created_at, datetime.now(UTC), 1.0)
    assert state.created_by == jd.instance_id
    created_at = state.created_at

    await asyncio.wait_for(started.wait(), WAIT)
    state = await state.refresh()
    assert state.status is RunStatus.RUNNING
    assert near(state.run_started_at, datetime.now(UTC), 2.0)
    assert state.run_started_at is not None
    assert (state.run_started_at - created_at).total_seconds() >= 0.15
    assert state.run_started_by == jd.instance_id
    assert state.run_completed_at is None
    assert state.run_completed_error is None
    assert state.run_success_count == 0
    assert state.retries_on_error_count == 0
    assert state.retries_on_timeout_count == 0
    assert state.schedule is None
    assert state.created_at == created_at
    assert state.created_by == jd.instance_id
    started_at = state.run_started_at

    released_at = datetime.now(UTC)
    release.set()
    await jd.wait_for_run(run_id, timeout=WAIT)
    await jd.down()
    state = await state.refresh()
    assert state.status is RunStatus.SUCCEEDED
    assert state.run_success_count == 1
    assert state.run_started_at == started_at
    assert state.run_started_by == jd.instance_id
    assert state.run_completed_at is not None
    assert near(state.run_completed_at, released_at, 1.0)
    assert state.run_completed_error is None
    assert state.retries_on_error_count == 0
    assert state.retries_on_timeout_count == 0
    assert state.schedule is None
    assert state.created_at == created_at
    assert state.created_by == jd.instance_id


# ---------------------------------------------------------------------------- §9.7 jobsD_test.go


async def test_jobsd_run(make_jobsd: MakeJobsD) -> None:
    """Go #16 TestJobsDRun: one immediate run executes once, within 1 s of submission.

    The instance polls only every 5 s (Go's default), so finishing in time proves the local
    fast path: the run does not wait for a poll.  (Window: 2 s instead of 1 s.)
    """
    jd = make_jobsd(poll_interval=5.0)
    count = 0

    @jd.job("TestJobsDRun")
    async def job() -> None:
        nonlocal count
        count += 1

    async with jd:
        began = time.monotonic()
        run_id = await job.create_run().run()
        await eventually(lambda: count == 1, WAIT, "the run")
        took = time.monotonic() - began
        state = await jd.wait_for_run(run_id, timeout=WAIT)

    assert took < 2.0
    assert count == 1
    assert state.status is RunStatus.SUCCEEDED


async def test_jobsd_run_multi(make_jobsd: MakeJobsD) -> None:
    """Go #17 TestJobsDRunMulti: 20 immediate runs all execute, within 3 s (5 s poll interval)."""
    jd = make_jobsd(poll_interval=5.0)
    count = 0

    @jd.job("TestJobsDRunMulti")
    async def job(i: int) -> None:
        nonlocal count
        count += 1

    async with jd:
        began = time.monotonic()
        run_ids = [await job.create_run(i).run() for i in range(20)]
        await eventually(lambda: count == 20, WAIT, "20 runs")
        took = time.monotonic() - began
        states = [await jd.wait_for_run(run_id, timeout=WAIT) for run_id in run_ids]

    assert took < 3.0
    assert count == 20
    assert len(set(run_ids)) == 20
    assert all(s.status is RunStatus.SUCCEEDED for s in states)


async def test_queued_run_err_retry(make_jobsd: MakeJobsD) -> None:
    """Go #18 TestQueuedRunErrRetry: an error on the first call is retried once.

    The job takes one int (submitted with 0) and raises on its first call only; job-level
    ``retries_error_limit=1``.  **2 executions**, within 1 s in Go (2 s here); the chain ends
    succeeded with one error retry used.
    """
    jd = make_jobsd()
    executions = 0

    @jd.job("TestQueuedRunErrRetry", retries_error_limit=1)
    async def job(n: int) -> None:
        nonlocal executions
        executions += 1
        if executions == 1:
            raise ValueError(f"first call fails ({n})")

    async with jd:
        began = time.monotonic()
        run_id = await job.create_run(0).run()
        state = await jd.wait_for_run(run_id, timeout=WAIT)
        took = time.monotonic() - began

    assert executions == 2
    assert took < 2.0
    assert state.status is RunStatus.SUCCEEDED
    assert state.retries_on_error_count == 1


async def test_queued_run_timeout_retry(make_jobsd: MakeJobsD) -> None:
    """Go #19 TestQueuedRunTimeoutRetry: a timeout is retried once.

    Job-level ``retries_timeout_limit=1`` and ``run_timeout=0.2``; the first call sleeps 1 s
    (ignoring the cancel signal), later calls return at once.  Exactly **2 executions**; the
    chain ends succeeded with one timeout retry.  The test waits for both calls to end: the
    first is cancelled ``cancel_grace`` (0.5 s) after its timeout, before its sleep is over.
    """
    jd = make_jobsd()
    executions = 0
    endings: list[str] = []

    @jd.job("TestQueuedRunTimeoutRetry", retries_timeout_limit=1, run_timeout=0.2)
    async def job() -> None:
        nonlocal executions
        executions += 1
        if executions == 1:
            try:
                await asyncio.sleep(1.0)
            except asyncio.CancelledError:
                endings.append("cancelled")
                raise
            endings.append("slept")
        else:
            endings.append("returned")

    async with jd:
        run_id = await job.create_run().run()
        state = await jd.wait_for_run(run_id, timeout=WAIT)
        await eventually(lambda: len(endings) == 2, WAIT, "both calls ending")

    assert executions == 2
    assert sorted(endings) == ["cancelled", "returned"]
    assert state.status is RunStatus.SUCCEEDED
    assert state.run_total_count == 2
    assert state.retries_on_timeout_count == 1


async def test_jobsd_scheduled_run(make_jobsd: MakeJobsD) -> None:
    """Go #20 TestJobsDScheduledRun: ``schedule(now + 150 ms).limit(1).run()`` runs once.

    Executed once, about 150 ms after submission (Go: within 150 ms of it; here not before
    100 ms and within 750 ms).  After 500 ms more, still **1**.
    """
    jd = make_jobsd()
    jd.register_schedule("in150ms", after(150))
    executed_at: list[float] = []

    @jd.job("TestJobsDScheduledRun")
    async def job() -> None:
        executed_at.append(time.monotonic())

    async with jd:
        began = time.monotonic()
        run_id = await job.create_run().schedule("in150ms").limit(1).run()
        state = await jd.wait_for_run(run_id, timeout=WAIT)
        assert len(executed_at) == 1
        await asyncio.sleep(0.5)

    assert len(executed_at) == 1
    assert 0.1 <= executed_at[0] - began <= 0.15 + 0.6
    assert state.status is RunStatus.SUCCEEDED
    assert state.run_success_count == 1


async def test_jobsd_scheduled_run_recurrent(make_jobsd: MakeJobsD) -> None:
    """Go #21 TestJobsDScheduledRunRecurrent: ``limit(3)`` gives 3 executions, no more.

    Go's schedule is now + 1000 ms; here now + 500 ms (to keep the test short).  **3
    executions**; still 3 after 500 ms more; the 3rd finished about 3 intervals after the start
    (Go: within 1000 ms of start + 3 s; here 1.4 s to 2.5 s after the start).
    """
    jd = make_jobsd()
    jd.register_schedule("in500ms", after(500))
    executed_at: list[float] = []

    @jd.job("TestJobsDScheduledRunRecurrent")
    async def job() -> None:
        executed_at.append(time.monotonic())

    async with jd:
        began = time.monotonic()
        run_id = await job.create_run().schedule("in500ms").limit(3).run()
        state = await jd.wait_for_run(run_id, timeout=WAIT)
        assert len(executed_at) == 3
        await asyncio.sleep(0.5)

    assert len(executed_at) == 3
    assert 1.4 <= executed_at[2] - began <= 2.5
    assert state.status is RunStatus.SUCCEEDED
    assert state.run_success_count == 3
    assert state.run_total_count == 3


async def test_jobsd_scheduled_run_multi(make_jobsd: MakeJobsD) -> None:
    """Go #22 TestJobsDScheduledRunMulti: 8 scheduled runs x ``limit(2)`` on 1 worker.

    ``workers=1``, schedule now + 200 ms.  **16 executions**, never two at once, all finished
    within 1600 ms of start + 2000 ms (Go's formula: interval * (limit + runs / workers) +-
    100 ms * limit * runs / workers).  Each chain ends succeeded with 2 successes.
    """
    jd = make_jobsd(workers=1)
    jd.register_schedule("in200ms", after(200))
    count = 0
    running = 0
    most_running = 0

    @jd.job("TestJobsDScheduledRunMulti")
    async def job(i: int) -> None:
        nonlocal count, running, most_running
        count += 1
        running += 1
        most_running = max(most_running, running)
        await asyncio.sleep(0)
        running -= 1

    async with jd:
        began = time.monotonic()
        run_ids = [await job.create_run(i).schedule("in200ms").limit(2).run() for i in range(8)]
        states = [await jd.wait_for_run(run_id, timeout=WAIT) for run_id in run_ids]
        took = time.monotonic() - began

    assert count == 16
    assert most_running == 1
    # Go: within 1.6 s of 2.0 s, i.e. 0.4 s to 3.6 s; the real finish is just over 0.4 s (the
    # last-submitted chain's second tick), so the lower end gets 50 ms of slack.
    assert 0.35 <= took <= 3.6
    assert all(s.status is RunStatus.SUCCEEDED and s.run_success_count == 2 for s in states)


async def test_example_jobsd(make_jobsd: MakeJobsD) -> None:
    """Go #23 ExampleJobsD (not one of the 35 ``Test*`` functions; ported as well).

    A job with one string argument writes ``Hello <arg>!``; schedule now + 500 ms; run with
    "World" and ``limit(1)``.  The output is exactly ``Hello World!``; ``down()`` is called,
    and calling it again (as Go's teardown does) is a no-op.
    """
    jd = make_jobsd()
    jd.register_schedule("OnceAfter500ms", after(500))
    output: list[str] = []

    @jd.job("PrintHello")
    async def print_hello(name: str) -> None:
        output.append(f"Hello {name}!")

    await jd.up()
    run_id = await print_hello.create_run("World").schedule("OnceAfter500ms").limit(1).run()
    await jd.wait_for_run(run_id, timeout=WAIT)
    await jd.down()
    await jd.down()
    assert "".join(output) == "Hello World!"


# ---------------------------------------------------------------------------- §9.8 runCreator_test.go


async def test_run_once_creator_run_after(make_jobsd: MakeJobsD) -> None:
    """Go #25 TestRunOnceCreatorRunAfter: ``run_after(0.5)`` runs once, about 500 ms later.

    Exactly **1** execution, starting within 300 ms of submission + 500 ms in Go; here not
    before 450 ms and not after 1.1 s.
    """
    jd = make_jobsd()
    started_at: list[float] = []

    @jd.job("TestRunOnceCreatorRunAfter")
    async def job() -> None:
        started_at.append(time.monotonic())

    async with jd:
        began = time.monotonic()
        run_id = await job.create_run().run_after(0.5)
        state = await jd.wait_for_run(run_id, timeout=WAIT)

    assert len(started_at) == 1
    assert 0.45 <= started_at[0] - began <= 1.1
    assert state.status is RunStatus.SUCCEEDED
    assert state.run_total_count == 1


async def test_run_once_creator_run_timeout(make_jobsd: MakeJobsD) -> None:
    """Go #26 TestRunOnceCreatorRunTimeout: a run-level timeout overrides the job's.

    Job-level ``retries_timeout_limit=1`` (and the instance's 30-minute default timeout);
    run-level ``run_timeout(0.2)``.  The first call sleeps 1 s.  **2 executions**; the chain
    ends succeeded after one timeout retry.
    """
    jd = make_jobsd()
    executions = 0
    ended = 0

    @jd.job("TestRunOnceCreatorRunTimeout", retries_timeout_limit=1)
    async def job() -> None:
        nonlocal executions, ended
        executions += 1
        try:
            if executions == 1:
                await asyncio.sleep(1.0)
        finally:
            ended += 1

    async with jd:
        run_id = await job.create_run().run_timeout(0.2).run()
        state = await jd.wait_for_run(run_id, timeout=WAIT)
        await eventually(lambda: ended == 2, WAIT, "both calls ending")

    assert executions == 2
    assert state.status is RunStatus.SUCCEEDED
    assert state.run_total_count == 2
    assert state.retries_on_timeout_count == 1


async def test_run_once_creator_retries_timeout_limit(make_jobsd: MakeJobsD) -> None:
    """Go #27 TestRunOnceCreatorRetriesTimeoutLimit: a run-level timeout-retry limit of 2.

    Job-level ``run_timeout=0.1``; run-level ``retries_timeout_limit(2)``.  Every call takes
    300 ms and signals its start.  **3 executions** (1 + 2 retries); after 300 + 100 ms more,
    still **3**.  The chain ends timed out, with both retries used.
    """
    jd = make_jobsd()
    starts = 0

    @jd.job("TestRunOnceCreatorRetriesTimeoutLimit", run_timeout=0.1)
    async def job() -> None:
        nonlocal starts
        starts += 1
        await asyncio.sleep(0.3)

    async with jd:
        run_id = await job.create_run().retries_timeout_limit(2).run()
        state = await jd.wait_for_run(run_id, timeout=WAIT)
        assert starts == 3
        await asyncio.sleep(0.3 + 0.1)
        assert starts == 3

    assert state.status is RunStatus.TIMED_OUT
    assert state.run_completed_error == "job run timed out"
    assert state.run_total_count == 3
    assert state.retries_on_timeout_count == 2


async def test_run_once_creator_retries_error_limit(make_jobsd: MakeJobsD) -> None:
    """Go #28 TestRunOnceCreatorRetriesErrorLimit: a run-level error-retry limit of 2.

    The job always raises; run-level ``retries_error_limit(2)``.  **3 executions**; still 3
    after 500 ms more (Go: 1 s).  The chain ends failed with the error text recorded.
    """
    jd = make_jobsd()
    executions = 0

    @jd.job("TestRunOnceCreatorRetriesErrorLimit")
    async def job() -> None:
        nonlocal executions
        executions += 1
        raise RuntimeError(f"failure {executions}")

    async with jd:
        run_id = await job.create_run().retries_error_limit(2).run()
        state = await jd.wait_for_run(run_id, timeout=WAIT)
        assert executions == 3
        await asyncio.sleep(0.5)
        assert executions == 3

    assert state.status is RunStatus.FAILED
    assert state.run_completed_error is not None
    assert "failure 3" in state.run_completed_error
    assert state.run_total_count == 3
    assert state.retries_on_error_count == 2


async def test_run_scheduled_creator_run_timeout(make_jobsd: MakeJobsD) -> None:
    """Go #29 TestRunScheduledCreatorRunTimeout: a timeout of a scheduled run is retried.

    Job-level ``retries_timeout_limit=1``; schedule now + 200 ms; run-level ``run_timeout(0.2)``
    and ``limit(2)``.  The 2nd call sleeps 1 s.  Exactly **3 executions**: success, timeout,
    then its retry (due at the next tick) succeeds; still 3 after 500 ms more.
    """
    jd = make_jobsd()
    jd.register_schedule("in200ms", after(200))
    executions = 0

    @jd.job("TestRunScheduledCreatorRunTimeout", retries_timeout_limit=1)
    async def job() -> None:
        nonlocal executions
        executions += 1
        if executions == 2:
            await asyncio.sleep(1.0)

    async with jd:
        run_id = await job.create_run().schedule("in200ms").run_timeout(0.2).limit(2).run()
        state = await jd.wait_for_run(run_id, timeout=WAIT)
        assert executions == 3
        await asyncio.sleep(0.5)
        assert executions == 3

    assert state.status is RunStatus.SUCCEEDED
    assert state.run_success_count == 2
    assert state.run_total_count == 3
    assert state.retries_on_timeout_count == 1


async def test_run_scheduled_creator_retries_timeout_limit(make_jobsd: MakeJobsD) -> None:
    """Go #30 TestRunScheduledCreatorRetriesTimeoutLimit: timeouts of a scheduled run, limit 2.

    Job-level ``run_timeout=0.2``; schedule every 200 ms; ``limit(2)``, run-level
    ``retries_timeout_limit(2)``.  Calls 2 and 3 sleep 500 ms (and time out).  **4
    executions**: success, timeout, timeout, success (Go's text says 5, it asserts 4); still 4
    after 500 + 200 ms more.
    """
    jd = make_jobsd()
    jd.register_schedule("every200ms", after(200))
    executions = 0

    @jd.job("TestRunScheduledCreatorRetriesTimeoutLimit", run_timeout=0.2)
    async def job() -> None:
        nonlocal executions
        executions += 1
        if executions in (2, 3):
            await asyncio.sleep(0.5)

    async with jd:
        run_id = await job.create_run().schedule("every200ms").limit(2).retries_timeout_limit(2).run()
        state = await jd.wait_for_run(run_id, timeout=WAIT)
        assert executions == 4
        await asyncio.sleep(0.5 + 0.2)
        assert executions == 4

    assert state.status is RunStatus.SUCCEEDED
    assert state.run_success_count == 2
    assert state.run_total_count == 4
    assert state.retries_on_timeout_count == 2


async def test_run_scheduled_creator_retries_error_limit(make_jobsd: MakeJobsD) -> None:
    """Go #31 TestRunScheduledCreatorRetriesErrorLimit: errors of a scheduled run, limit 2.

    Schedule every 200 ms, ``limit(2)``, ``retries_error_limit(2)``; calls 2 and 3 raise.
    **4 executions**: success, error, error, success; still 4 after 500 ms more (Go: 1 s).
    """
    jd = make_jobsd()
    jd.register_schedule("every200ms", after(200))
    executions = 0

    @jd.job("TestRunScheduledCreatorRetriesErrorLimit")
    async def job() -> None:
        nonlocal executions
        executions += 1
        if executions in (2, 3):
            raise RuntimeError(f"call {executions} fails")

    async with jd:
        run_id = await job.create_run().schedule("every200ms").limit(2).retries_error_limit(2).run()
        state = await jd.wait_for_run(run_id, timeout=WAIT)
        assert executions == 4
        await asyncio.sleep(0.5)
        assert executions == 4

    assert state.status is RunStatus.SUCCEEDED
    assert state.run_success_count == 2
    assert state.run_total_count == 4
    assert state.retries_on_error_count == 2


async def test_run_schedule_creator_run_after(make_jobsd: MakeJobsD) -> None:
    """Go #32 TestRunScheduleCreatorRunAfter: the first tick comes after the delay.

    Schedule now + 200 ms, ``limit(1)``, ``run_after(0.5)``.  Exactly **1** execution, starting
    about 500 + 200 ms after submission (Go: within 250 ms of it; here not before 650 ms and
    not after 1.3 s) — the first scheduled run waits for a tick after the delay.
    """
    jd = make_jobsd()
    jd.register_schedule("in200ms", after(200))
    started_at: list[float] = []

    @jd.job("TestRunScheduleCreatorRunAfter")
    async def job() -> None:
        started_at.append(time.monotonic())

    async with jd:
        began = time.monotonic()
        run_id = await job.create_run().schedule("in200ms").limit(1).run_after(0.5)
        state = await jd.wait_for_run(run_id, timeout=WAIT)

    assert len(started_at) == 1
    assert 0.65 <= started_at[0] - began <= 1.3
    assert state.status is RunStatus.SUCCEEDED
    assert state.run_success_count == 1


async def test_run_schedule_creator_simple(make_jobsd: MakeJobsD) -> None:
    """Go #33 TestRunScheduleCreatorSimple: an unlimited schedule keeps recurring.

    Schedule every 200 ms, no limit.  Go: after 600 ms there have been **at least 2**
    executions; here at least 2 within 1.5 s, and the chain is still going (its latest row
    is a pending follow-up, not a finished one).
    """
    jd = make_jobsd()
    jd.register_schedule("every200ms", after(200))
    executions = 0

    @jd.job("TestRunScheduleCreatorSimple")
    async def job() -> None:
        nonlocal executions
        executions += 1

    async with jd:
        run_id = await job.create_run().schedule("every200ms").run()
        await eventually(lambda: executions >= 2, 1.5, "two executions")
        state = await jd.get_run_state(run_id)

    assert executions >= 2
    assert not state.status.finished
    assert state.run_success_count >= 1
