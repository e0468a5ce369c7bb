"""Periodic jobs: ``periodic=`` keeps exactly one chain per job, as the code declares it."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from conftest import MakeJobsD, eventually, fetch_runs, jd_prefix
from sqlalchemy import update

from jobsd_async import (
    Args,
    JobArgsMismatchError,
    JobArgsSerializationError,
    JobsD,
    RunStatus,
    every,
)

HOUR = 3600.0


def chain_rows(rows: list[dict[str, Any]], job: str = "report") -> list[dict[str, Any]]:
    return [r for r in rows if r["name"] == f"periodic:{job}"]


def open_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r["run_completed_at"] is None]


async def open_chain(jd: JobsD, job: str = "report") -> list[dict[str, Any]]:
    return open_rows(chain_rows(await fetch_runs(jd), job))


def held_report(make_jobsd: MakeJobsD, *, interval: float) -> tuple[JobsD, asyncio.Event, asyncio.Event]:
    """An instance whose periodic "report" (args ``v1``) runs until ``release`` is set."""
    started, release = asyncio.Event(), asyncio.Event()
    old = make_jobsd(workers=1, timeout_check=HOUR)

    @old.job("report", periodic=every(interval), periodic_args=("v1",))
    async def report(tag: str) -> str:
        started.set()
        await release.wait()
        return tag

    return old, started, release


def register_report(jd: JobsD, **options: Any) -> None:
    @jd.job("report", **options)
    async def report(tag: str = "daily") -> str:
        return tag


def now() -> datetime:
    return datetime.now(UTC)


async def test_a_periodic_job_has_one_chain_that_runs_on_schedule(make_jobsd: MakeJobsD) -> None:
    jd = make_jobsd()
    ran: list[str] = []

    @jd.job("report", periodic=every(0.3), periodic_args=Args("eu", hours=2), retries_error_limit=1)
    async def report(region: str, *, hours: int) -> str:
        ran.append(f"{region}/{hours}")
        return region

    assert report.periodic == every(0.3)
    assert report.periodic_args == Args("eu", hours=2)
    async with jd:
        [first] = await open_chain(jd)  # created by up(), due at the first tick
        assert first["schedule"] == "every:0.3"
        assert first["job_args"] == '["eu"]' and first["job_kwargs"] == '{"hours":2}'
        assert first["retries_on_error_limit"] == 1
        await eventually(lambda: len(ran) >= 3, what="three periodic runs")
        state = await jd.get_run_state(first["id"])
        assert state.status in (RunStatus.PENDING, RunStatus.RUNNING)
    rows = chain_rows(await fetch_runs(jd))
    assert {r["origin_id"] or r["id"] for r in rows} == {first["id"]}  # one chain
    assert len(open_rows(rows)) == 1
    assert set(ran) == {"eu/2"}


async def test_instances_starting_at_once_converge_to_one_chain(make_jobsd: MakeJobsD) -> None:
    jds = [make_jobsd(workers=1) for _ in range(8)]
    for jd in jds:
        register_report(jd, periodic=every(HOUR))
    await asyncio.gather(*(jd.up() for jd in jds))
    rows = chain_rows(await fetch_runs(jds[0]))
    assert len(rows) == 1, rows  # one row inserted, none created and cancelled
    # Every instance's next pass (at once, whoever thinks it reconciles) changes nothing.
    await asyncio.gather(*(jd._runner.periodic.reconcile() for jd in jds if jd._runner))
    assert chain_rows(await fetch_runs(jds[0])) == rows
    # Only the newest instance reconciles.
    leading = [jd.instance_id for jd in jds if jd._runner and jd._runner.periodic.leading]
    assert leading == [max(jd.instance_id for jd in jds)]


def rewrites(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "now follows the code" in r.getMessage()]


async def test_restarting_does_not_duplicate_the_chain(
    make_jobsd: MakeJobsD, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="jobsd_async")
    jd = make_jobsd()
    register_report(jd, periodic=every(HOUR))
    async with jd:
        [row] = await open_chain(jd)
    async with jd:  # the same object, started again as a new instance
        assert await open_chain(jd) == [row]
    other = make_jobsd()
    register_report(other, periodic=every(HOUR))
    async with other:
        assert await open_chain(other) == [row]
    assert len(chain_rows(await fetch_runs(jd))) == 1
    assert rewrites(caplog) == []  # the stored definition compares equal to the code's


async def test_a_changed_schedule_in_code_rewrites_the_pending_chain(
    make_jobsd: MakeJobsD, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="jobsd_async")
    old = make_jobsd()
    register_report(old, periodic=every(HOUR), periodic_args=("v1",))
    async with old:
        [before] = await open_chain(old)
    assert before["run_at"] > now() + timedelta(seconds=HOUR - 60)

    new = make_jobsd()
    register_report(new, periodic=every(2 * HOUR), periodic_args=Args(tag="v2"), run_timeout=7)
    async with new:
        [after] = await open_chain(new)
    assert after["id"] == before["id"]  # the same row, rewritten in place
    assert after["schedule"] == "every:7200.0"
    assert (after["job_args"], after["job_kwargs"]) == ("[]", '{"tag":"v2"}')
    assert after["run_timeout"] == 7
    assert after["run_at"] > now() + timedelta(seconds=2 * HOUR - 60)  # due time recomputed
    [rewrite] = rewrites(caplog)
    assert "every:3600.0 -> every:7200.0" in rewrite


async def test_only_the_newest_instance_decides_during_a_rolling_deploy(make_jobsd: MakeJobsD) -> None:
    old = make_jobsd(workers=1)
    register_report(old, periodic=every(HOUR))
    new = make_jobsd(workers=1)
    register_report(new, periodic=every(2 * HOUR))
    async with old:
        async with new:
            [row] = await open_chain(new)
            assert row["schedule"] == "every:7200.0"
            assert old._runner is not None
            await old._runner.periodic.reconcile()  # the older code no longer decides
            assert await open_chain(old) == [row]
        # The newer instance is gone: the remaining one's code decides again.
        assert old._runner is not None
        await old._runner.periodic.reconcile()
        [back] = await open_chain(old)
        assert (back["id"], back["schedule"]) == (row["id"], "every:3600.0")


async def test_a_running_attempt_finishes_and_its_follow_up_follows_the_new_code(
    make_jobsd: MakeJobsD,
) -> None:
    old, started, release = held_report(make_jobsd, interval=2)
    new = make_jobsd(workers=1, timeout_check=0.2)
    register_report(new, periodic=every(HOUR), periodic_args=("v2",))
    async with old:
        await asyncio.wait_for(started.wait(), 10)
        [running] = await open_chain(old)
        assert running["run_started_at"] is not None
        async with new:
            assert await open_chain(new) == [running]  # a running attempt is left alone
            # The old instance is not the one that reconciles: its follow-up (due 2 s later,
            # were it left) is rewritten by the new instance's next pass (every 0.2 s).
            release.set()

            async def follows_new_code() -> bool:
                rows = await open_chain(new)
                return bool(rows) and rows[0]["schedule"] == "every:3600.0"

            await eventually(follows_new_code, what="the follow-up rewritten")
            [follow_up] = await open_chain(new)
    rows = chain_rows(await fetch_runs(new))
    done = next(r for r in rows if r["id"] == running["id"])
    assert done["run_completed_error"] is None and done["run_result"] == '"v1"'
    assert follow_up["job_args"] == '["v2"]'
    assert (follow_up["origin_id"], follow_up["parent_id"]) == (running["id"], running["id"])
    assert follow_up["run_at"] > now() + timedelta(seconds=HOUR - 60)


async def test_the_reconciling_instance_plans_follow_ups_from_its_code(make_jobsd: MakeJobsD) -> None:
    old, started, release = held_report(make_jobsd, interval=0.2)
    new = make_jobsd(workers=1, timeout_check=0.2)
    register_report(new, periodic=every(HOUR), periodic_args=("v2",))
    async with old:
        await asyncio.wait_for(started.wait(), 10)
        [running] = await open_chain(old)
        async with new:
            # The old instance dies with the attempt running: the new one, which reconciles,
            # resurrects the row and plans its follow-up (a retry at the next tick) from its code.
            instances = new.metadata.tables[f"{jd_prefix(new)}instances"]
            async with new.engine.begin() as conn:
                await conn.execute(
                    update(instances).where(instances.c.id == old.instance_id).values(shutdown_at=now())
                )

            async def followed() -> bool:
                rows = await open_chain(new)
                return bool(rows) and rows[0]["id"] != running["id"]

            await eventually(followed, what="the resurrected row's follow-up")
            [follow_up] = await open_chain(new)
            release.set()
    assert follow_up["created_by"] == new.instance_id
    assert (follow_up["schedule"], follow_up["job_args"]) == ("every:3600.0", '["v2"]')
    assert follow_up["retries_on_timeout_count"] == 1
    assert follow_up["run_at"] > now() + timedelta(seconds=HOUR - 60)


async def test_removing_periodic_from_code_ends_the_chain(make_jobsd: MakeJobsD) -> None:
    before = make_jobsd(workers=1)
    register_report(before, periodic=every(HOUR))
    after = make_jobsd(workers=1)
    register_report(after)  # the same job, no longer periodic
    async with before:
        [row] = await open_chain(before)
        async with after:
            assert await open_chain(after) == []
            state = await after.get_run_state(row["id"])
            assert state.status is RunStatus.CANCELLED
            assert before._runner is not None
            await before._runner.periodic.reconcile()  # the older code does not bring it back
            assert await open_chain(before) == []
    assert len(chain_rows(await fetch_runs(after))) == 1


async def test_a_cancelled_chain_is_created_again_while_declared(make_jobsd: MakeJobsD) -> None:
    jd = make_jobsd()
    register_report(jd, periodic=every(HOUR))
    async with jd:
        [row] = await open_chain(jd)
        assert await jd.cancel_run(row["id"])
        assert await open_chain(jd) == []
        assert jd._runner is not None
        await jd._runner.periodic.reconcile()
        [again] = await open_chain(jd)
        assert again["id"] != row["id"]


async def test_an_instance_without_workers_does_not_reconcile(make_jobsd: MakeJobsD) -> None:
    producer = make_jobsd(workers=0)
    register_report(producer, periodic=every(HOUR))
    async with producer:
        assert await open_chain(producer) == []
    worker = make_jobsd(workers=1)
    register_report(worker, periodic=every(HOUR))
    async with worker:
        [row] = await open_chain(worker)
        web = make_jobsd(workers=0)
        register_report(web)  # registered for submissions only: not a say in periodic jobs
        async with web:
            assert await open_chain(web) == [row]


async def test_an_instance_of_a_release_without_periodic_jobs_is_not_asked(make_jobsd: MakeJobsD) -> None:
    jd = make_jobsd(workers=1)
    register_report(jd, periodic=every(HOUR))
    async with jd:
        # A newer live instance whose row has no periodic marker (a release before periodic
        # jobs) registers the job too; this instance still reconciles it.
        instances = jd.metadata.tables[f"{jd_prefix(jd)}instances"]
        async with jd.engine.begin() as conn:
            own = (
                (await conn.execute(instances.select().where(instances.c.id == jd.instance_id)))
                .mappings()
                .one()
            )
            older_release = {k: v for k, v in own.items() if k != "id"}
            older_release.update(job_signatures='{"report":"abc"}', last_seen_at=now())
            result = await conn.execute(instances.insert().values(**older_release))
            assert result.inserted_primary_key is not None
            assert result.inserted_primary_key[0] > jd.instance_id
        [row] = await open_chain(jd)
        assert await jd.cancel_run(row["id"])
        assert jd._runner is not None
        await jd._runner.periodic.reconcile()
        assert len(await open_chain(jd)) == 1


class _Opaque:
    pass


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"periodic": "every:60"}, TypeError, "built-in schedule"),
        ({"periodic": lambda now: now}, TypeError, "built-in schedule"),
        ({"periodic": 60}, TypeError, "built-in schedule"),
        ({"periodic_args": Args("x")}, ValueError, "periodic_args needs periodic"),
        ({"periodic": every(60), "periodic_args": ["x"]}, TypeError, "periodic_args"),
        ({"periodic": every(60), "periodic_args": Args("x", "y")}, JobArgsMismatchError, "do not match"),
        ({"periodic": every(60), "periodic_args": Args(nope=1)}, JobArgsMismatchError, "do not match"),
        ({"periodic": every(60), "periodic_args": Args(_Opaque())}, JobArgsSerializationError, "argument 0"),
    ],
)
async def test_bad_periodic_values_raise_and_write_nothing(
    make_jobsd: MakeJobsD, options: dict[str, Any], error: type[Exception], match: str
) -> None:
    jd = make_jobsd()

    async def report(tag: str = "daily") -> str:
        return tag

    with pytest.raises(error, match=match):
        jd.register_job("report", report, **options)
    jd.register_job("report", report)  # nothing was registered
    async with jd:
        assert await fetch_runs(jd) == []


async def test_a_periodic_job_with_required_parameters_needs_arguments(make_jobsd: MakeJobsD) -> None:
    jd = make_jobsd()

    async def report(region: str) -> str:
        return region

    with pytest.raises(JobArgsMismatchError, match=r"periodic job 'report' takes .*region.*periodic_args"):
        jd.register_job("report", report, periodic=every(60))
    with pytest.raises(JobArgsMismatchError, match="periodic_args"):
        jd.job("report", periodic=every(60))(report)
    jd.register_job("report", report, periodic=every(HOUR), periodic_args=Args("eu"))
    async with jd:
        [row] = await open_chain(jd)
        assert row["job_args"] == '["eu"]'


def test_a_periodic_job_name_leaves_room_for_the_prefix(make_jobsd: MakeJobsD) -> None:
    jd = make_jobsd()
    with pytest.raises(ValueError, match="at most 246 characters"):
        jd.register_job("r" * 250, lambda: None, periodic=every(60))
    jd.register_job("r" * 246, lambda: None, periodic=every(60))


async def test_periodic_unique_names_are_reserved(make_jobsd: MakeJobsD) -> None:
    jd = make_jobsd()
    register_report(jd)
    with pytest.raises(ValueError, match="reserved for periodic jobs"):
        jd.create_run("report").unique("periodic:report")
