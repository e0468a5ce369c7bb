"""Transactional enqueue: ``run(conn=...)`` writes the row in the caller's transaction."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from conftest import BACKENDS, MakeJobsD, fetch_runs
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from jobsd_async import RunStatus


async def test_run_executes_only_after_commit(make_jobsd: MakeJobsD) -> None:
    # Neither a poll (one an hour) nor a NOTIFY (not listening) can start it: only the
    # commit hook that queues it here once the caller's transaction commits.
    jd = make_jobsd(poll_interval=3600, listen=False)
    ran = asyncio.Event()
    jd.register_job("mark", ran.set)
    async with jd:
        async with jd.engine.connect() as conn:
            await conn.begin()
            run_id = await jd.create_run("mark").run(conn=conn)
            await asyncio.sleep(0.3)
            assert not ran.is_set(), "ran before the caller's transaction committed"
            await conn.commit()
        await asyncio.wait_for(ran.wait(), 10)
        state = await jd.wait_for_run(run_id, timeout=10)
    assert state.status is RunStatus.SUCCEEDED


# (SQLite gives a rolled-back row's id to the next insert, so the two runs cannot be told apart.)
@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "sqlite"])
async def test_a_rolled_back_enqueue_is_not_queued_by_a_later_commit(
    make_jobsd: MakeJobsD, monkeypatch: pytest.MonkeyPatch
) -> None:
    jd = make_jobsd(poll_interval=3600, listen=False)
    jd.register_job("mark", lambda: None)
    async with jd:
        assert jd._runner is not None
        queued: list[int] = []
        enqueue = jd._runner.dispatcher.enqueue

        def spy(row_id: int, due: datetime) -> None:
            queued.append(row_id)
            enqueue(row_id, due)

        monkeypatch.setattr(jd._runner.dispatcher, "enqueue", spy)
        async with jd.engine.connect() as conn:
            await conn.begin()
            rolled_back = await jd.create_run("mark").run(conn=conn)
            await conn.rollback()
            await conn.begin()
            committed = await jd.create_run("mark").run(conn=conn)
            await conn.commit()
        await jd.wait_for_run(committed, timeout=10)
    assert rolled_back not in queued
    assert set(queued) == {committed}


async def test_run_after_in_a_transaction_counts_from_the_call_not_from_begin(make_jobsd: MakeJobsD) -> None:
    jd = make_jobsd()
    jd.register_job("mark", lambda: None)
    async with jd:
        async with jd.engine.connect() as conn:
            await conn.begin()
            await conn.execute(select(1))  # the transaction has started
            await asyncio.sleep(1.0)
            called_at = datetime.now(UTC)
            run_id = await jd.create_run("mark").run_after(0.5, conn=conn)
            await conn.commit()
        rows = await fetch_runs(jd)
    assert rows[0]["id"] == run_id
    assert rows[0]["run_at"] >= called_at + timedelta(seconds=0.45)


async def test_rollback_leaves_nothing(make_jobsd: MakeJobsD) -> None:
    jd = make_jobsd(poll_interval=0.05)
    ran: list[int] = []
    jd.register_job("mark", lambda: ran.append(1))
    async with jd:
        async with jd.engine.connect() as conn:
            await conn.begin()
            await jd.create_run("mark").run_after(0.1, conn=conn)
            await conn.rollback()
        assert await fetch_runs(jd) == []
        # A run due after the rolled-back one, waited for: only it ever ran.
        after = await jd.create_run("mark").run_after(0.2)
        await jd.wait_for_run(after, timeout=10)
        assert [r["id"] for r in await fetch_runs(jd)] == [after]
    assert ran == [1]


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
