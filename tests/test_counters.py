"""SPEC §3.9: an instance's counters move only with the completions that actually landed.

An attempt's ending may lose the race for its row: another instance's timeout check closed
it first (the owner's timer and a watcher's scan fire at the same deadline), or a
``cancel_run`` did.  The row is then counted once, by whoever closed it.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

import pytest
from conftest import MakeJobsD, eventually, jd_prefix
from sqlalchemy import update

from jobsd_async import JobsD, RunInfo, RunStatus


async def close_as_a_watcher_would(jd: JobsD, row_id: int) -> None:
    """Close a running row the way another instance's timeout check does."""
    runs = jd.metadata.tables[f"{jd_prefix(jd)}runs"]
    async with jd.engine.begin() as conn:
        await conn.execute(
            update(runs)
            .where(runs.c.id == row_id)
            .values(
                run_completed_at=datetime.now(UTC),
                run_completed_error="job run timed out",
                name_active=None,
            )
        )


async def discarded(caplog: pytest.LogCaptureFixture) -> None:
    await eventually(
        lambda: any("already completed elsewhere" in r.getMessage() for r in caplog.records),
        what="the late ending discarded",
    )


async def test_a_local_timeout_that_lost_its_row_is_not_counted(
    make_jobsd: MakeJobsD, caplog: pytest.LogCaptureFixture
) -> None:
    jd = make_jobsd(timeout_check=3600)
    started = asyncio.Event()

    @jd.job(name="slow", run_timeout=0.5, retries_timeout_limit=0)
    async def slow(info: RunInfo) -> None:
        started.set()
        await info.cancel.wait()

    async with jd:
        with caplog.at_level(logging.WARNING, logger="jobsd_async"):
            run_id = await slow.create_run().run()
            async with asyncio.timeout(10):
                await started.wait()
            await close_as_a_watcher_would(jd, run_id)
            await discarded(caplog)  # the local timer fired, and its completion found the row closed
        assert jd.instance.runs_timed_out == 0


async def test_an_error_that_lost_its_row_is_not_counted(
    make_jobsd: MakeJobsD, caplog: pytest.LogCaptureFixture
) -> None:
    jd = make_jobsd(timeout_check=3600)
    started = asyncio.Event()
    release = asyncio.Event()

    @jd.job(name="fails")
    async def fails() -> None:
        started.set()
        await release.wait()
        raise ValueError("too late")

    async with jd:
        with caplog.at_level(logging.WARNING, logger="jobsd_async"):
            run_id = await fails.create_run().run()
            async with asyncio.timeout(10):
                await started.wait()
            await close_as_a_watcher_would(jd, run_id)
            release.set()
            await discarded(caplog)
        assert jd.instance.runs_errors == 0


async def test_landed_endings_are_counted_once_each(make_jobsd: MakeJobsD) -> None:
    jd = make_jobsd()

    @jd.job(name="fails", retries_error_limit=1)
    async def fails() -> None:
        raise ValueError("no")

    @jd.job(name="slow", run_timeout=0.2, retries_timeout_limit=1)
    async def slow(info: RunInfo) -> None:
        await info.cancel.wait()

    async with jd:
        failed = await jd.wait_for_run(await fails.create_run().run(), timeout=10)
        timed_out = await jd.wait_for_run(await slow.create_run().run(), timeout=10)
    assert failed.status is RunStatus.FAILED and timed_out.status is RunStatus.TIMED_OUT
    assert jd.instance.runs_errors == 2
    assert jd.instance.runs_timed_out == 2
    assert jd.instance.runs_started == 4


@pytest.mark.cluster
async def test_owner_and_watcher_racing_for_one_deadline_count_it_once(make_jobsd: MakeJobsD) -> None:
    # The watcher scans every 2 ms, so it often closes the row at its deadline before the
    # owner's own timer's completion lands: exactly the race that counted one timeout twice.
    owner = make_jobsd(cancel_grace=0.1)
    watcher = make_jobsd(workers=0, timeout_check=0.002)
    watcher.register_job("slow", lambda: None)

    @owner.job(name="slow", run_timeout=0.3, retries_timeout_limit=0)
    async def slow(info: RunInfo) -> None:
        await info.cancel.wait()

    async with owner, watcher:
        run_ids = [await slow.create_run().run() for _ in range(4)]
        states = [await owner.wait_for_run(run_id, timeout=10) for run_id in run_ids]
    assert all(s.status is RunStatus.TIMED_OUT for s in states)
    # Read after down(): every completion and scan has finished.
    assert owner.instance.runs_timed_out + watcher.instance.runs_timed_out_res == 4
