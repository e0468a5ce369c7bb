"""Each Go bug the port fixes, with a test that fails on the original behaviour (reference §10)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from conftest import MakeJobsD, fetch_runs, insert_row

from jobsd_async import RunInfo, RunStatus


async def test_b1_errors_are_recorded_not_counted_as_successes(make_jobsd: MakeJobsD) -> None:
    """Go B1: a job error left run_completed_error NULL and bumped run_success_count."""
    jd = make_jobsd()

    @jd.job(retries_error_limit=1)
    async def always_fails() -> None:
        raise ValueError("bad input 42")

    async with jd:
        run_id = await always_fails.create_run().run()
        state = await jd.wait_for_run(run_id, timeout=10)
        rows = await fetch_runs(jd)

    assert state.status is RunStatus.FAILED
    assert state.run_completed_error == "ValueError: bad input 42"
    assert state.run_success_count == 0
    assert [r["run_completed_error"] for r in rows] == ["ValueError: bad input 42"] * 2
    assert [r["run_success_count"] for r in rows] == [0, 0]
    assert jd.instance.runs_errors == 2


async def test_b3_no_timeout_means_no_timer(make_jobsd: MakeJobsD) -> None:
    """Go B3: RunTimeout(0) set run_timeout_at = start time and timed the run out at once."""
    jd = make_jobsd()
    calls = 0

    @jd.job(run_timeout=0)
    async def slowish() -> str:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.3)
        return "done"

    async with jd:
        run_id = await slowish.create_run().run()
        state = await jd.wait_for_run(run_id, timeout=10)
        rows = await fetch_runs(jd)

    assert calls == 1
    assert state.status is RunStatus.SUCCEEDED
    assert len(rows) == 1
    assert rows[0]["run_timeout"] is None
    assert rows[0]["run_timeout_at"] is None


async def test_b6_unique_conflict_returns_existing_id_and_touches_nothing_else(make_jobsd: MakeJobsD) -> None:
    """Go B6: a failed insert-or-get left id 0, and id 0 claimed every pending row in the table."""
    jd = make_jobsd(workers=0)  # producer only: rows stay pending
    jd.register_job("noop", lambda: None)
    async with jd:
        first = await jd.create_run("noop").unique("u").run_after(60)
        others = [await jd.create_run("noop").run_after(60) for _ in range(3)]
        second = await jd.create_run("noop").unique("u").run()
        rows = await fetch_runs(jd)

    assert second == first
    assert len(rows) == 4
    assert all(r["run_started_at"] is None for r in rows)
    assert sorted(r["id"] for r in rows) == sorted([first, *others])


async def test_b8_origin_id_is_the_chain_root_and_state_follows_the_chain(make_jobsd: MakeJobsD) -> None:
    """Go B8: origin_id pointed at the parent, so RunState stopped after two hops."""
    jd = make_jobsd()
    attempts = 0

    @jd.job(retries_error_limit=5)
    async def fails_three_times() -> int:
        nonlocal attempts
        attempts += 1
        if attempts <= 3:
            raise RuntimeError(f"attempt {attempts}")
        return attempts

    async with jd:
        run_id = await fails_three_times.create_run().run()
        state = await jd.wait_for_run(run_id, timeout=10)
        rows = await fetch_runs(jd)

    assert [r["origin_id"] for r in rows] == [None, run_id, run_id, run_id]
    assert [r["parent_id"] for r in rows] == [None, *[r["id"] for r in rows[:-1]]]
    assert state.id == rows[-1]["id"]
    assert state.run_id == run_id
    assert state.job == fails_three_times.name
    assert state.result == 4
    assert state.retries_on_error_count == 3
    assert state.run_total_count == 4


async def test_b9_counters_and_run_info_are_filled(make_jobsd: MakeJobsD) -> None:
    """Go B9: runs_rescheduled never counted, run_total_count not carried, RunInfo started fields empty."""
    jd = make_jobsd()
    infos: list[RunInfo] = []
    jd.register_schedule("soon", lambda now: now + timedelta(milliseconds=50))

    @jd.job
    async def record(info: RunInfo) -> None:
        infos.append(info)

    async with jd:
        run_id = await record.create_run().schedule("soon").limit(3).run()
        state = await jd.wait_for_run(run_id, timeout=10)
        counters = jd.instance

    assert state.run_success_count == 3
    assert [i.run_total_count for i in infos] == [1, 2, 3]
    assert all(i.run_started_by == jd.instance_id for i in infos)
    assert all(i.run_started_at is not None and i.run_timeout_at is not None for i in infos)
    assert all(i.run_timeout_at > i.run_started_at for i in infos if i.run_timeout_at)
    assert counters.runs_started == 3
    assert counters.runs_rescheduled == 2


async def test_b9_lost_claims_are_not_counted_as_started(make_jobsd: MakeJobsD) -> None:
    """Go B9: runs_started counted every attempt, including claims another instance won."""
    instances = [make_jobsd(poll_interval=0.05) for _ in range(3)]
    started = 0

    async def count() -> None:
        nonlocal started
        started += 1

    for jd in instances:
        jd.register_job("count", count)
    for jd in instances:
        await jd.up()
    ids = [await instances[0].create_run("count").run() for _ in range(20)]
    for run_id in ids:
        await instances[0].wait_for_run(run_id, timeout=10)
    assert started == 20
    assert sum(jd.instance.runs_started for jd in instances) == 20


async def test_b10_arguments_travel_as_json(make_jobsd: MakeJobsD) -> None:
    """Go B10: gob needed registration and failed silently; the port stores JSON."""
    jd = make_jobsd()
    got: list[object] = []

    @jd.job
    async def take(a: dict[str, list[int]], b: str, *, c: float) -> None:
        got.append((a, b, c))

    async with jd:
        run_id = await take.create_run({"x": [1, 2]}, "é", c=1.5).run()
        await jd.wait_for_run(run_id, timeout=10)
        rows = await fetch_runs(jd)

    assert got == [({"x": [1, 2]}, "é", 1.5)]
    assert rows[0]["job_args"] == '[{"x":[1,2]},"\\u00e9"]'
    assert rows[0]["job_kwargs"] == '{"c":1.5}'


async def test_w3_own_rows_are_polled(make_jobsd: MakeJobsD) -> None:
    """Go W3: the poller skipped rows this instance created, so a row lost from memory never ran."""
    jd = make_jobsd(poll_interval=0.1)
    ran = asyncio.Event()
    jd.register_job("mark", ran.set)
    async with jd:
        # A row of ours that the local queue never saw.
        await insert_row(jd, job="mark", created_by=jd.instance_id)
        async with asyncio.timeout(10):
            await ran.wait()


async def test_w4_due_time_is_the_stored_one_whatever_the_local_clock(make_jobsd: MakeJobsD) -> None:
    """Go W4: every loader recomputed the due time from its own clock, so skewed instances ran early."""
    creator = make_jobsd(workers=0)
    creator.register_job("stamp", lambda: None)
    skewed = make_jobsd(poll_interval=0.05, clock=lambda: datetime.now(UTC) + timedelta(seconds=45))
    skewed.register_job("stamp", lambda: None)
    async with creator, skewed:
        run_id = await creator.create_run("stamp").run_after(1.0)
        state = await creator.wait_for_run(run_id, timeout=10)

    assert state.run_started_by == skewed.instance_id
    assert state.run_started_at is not None
    assert state.run_started_at - state.created_at >= timedelta(seconds=0.95)


async def test_w5_rows_of_unknown_jobs_do_not_starve_the_poll(make_jobsd: MakeJobsD) -> None:
    """Go W5: poll_limit rows of jobs nobody here runs hid the runnable rows behind them."""
    other = make_jobsd(workers=0)
    other.register_job("elsewhere", lambda: None)
    other.register_job("here", lambda: None)
    worker = make_jobsd(poll_limit=5, poll_interval=0.05)
    worker.register_job("here", lambda: None)
    async with other:
        for _ in range(10):
            await other.create_run("elsewhere").run()
        run_id = await other.create_run("here").run()
        async with worker:
            state = await worker.wait_for_run(run_id, timeout=10)
    assert state.status is RunStatus.SUCCEEDED
    assert state.run_started_by == worker.instance_id
