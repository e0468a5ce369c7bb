"""Runs created where they can run at once are inserted already claimed (SPEC §3.3, §3.4).

Where the database returns inserted rows (PostgreSQL, MariaDB, SQLite), a run due now,
created on an instance that registers its job and has a free worker slot, starts there
without a claim: the insert itself records the start.  Slots still bound what runs; a run
that finds no free slot is inserted pending, for any instance to claim.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from conftest import BACKENDS, MakeJobsD, eventually, fetch_runs
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from jobsd_async import RunInfo, RunStatus, _dispatcher
from jobsd_async._store import _create


@contextmanager
def claims_on(engine: AsyncEngine) -> Iterator[list[str]]:
    """Collect the claim statements (UPDATEs that set run_started_by) run on ``engine``."""
    claims: list[str] = []

    def spy(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        assignments = re.search(r"\bUPDATE\b.*?\bSET\b(.*?)(\bWHERE\b|$)", statement, re.S)
        if assignments is not None and "run_started_by" in assignments.group(1):
            claims.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", spy)
    try:
        yield claims
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", spy)


async def test_run_created_here_skips_the_claim_where_the_database_returns_inserted_rows(
    make_jobsd: MakeJobsD,
) -> None:
    jd = make_jobsd(workers=2)
    seen: list[RunInfo] = []

    @jd.job(name="record")
    async def record(info: RunInfo) -> None:
        seen.append(info)

    async with jd:
        with claims_on(jd.engine) as claims:
            run_id = await jd.create_run("record").run()
            state = await jd.wait_for_run(run_id, timeout=5)
    assert state.status is RunStatus.SUCCEEDED
    assert [(i.id, i.run_started_by, i.run_total_count) for i in seen] == [(run_id, jd.instance_id, 1)]
    assert seen[0].run_started_at >= seen[0].run_at
    assert claims == []


async def test_runs_created_here_never_exceed_the_worker_slots(make_jobsd: MakeJobsD) -> None:
    jd = make_jobsd(workers=2)
    release = asyncio.Event()
    running = 0
    most = 0

    @jd.job(name="hold")
    async def hold() -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await release.wait()
        running -= 1

    async with jd:
        ids = await asyncio.gather(*(jd.create_run("hold").run() for _ in range(5)))
        rows = {row["id"]: row for row in await fetch_runs(jd)}
        started = [i for i in ids if rows[i]["run_started_at"] is not None]
        # Two took the free slots as they were inserted; three wait, pending, for a claim.
        assert len(started) == 2
        assert all(rows[i]["run_started_at"] is None for i in ids if i not in started)
        await eventually(lambda: running == 2, what="two runs holding both slots")
        release.set()
        states = [await jd.wait_for_run(i, timeout=10) for i in ids]
    assert [s.status for s in states] == [RunStatus.SUCCEEDED] * 5
    assert most == 2


async def test_taken_unique_name_gives_its_slot_back(make_jobsd: MakeJobsD) -> None:
    jd = make_jobsd(workers=1)
    release = asyncio.Event()
    ran: list[str] = []

    @jd.job(name="hold")
    async def hold(tag: str) -> None:
        ran.append(tag)
        await release.wait()

    async with jd:
        first = await jd.create_run("hold", "first").unique("only-one").run()
        again = await jd.create_run("hold", "again").unique("only-one").run()
        release.set()
        await jd.wait_for_run(first, timeout=5)
        # Had the refused insert kept its reserved slot, this run could never start.
        other = await jd.create_run("hold", "other").run()
        state = await jd.wait_for_run(other, timeout=5)
    assert again == first
    assert state.status is RunStatus.SUCCEEDED
    assert ran == ["first", "other"]


async def test_direct_start_whose_caller_gives_up_still_runs(make_jobsd: MakeJobsD) -> None:
    # Elsewhere a cancelled creation rolls back, or commits and runs like any pending run;
    # a direct start must not strand a row it inserted claimed, so it
    # shields the insert.
    jd = make_jobsd(workers=1)
    done = asyncio.Event()

    @jd.job(name="mark")
    async def mark() -> None:
        done.set()

    async with jd:
        creating = asyncio.create_task(jd.create_run("mark").unique("given-up").run())
        await asyncio.sleep(0)  # the creation is under way
        creating.cancel()
        await asyncio.wait_for(done.wait(), 10)

        async def recorded() -> bool:
            return all(row["run_completed_at"] is not None for row in await fetch_runs(jd))

        await eventually(recorded, what="the completion")
        rows = await fetch_runs(jd)
    assert creating.cancelled()
    assert len(rows) == 1
    assert rows[0]["run_completed_error"] is None
    assert rows[0]["run_success_count"] == 1


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "sqlite"])
async def test_a_direct_start_landing_after_down_is_handed_back_not_run(
    make_jobsd: MakeJobsD, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A caller's open transaction holds the unique name, so our insert waits for it; the
    # instance goes down meanwhile.  When the insert lands (already claimed), the row must
    # not start on the downed instance: it goes back to pending, for a peer.
    monkeypatch.setattr(_dispatcher, "_RESERVATIONS_WAIT", 0.2)
    leaving = make_jobsd(workers=2)
    ran_on: list[int] = []

    @leaving.job(name="mark")
    async def mark(info: RunInfo) -> None:
        ran_on.append(info.run_started_by)

    await leaving.up()
    async with leaving.engine.connect() as conn:
        await conn.begin()
        await leaving.create_run("mark").unique("held").run(conn=conn)  # not committed
        creating = asyncio.create_task(leaving.create_run("mark").unique("held").run())
        await asyncio.sleep(0.3)  # the insert waits on the name
        await leaving.down()
        await conn.rollback()
    run_id = await creating
    peer = make_jobsd()
    peer.register_job("mark", lambda: ran_on.append(-1))
    async with peer:
        state = await peer.wait_for_run(run_id, timeout=10)
    assert state.status is RunStatus.SUCCEEDED
    assert ran_on == [-1], "the run started on the instance that had gone down"
    assert state.run_total_count == 1


async def test_a_lost_insert_whose_row_runs_here_since_is_not_handed_back(make_jobsd: MakeJobsD) -> None:
    """An insert run again after a lost answer finds the row the lost one wrote (SPEC §3.8).
    When that row runs here by then (its queue was paused, and this instance claimed it
    since), it is the run: it is not handed back to pending, which would run it twice."""
    jd = make_jobsd(workers=2)
    release, started = asyncio.Event(), asyncio.Event()

    @jd.job(name="held")
    async def held() -> str:
        started.set()
        await release.wait()
        return "done"

    async with jd:
        running = await held.create_run().run()
        await started.wait()
        insert_claimed = _create.insert_claimed

        async def found_the_lost_row(*args: object, **kwargs: object) -> tuple[None, int]:
            return None, running  # as the insert run again returns the lost insert's row

        try:
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(_create, "insert_claimed", found_the_lost_row)
                assert await held.create_run().run() == running
            [row] = await fetch_runs(jd)
            assert row["run_started_by"] == jd.instance_id, "the running row was handed back"
            assert row["run_started_at"] is not None
        finally:
            release.set()
        state = await jd.wait_for_run(running, timeout=10)
        assert _create.insert_claimed is insert_claimed
    assert state.status is RunStatus.SUCCEEDED and state.run_total_count == 1
