"""Transactional enqueue: ``run(conn=...)`` writes the row in the caller's transaction."""

from __future__ import annotations

import asyncio

import pytest
from conftest import MakeJobsD, fetch_runs
from sqlalchemy.ext.asyncio import AsyncSession

from jobsd_async import RunStatus


async def test_run_executes_only_after_commit(make_jobsd: MakeJobsD) -> None:
    jd = make_jobsd(poll_interval=0.05)
    ran = asyncio.Event()
    jd.register_job("mark", ran.set)
    async with jd:
        async with jd.engine.connect() as conn:
            await conn.begin()
            run_id = await jd.create_run("mark").run(conn=conn)
            with pytest.raises(TimeoutError):  # several polls pass: the row is not visible yet
                await asyncio.wait_for(asyncio.shield(ran.wait()), 0.4)
            await conn.commit()
        await asyncio.wait_for(ran.wait(), 10)
        state = await jd.wait_for_run(run_id, timeout=10)
    assert state.status is RunStatus.SUCCEEDED


async def test_rollback_leaves_nothing(make_jobsd: MakeJobsD) -> None:
    jd = make_jobsd(poll_interval=0.05)
    ran: list[int] = []
    jd.register_job("mark", lambda: ran.append(1))
    async with jd:
        async with jd.engine.connect() as conn:
            await conn.begin()
            await jd.create_run("mark").run_after(0.1, conn=conn)
            await conn.rollback()
        await asyncio.sleep(0.5)
        assert await fetch_runs(jd) == []
    assert ran == []


async def test_session_commit_runs_the_run(make_jobsd: MakeJobsD) -> None:
    jd = make_jobsd()
    jd.register_job("mark", lambda: "done")
    async with jd:
        async with AsyncSession(jd.engine) as session, session.begin():
            run_id = await jd.create_run("mark").run(conn=session)
        state = await jd.wait_for_run(run_id, timeout=10)
    assert state.result == "done"


async def test_conn_must_be_a_connection_or_session(make_jobsd: MakeJobsD) -> None:
    jd = make_jobsd()
    jd.register_job("mark", lambda: None)
    async with jd:
        with pytest.raises(TypeError, match="AsyncConnection or AsyncSession"):
            await jd.create_run("mark").run(conn="not a connection")  # type: ignore[arg-type]
