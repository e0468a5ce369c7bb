"""jobsd's statements are correct under the server's default isolation (MySQL/MariaDB:
REPEATABLE READ), and nothing but a ``JobsDError`` leaves the public API."""

from __future__ import annotations

import asyncio
import random

import pytest
from conftest import MakeJobsD, jd_prefix
from sqlalchemy import select

from jobsd_async import JobsDError, RunInfo, RunStatus


@pytest.mark.cluster
async def test_cancel_run_racing_completions_always_answers(make_jobsd: MakeJobsD) -> None:
    jd = make_jobsd(workers=20, poll_interval=0.05)
    other = make_jobsd(workers=20, poll_interval=0.05)
    for instance in (jd, other):

        @instance.job(name="brief", retries_error_limit=2)
        async def brief(info: RunInfo) -> None:
            await asyncio.sleep(random.uniform(0, 0.01))
            if info.retries_on_error_count < 2 and random.random() < 0.5:
                raise ValueError("retry me")  # follow-ups keep the chains moving

    async with jd, other:
        run_ids = [await jd.create_run("brief").run() for _ in range(200)]

        async def cancel(run_id: int) -> tuple[bool, bool]:
            await asyncio.sleep(random.uniform(0, 0.05))
            return await other.cancel_run(run_id), await other.cancel_run(run_id)

        # No call may raise (on MariaDB 0.1.0 raised a RuntimeError in 91 of 400).
        answers = await asyncio.gather(*(cancel(run_id) for run_id in run_ids))
        states = [await jd.wait_for_run(run_id, timeout=30) for run_id in run_ids]

    for (first, second), state in zip(answers, states, strict=True):
        if first:  # the chain was still going: it ends cancelled, whatever it was doing
            assert state.status is RunStatus.CANCELLED, state
        else:  # it had finished before: nothing changed it
            assert state.status is not RunStatus.CANCELLED and not second, state


async def test_a_unique_enqueue_in_a_transaction_that_already_read_finds_the_active_chain(
    make_jobsd: MakeJobsD,
) -> None:
    jd = make_jobsd()
    jd.register_job("noop", lambda: None)
    async with jd:
        runs = jd.metadata.tables[f"{jd_prefix(jd)}runs"]
        async with jd.engine.connect() as conn:
            await conn.begin()
            # The caller's transaction reads first: under REPEATABLE READ its snapshot is
            # now fixed, before the chain below exists.
            await conn.execute(select(runs.c.id))
            existing = await jd.create_run("noop").unique("nightly").run_after(3600)
            found = await jd.create_run("noop").unique("nightly").run_after(3600, conn=conn)
            await conn.commit()
    assert found == existing


async def test_errors_from_below_reach_the_caller_as_jobsd_errors(make_jobsd: MakeJobsD) -> None:
    jd = make_jobsd()
    jd.register_job("noop", lambda: None)
    async with jd, jd.engine.connect() as conn:
        await conn.begin()
        await conn.close()  # a caller handing over a closed connection
        with pytest.raises(JobsDError):
            await jd.create_run("noop").run(conn=conn)
