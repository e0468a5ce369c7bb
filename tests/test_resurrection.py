"""SPEC §3.6 crash recovery: the resurrector takes over runs whose attempt can no longer end (fixes Go B2)."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from conftest import MakeJobsD, eventually, fetch_runs, insert_as_an_outsider, jd_prefix
from sqlalchemy import insert, update

from jobsd_async import JobsD, RunInfo, RunStatus

DEAD_OWNER = 987654  # an instance id with no row: its owner is gone


def every_100ms(now: datetime) -> datetime:
    return now + timedelta(milliseconds=100)


async def insert_running_row(
    jd: JobsD,
    *,
    job: str,
    owner: int = DEAD_OWNER,
    name: str | None = None,
    schedule: str | None = None,
    timeout_at: datetime | None = None,
    limit: int | None = 1,
    retries_timeout_limit: int = 3,
) -> int:
    """A row that looks claimed by ``owner``, as a crashed instance leaves it."""
    runs = jd.metadata.tables[f"{jd_prefix(jd)}runs"]
    now = datetime.now(UTC)
    name = name or f"orphan-{now.timestamp()}-{id(object())}"
    return await insert_as_an_outsider(
        jd.engine,
        insert(runs).values(
            name=name,
            name_active=name,
            job=job,
            job_args="[]",
            job_kwargs="{}",
            delay=0.0,
            run_at=now - timedelta(seconds=5),
            run_total_count=1,
            run_success_limit=limit,
            run_started_at=now - timedelta(seconds=5),
            run_started_by=owner,
            run_timeout=1800.0,
            run_timeout_at=timeout_at or now + timedelta(minutes=30),
            retries_on_error_limit=3,
            retries_on_timeout_limit=retries_timeout_limit,
            schedule=schedule,
            created_at=now - timedelta(seconds=5),
            created_by=owner,
        ),
    )


def resurrecting(make_jobsd: MakeJobsD, **options: Any) -> JobsD:
    return make_jobsd(timeout_check=0.1, **options)


async def test_run_of_a_dead_owner_is_rerun_and_its_unique_name_handed_over(make_jobsd: MakeJobsD) -> None:
    jd = resurrecting(make_jobsd)
    ran = asyncio.Event()
    jd.register_job("work", ran.set)
    await jd.up()
    row_id = await insert_running_row(jd, job="work", name="only-one")
    async with asyncio.timeout(10):
        await ran.wait()
    state = await jd.wait_for_run(row_id, timeout=10)
    rows = await fetch_runs(jd)
    assert rows[0]["run_completed_error"] == "job run timed out"
    assert rows[1]["origin_id"] == row_id
    assert rows[1]["retries_on_timeout_count"] == 1
    assert rows[1]["created_by"] == jd.instance_id
    assert state.status is RunStatus.SUCCEEDED
    assert jd.instance.runs_timed_out_res == 1
    # The chain ended, so the unique name is free for a new chain.
    again = await jd.create_run("work").unique("only-one").run()
    assert again != row_id


async def test_run_past_its_deadline_is_resurrected_even_if_its_owner_lives(make_jobsd: MakeJobsD) -> None:
    owner = make_jobsd(timeout_check=3600)
    owner.register_job("work", lambda: None)
    checker = resurrecting(make_jobsd)
    checker.register_job("work", lambda: None)
    async with owner, checker:
        row_id = await insert_running_row(
            checker, job="work", owner=owner.instance_id, timeout_at=datetime.now(UTC) - timedelta(seconds=1)
        )
        state = await checker.wait_for_run(row_id, timeout=10)
    assert state.status is RunStatus.SUCCEEDED
    assert checker.instance.runs_timed_out_res == 1


async def test_live_owner_within_deadline_is_left_alone(make_jobsd: MakeJobsD) -> None:
    owner = make_jobsd(timeout_check=3600, heartbeat_interval=0.5)
    owner.register_job("work", lambda: None)
    checker = resurrecting(make_jobsd)
    checker.register_job("work", lambda: None)
    async with owner, checker:
        row_id = await insert_running_row(checker, job="work", owner=owner.instance_id)
        await asyncio.sleep(2.0)  # many timeout checks, and more than one missed-beat window
        state = await checker.get_run_state(row_id)
    assert state.status is RunStatus.RUNNING
    assert checker.instance.runs_timed_out_res == 0


async def test_recurring_chain_continues_after_its_owner_died(make_jobsd: MakeJobsD) -> None:
    jd = resurrecting(make_jobsd)
    counts: list[int] = []
    jd.register_schedule("every_100ms", every_100ms)

    @jd.job(name="tick")
    async def tick(info: RunInfo) -> None:
        counts.append(info.run_success_count)

    await jd.up()
    row_id = await insert_running_row(jd, job="tick", schedule="every_100ms", limit=3)
    state = await jd.wait_for_run(row_id, timeout=10)
    assert state.status is RunStatus.SUCCEEDED
    assert state.run_success_count == 3
    assert counts == [0, 1, 2]


async def test_rows_with_an_unknown_schedule_are_left_to_others(make_jobsd: MakeJobsD) -> None:
    jd = resurrecting(make_jobsd)
    jd.register_job("tick", lambda: None)
    await jd.up()
    row_id = await insert_running_row(jd, job="tick", schedule="known-elsewhere", limit=None)
    # An orphan the instance can take: once it is taken, a timeout check has seen both.
    witness = await insert_running_row(jd, job="tick")
    await jd.wait_for_run(witness, timeout=10)
    assert (await jd.get_run_state(row_id)).status is RunStatus.RUNNING
    assert jd.instance.runs_timed_out_res == 1


@pytest.mark.cluster
async def test_concurrent_resurrectors_make_one_follow_up_each(make_jobsd: MakeJobsD) -> None:
    # Every orphan exists before the resurrectors start: all five compete for all twenty.
    tables = make_jobsd(workers=0)
    await tables.up()
    await tables.down()
    ids = [
        await insert_running_row(tables, job="work", schedule="every_100ms" if i % 2 else None)
        for i in range(20)
    ]
    instances = [resurrecting(make_jobsd, workers=0) for _ in range(5)]
    for jd in instances:
        jd.register_job("work", lambda: None)
        jd.register_schedule("every_100ms", every_100ms)
    await asyncio.gather(*(jd.up() for jd in instances))

    async def all_taken() -> bool:
        rows = await fetch_runs(instances[0])
        return all(r["run_completed_at"] is not None for r in rows if r["id"] in ids)

    await eventually(all_taken, what="every orphan resurrected")
    rows = await fetch_runs(instances[0])
    follow_ups = [r for r in rows if r["id"] not in ids]
    assert sorted(r["parent_id"] for r in follow_ups) == sorted(ids)
    assert sum(jd.instance.runs_timed_out_res for jd in instances) == 20


async def test_late_completion_after_resurrection_is_discarded(
    make_jobsd: MakeJobsD, caplog: pytest.LogCaptureFixture
) -> None:
    jd = make_jobsd(timeout_check=3600)
    started = asyncio.Event()
    release = asyncio.Event()

    @jd.job(name="slow")
    async def slow() -> str:
        started.set()
        await release.wait()
        return "late"

    await jd.up()
    run_id = await slow.create_run().run()
    await asyncio.wait_for(started.wait(), 10)
    runs = jd.metadata.tables[f"{jd_prefix(jd)}runs"]
    async with jd.engine.begin() as conn:  # what another instance's resurrector does
        await conn.execute(
            update(runs)
            .where(runs.c.id == run_id)
            .values(
                run_completed_at=datetime.now(UTC),
                run_completed_error="job run timed out",
                name_active=None,
            )
        )
    with caplog.at_level(logging.WARNING, logger="jobsd_async"):
        release.set()
        await eventually(
            lambda: any("already completed elsewhere" in r.getMessage() for r in caplog.records),
            what="the late ending logged",
        )
    rows = await fetch_runs(jd)
    assert len(rows) == 1
    assert rows[0]["run_result"] is None
    assert rows[0]["run_success_count"] == 0


async def test_a_claim_whose_answer_was_lost_is_handed_over_without_using_a_retry(
    make_jobsd: MakeJobsD,
) -> None:
    # A row this instance claimed but never started (the claim committed, its answer was
    # lost in a fault): it must run, even with no timeout retries left.
    jd = resurrecting(make_jobsd, heartbeat_interval=0.2, retries_timeout_limit=0)
    ran = asyncio.Event()
    jd.register_job("work", ran.set)
    await jd.up()
    row_id = await insert_running_row(jd, job="work", owner=jd.instance_id, retries_timeout_limit=0)
    async with asyncio.timeout(10):
        await ran.wait()
    state = await jd.wait_for_run(row_id, timeout=10)
    rows = await fetch_runs(jd)
    assert rows[0]["run_completed_error"] == "job run killed"
    assert rows[1]["retries_on_timeout_count"] == 0
    assert state.status is RunStatus.SUCCEEDED
    assert jd.instance.runs_timed_out_res == 0
