"""SPEC §3.6 (local timeouts) and §3.7 (shutdown: drain, then kill and hand over)."""

from __future__ import annotations

import asyncio
import time

from conftest import MakeJobsD, eventually, fetch_runs

from jobsd_async import RunInfo, RunStatus


async def test_down_lets_running_jobs_finish(make_jobsd: MakeJobsD) -> None:
    jd = make_jobsd(shutdown_timeout=5)
    started = asyncio.Event()

    @jd.job
    async def short() -> str:
        started.set()
        await asyncio.sleep(0.3)
        return "finished"

    await jd.up()
    run_id = await short.create_run().run()
    await asyncio.wait_for(started.wait(), 10)
    await jd.down()
    state = await jd.get_run_state(run_id)
    assert state.status is RunStatus.SUCCEEDED
    assert state.result == "finished"


async def test_down_kills_after_shutdown_timeout_and_a_peer_reruns_without_using_a_retry(
    make_jobsd: MakeJobsD,
) -> None:
    leaving = make_jobsd(shutdown_timeout=0.2, cancel_grace=0.2)
    peer = make_jobsd(poll_interval=0.05)
    started = asyncio.Event()
    saw_cancel = asyncio.Event()
    finished_on: list[int] = []

    @leaving.job(name="work", retries_error_limit=0)
    async def hangs(info: RunInfo) -> None:
        started.set()
        await info.cancel.wait()
        saw_cancel.set()
        await asyncio.sleep(60)  # ignores the signal: the task cancel must end it

    @peer.job(name="work", retries_error_limit=0)
    async def quick(info: RunInfo) -> None:
        finished_on.append(info.run_started_by)

    await leaving.up()
    run_id = await leaving.create_run("work").run()
    await asyncio.wait_for(started.wait(), 10)
    began = time.monotonic()
    await leaving.down()
    took = time.monotonic() - began
    assert saw_cancel.is_set()
    assert took < 5

    rows = await fetch_runs(leaving)
    assert rows[0]["run_completed_error"] == "job run killed"
    assert rows[1]["origin_id"] == run_id
    assert rows[1]["created_by"] == leaving.instance_id
    assert rows[1]["retries_on_error_count"] == 0

    async with peer:
        state = await peer.wait_for_run(run_id, timeout=10)
    assert state.status is RunStatus.SUCCEEDED
    assert finished_on == [peer.instance_id]
    assert state.run_total_count == 2


async def test_timeout_is_recorded_when_it_fires_and_the_slot_stays_taken(make_jobsd: MakeJobsD) -> None:
    jd = make_jobsd(workers=1, cancel_grace=30)
    release = asyncio.Event()
    first_ended = asyncio.Event()
    second_started_after_first: list[bool] = []

    @jd.job(run_timeout=0.2, retries_timeout_limit=0)
    async def stubborn() -> None:
        try:
            await asyncio.shield(release.wait())  # ignores RunInfo.cancel entirely
        finally:
            first_ended.set()

    @jd.job
    async def next_one() -> None:
        second_started_after_first.append(first_ended.is_set())

    async with jd:
        first = await stubborn.create_run().run()
        second = await next_one.create_run().run()

        async def first_timed_out() -> bool:
            return (await jd.get_run_state(first)).status is RunStatus.TIMED_OUT

        await eventually(first_timed_out, what="timeout recorded")
        assert not first_ended.is_set()
        assert (await jd.get_run_state(second)).status is RunStatus.PENDING
        release.set()
        await jd.wait_for_run(second, timeout=10)

    assert second_started_after_first == [True]


async def test_task_is_cancelled_after_cancel_grace(make_jobsd: MakeJobsD) -> None:
    jd = make_jobsd(cancel_grace=0.2)
    cancelled = asyncio.Event()

    @jd.job(run_timeout=0.1, retries_timeout_limit=0)
    async def sleeper() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async with jd:
        run_id = await sleeper.create_run().run()
        await asyncio.wait_for(cancelled.wait(), 10)
        state = await jd.wait_for_run(run_id, timeout=10)
    assert state.status is RunStatus.TIMED_OUT
    assert jd.instance.runs_timed_out == 1
