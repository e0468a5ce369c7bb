"""Lifecycle: up/down/async with, state errors with the fix in the message (fixes Go B7)."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from conftest import FAST, MakeJobsD, fetch_runs
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from jobsd_async import JobsD, JobsDStateError, StoreError


async def noop() -> None:
    return None


async def double(value: int) -> int:
    return value * 2


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


async def test_up_twice_raises(make_jobsd: MakeJobsD) -> None:
    jd = make_jobsd()
    await jd.up()
    with pytest.raises(JobsDStateError, match="after down"):
        await jd.up()
    with pytest.raises(JobsDStateError):
        async with jd:
            pass


async def test_up_after_down_starts_a_new_instance_with_the_same_jobs(make_jobsd: MakeJobsD) -> None:
    jd = make_jobsd()
    job = jd.register_job("double", double)
    async with jd:
        first_id = jd.instance_id
        run_id = await job.create_run(2).run()
        assert (await jd.wait_for_run(run_id, timeout=10)).result == 4
        assert jd.instance.runs_started == 1
    async with jd:
        assert jd.instance_id != first_id
        assert jd.instance.runs_started == 0  # counters of the new instance
        assert jd.instance.shutdown_at is None
        run_id = await job.create_run(3).run()  # the handle from before down() still works
        assert (await jd.wait_for_run(run_id, timeout=10)).result == 6
        assert jd.instance.runs_started == 1
    rows = await _instance_rows(jd)
    assert [row["id"] for row in rows] == sorted([first_id, jd.instance_id])
    assert all(row["shutdown_at"] is not None for row in rows)


async def test_jobs_registered_between_starts_are_served_by_the_next(make_jobsd: MakeJobsD) -> None:
    jd = make_jobsd()
    async with jd:
        pass
    late = jd.register_job("late", double)
    async with jd:
        assert jd.instance.supported_jobs == ("late",)
        run_id = await late.create_run(5).run()
        assert (await jd.wait_for_run(run_id, timeout=10)).result == 10


def test_a_module_level_jobsd_serves_one_event_loop_after_another(tmp_path: Path) -> None:
    """Two app lifespans (two TestClients) in a row: each builds an engine on its own loop."""
    jd = JobsD(**{**FAST, "table_prefix": "restart_"})
    job = jd.register_job("double", double)

    async def lifespan(value: int) -> object:
        engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'app.db'}")
        jd.use_engine(engine)
        try:
            async with jd:
                run_id = await job.create_run(value).run()
                return (await jd.wait_for_run(run_id, timeout=10)).result
        finally:
            await engine.dispose()

    assert asyncio.run(lifespan(1)) == 2
    assert asyncio.run(lifespan(21)) == 42


async def test_an_engine_is_required_to_start(make_jobsd: MakeJobsD, engine: AsyncEngine) -> None:
    jd = JobsD()
    with pytest.raises(JobsDStateError, match="use_engine"):
        await jd.up()
    with pytest.raises(JobsDStateError, match="use_engine"):
        _ = jd.engine
    with pytest.raises(TypeError, match="AsyncEngine"):
        jd.use_engine("sqlite://")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="table_prefix"):
        jd.use_engine(engine, table_prefix="bad prefix")
    prefixed = make_jobsd()
    jd.use_engine(engine, table_prefix=prefixed._config.table_prefix)
    async with jd:
        assert jd.engine is engine
        with pytest.raises(JobsDStateError, match="use_engine"):
            jd.use_engine(engine)
        assert any(name.startswith(prefixed._config.table_prefix) for name in jd.metadata.tables)


async def _instance_rows(jd: JobsD) -> list[Any]:
    instances = jd.metadata.tables[next(n for n in jd.metadata.tables if n.endswith("instances"))]
    async with jd.engine.connect() as conn:
        return list((await conn.execute(instances.select().order_by(instances.c.id))).mappings())


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
        with pytest.raises(StoreError):  # stopped again: a later up() may try again
            await jd.up()
        await jd.down()
    finally:
        await engine.dispose()


async def test_a_sqlite_file_held_by_another_connection_is_switched_to_wal_once_free(
    tmp_path: Path, table_prefix: str
) -> None:
    # Instances starting together open the file at once: switching it to WAL mode (or
    # even asking its mode) can then be refused at once, "database is locked", without
    # waiting on the busy timeout.  The start waits for the file instead of failing.
    path = tmp_path / "held.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE held (x INTEGER)")
    holder.execute("BEGIN EXCLUSIVE")
    # No busy timeout: a file another connection holds refuses at once, as in that race.
    engine = create_async_engine(f"sqlite+aiosqlite:///{path}", connect_args={"timeout": 0})
    jd = JobsD(engine, table_prefix=table_prefix, **FAST)
    asyncio.get_running_loop().call_later(0.3, holder.rollback)
    try:
        async with jd, engine.connect() as conn:
            mode = (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar()
    finally:
        holder.close()
        await engine.dispose()
    assert mode == "wal"
