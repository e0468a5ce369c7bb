"""Retention: prune() and the retention option delete finished chains only, in batches."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from conftest import MakeJobsD, eventually, fetch_runs, jd_prefix
from sqlalchemy import insert, update

from jobsd_async import JobsD

HOUR_AGO = timedelta(hours=1)


async def age(jd: JobsD, row_ids: list[int]) -> None:
    """Pretend these rows finished an hour ago."""
    runs = jd.metadata.tables[f"{jd_prefix(jd)}runs"]
    async with jd.engine.begin() as conn:
        await conn.execute(
            update(runs)
            .where(runs.c.id.in_(row_ids), runs.c.run_completed_at.is_not(None))
            .values(run_completed_at=datetime.now(UTC) - HOUR_AGO)
        )


async def test_prune_deletes_old_finished_chains_and_nothing_live(make_jobsd: MakeJobsD) -> None:
    jd = make_jobsd()
    attempts = 0

    @jd.job(name="flaky", retries_error_limit=1)
    def flaky() -> None:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise RuntimeError("once")

    jd.register_job("noop", lambda: None)

    @jd.job(name="fails", retries_error_limit=1)
    def fails() -> None:
        raise RuntimeError("later")

    async with jd:
        old_single = await jd.create_run("noop").run()
        old_retried = await jd.create_run("flaky").run()
        recent = await jd.create_run("noop").run()
        for run_id in (old_single, old_retried, recent):
            await jd.wait_for_run(run_id, timeout=10)
        # A live chain: its first row failed (and is aged below), its retry waits an hour.
        live = await jd.create_run("fails").retry_backoff(3600).run()

        async def live_retry_pending() -> bool:
            return any(r["origin_id"] == live for r in await fetch_runs(jd))

        await eventually(live_retry_pending, what="the retry row")
        pending = await jd.create_run("noop").run_after(3600)
        rows = await fetch_runs(jd)
        await age(jd, [r["id"] for r in rows if r["id"] != recent])
        deleted = await jd.prune(older_than=600)
        remaining = await fetch_runs(jd)

    assert deleted == 3  # old_single, and both rows of old_retried
    kept = {r["id"] for r in remaining}
    assert {recent, live, pending} <= kept
    assert not {old_single, old_retried} & kept
    assert all(r["origin_id"] not in (old_single, old_retried) for r in remaining)


async def test_prune_works_in_batches(make_jobsd: MakeJobsD) -> None:
    jd = make_jobsd(workers=0)
    async with jd:
        runs = jd.metadata.tables[f"{jd_prefix(jd)}runs"]
        old = datetime.now(UTC) - HOUR_AGO
        values = [
            {
                "name": f"n{i}",
                "job": "gone",
                "delay": 0.0,
                "run_at": old,
                "run_total_count": 1,
                "run_success_count": 1,
                "run_started_at": old,
                "run_completed_at": old,
                "created_at": old,
                "created_by": jd.instance_id,
            }
            for i in range(1200)
        ]
        async with jd.engine.begin() as conn:
            await conn.execute(insert(runs), values)
        assert await jd.prune(older_than=60) == 1200
        assert await fetch_runs(jd) == []


async def test_dead_instances_are_pruned_live_ones_never(make_jobsd: MakeJobsD) -> None:
    gone = make_jobsd()
    await gone.up()
    await gone.down()
    live = make_jobsd()
    async with live:
        instances = live.metadata.tables[f"{jd_prefix(live)}instances"]
        async with live.engine.begin() as conn:
            await conn.execute(
                update(instances)
                .where(instances.c.id == gone.instance_id)
                .values(last_seen_at=datetime.now(UTC) - HOUR_AGO, shutdown_at=datetime.now(UTC) - HOUR_AGO)
            )
        await live.prune(older_than=0)
        async with live.engine.connect() as conn:
            ids = (await conn.execute(instances.select())).scalars().all()
    assert list(ids) == [live.instance_id]


async def test_retention_option_prunes_in_the_background(make_jobsd: MakeJobsD) -> None:
    jd = make_jobsd(retention=0, timeout_check=0.1)
    ran = asyncio.Event()

    @jd.job(name="noop")
    async def noop() -> None:
        ran.set()

    async with jd:
        await jd.create_run("noop").run()
        # (Not wait_for_run: with retention=0 the finished run may be gone before it looks.)
        async with asyncio.timeout(10):
            await ran.wait()

        async def gone() -> bool:
            return await fetch_runs(jd) == []

        await eventually(gone, what="the finished run pruned")
