"""cancel_run (SPEC §2.1): pending and running chains, on this instance or another."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from conftest import BACKENDS, MakeJobsD, fetch_runs

from jobsd_async import JobsD, RunInfo, RunNotFoundError, RunStatus


async def test_cancel_pending_run_closes_it_without_follow_up(make_jobsd: MakeJobsD) -> None:
    jd = make_jobsd()
    ran: list[int] = []
    jd.register_job("later", lambda: ran.append(1))
    async with jd:
        run_id = await jd.create_run("later").unique("cancel-me").run_after(60)
        assert await jd.cancel_run(run_id) is True
        state = await jd.wait_for_run(run_id, timeout=5)
        assert await jd.cancel_run(run_id) is False
        # The unique name is free again.
        again = await jd.create_run("later").unique("cancel-me").run_after(60)
    assert state.status is RunStatus.CANCELLED
    assert state.run_completed_error == "job run cancelled"
    assert again != run_id
    assert ran == []


async def test_cancel_running_run_here(make_jobsd: MakeJobsD) -> None:
    jd = make_jobsd(cancel_grace=5)
    started = asyncio.Event()
    saw_cancel = asyncio.Event()

    @jd.job(name="long")
    async def long(info: RunInfo) -> str:
        started.set()
        await info.cancel.wait()
        saw_cancel.set()
        return "finished anyway"  # recorded as cancelled whatever it returns

    async with jd:
        run_id = await long.create_run().run()
        await asyncio.wait_for(started.wait(), 10)
        assert await jd.cancel_run(run_id) is True
        await asyncio.wait_for(saw_cancel.wait(), 5)
        state = await jd.wait_for_run(run_id, timeout=5)
        rows = await fetch_runs(jd)
    assert state.status is RunStatus.CANCELLED
    assert state.result is None
    assert len(rows) == 1


async def test_cancel_running_run_on_another_instance_stops_a_recurring_chain(make_jobsd: MakeJobsD) -> None:
    owner = make_jobsd(heartbeat_interval=0.2, cancel_grace=0.2)
    other = make_jobsd(workers=0)
    started = asyncio.Event()
    cancelled = asyncio.Event()
    owner.register_schedule("soon", lambda now: now + timedelta(milliseconds=50))
    other.register_schedule("soon", lambda now: now + timedelta(milliseconds=50))
    other.register_job("tick", lambda: None)

    @owner.job(name="tick")
    async def tick(info: RunInfo) -> None:
        started.set()
        try:
            await asyncio.sleep(30)  # ignores RunInfo.cancel: the task cancel must end it
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async with owner, other:
        run_id = await owner.create_run("tick").schedule("soon").run()
        await asyncio.wait_for(started.wait(), 10)
        assert await other.cancel_run(run_id) is True
        await asyncio.wait_for(cancelled.wait(), 5)
        state = await other.wait_for_run(run_id, timeout=5)
        rows = await fetch_runs(other)
    assert state.status is RunStatus.CANCELLED
    assert rows[-1]["run_completed_error"] == "job run cancelled"
    assert all(r["run_completed_at"] is not None for r in rows)


async def test_cancel_unknown_run(make_jobsd: MakeJobsD) -> None:
    jd: JobsD = make_jobsd()
    async with jd:
        with pytest.raises(RunNotFoundError):
            await jd.cancel_run(424242)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b == "postgresql"])
async def test_cancel_reaches_the_owner_through_notify_on_postgresql(make_jobsd: MakeJobsD) -> None:
    """With a heartbeat far away, only the NOTIFY can deliver the cancel this fast."""
    owner = make_jobsd(heartbeat_interval=60, cancel_grace=5)
    other = make_jobsd(workers=0)
    other.register_job("long", lambda: None)
    started = asyncio.Event()
    saw_cancel = asyncio.Event()

    @owner.job(name="long")
    async def long(info: RunInfo) -> None:
        started.set()
        await info.cancel.wait()
        saw_cancel.set()

    async with owner, other:
        run_id = await owner.create_run("long").run()
        await asyncio.wait_for(started.wait(), 10)
        assert await other.cancel_run(run_id) is True
        await asyncio.wait_for(saw_cancel.wait(), 5)
        state = await other.wait_for_run(run_id, timeout=5)
    assert state.status is RunStatus.CANCELLED
