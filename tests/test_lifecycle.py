"""Lifecycle: up/down/async with, state errors with the fix in the message (fixes Go B7)."""

from __future__ import annotations

import pytest
from conftest import MakeJobsD, fetch_runs
from sqlalchemy.ext.asyncio import create_async_engine

from jobsd_async import JobsD, JobsDStateError, StoreError


async def noop() -> None:
    return None


async def test_create_run_before_up_raises_and_writes_nothing(make_jobsd: MakeJobsD) -> None:
    jd = make_jobsd()
    jd.register_job("noop", noop)
    with pytest.raises(JobsDStateError, match="up\\(\\)"):
        await jd.create_run("noop").run()
    async with jd:
        assert await fetch_runs(jd) == []


async def test_create_run_after_down_raises(make_jobsd: MakeJobsD) -> None:
    jd = make_jobsd()
    jd.register_job("noop", noop)
    await jd.up()
    await jd.down()
    with pytest.raises(JobsDStateError, match="down"):
        await jd.create_run("noop").run()


async def test_up_twice_and_up_after_down_raise(make_jobsd: MakeJobsD) -> None:
    jd = make_jobsd()
    await jd.up()
    with pytest.raises(JobsDStateError):
        await jd.up()
    with pytest.raises(JobsDStateError):
        async with jd:
            pass
    await jd.down()
    with pytest.raises(JobsDStateError, match="new JobsD"):
        await jd.up()


async def test_down_is_idempotent_and_allowed_before_up(make_jobsd: MakeJobsD) -> None:
    never_started = make_jobsd()
    await never_started.down()
    jd = make_jobsd()
    await jd.up()
    await jd.down()
    await jd.down()


async def test_registration_after_up_raises(make_jobsd: MakeJobsD) -> None:
    jd = make_jobsd()
    async with jd:
        with pytest.raises(JobsDStateError, match="before up"):
            jd.register_job("late", noop)
        with pytest.raises(JobsDStateError, match="before up"):
            jd.register_schedule("late", lambda now: now)


async def test_engine_is_not_disposed(make_jobsd: MakeJobsD) -> None:
    jd = make_jobsd()
    async with jd:
        pass
    async with jd.engine.connect() as conn:
        assert (await conn.exec_driver_sql("SELECT 1")).scalar_one() == 1


async def test_instance_row_written_at_up_and_shutdown_at_down(make_jobsd: MakeJobsD) -> None:
    jd = make_jobsd()
    jd.register_job("noop", noop)
    async with jd:
        info = jd.instance
        assert info.id == jd.instance_id
        assert info.supported_jobs == ("noop",)
        assert info.shutdown_at is None
    instances = jd.metadata.tables[next(n for n in jd.metadata.tables if n.endswith("instances"))]
    async with jd.engine.connect() as conn:
        row = (await conn.execute(instances.select())).mappings().one()
    assert row["id"] == jd.instance_id
    assert row["supported_jobs"] == "noop"
    assert row["shutdown_at"] is not None
    assert row["last_seen_at"] is not None
    assert jd.instance.shutdown_at is not None


async def test_instance_id_before_up_raises(make_jobsd: MakeJobsD) -> None:
    jd = make_jobsd()
    with pytest.raises(JobsDStateError):
        _ = jd.instance_id


async def test_failed_up_raises_store_error_and_stops(tmp_path: object) -> None:
    engine = create_async_engine("postgresql+asyncpg://nobody@127.0.0.1:1/none")
    jd = JobsD(engine)
    try:
        with pytest.raises(StoreError) as info:
            await jd.up()
        assert info.value.__cause__ is not None
        with pytest.raises(JobsDStateError):
            await jd.up()
        await jd.down()
    finally:
        await engine.dispose()
