"""A rolling deploy must not fail runs: a run whose arguments do not bind to this instance's
version of its job is left for the instances running the version it was made for.

Once no live instance runs another version, such a run cannot run anywhere: it fails with
the binding error (without retries) instead of waiting forever.
"""

from __future__ import annotations

import asyncio
import logging

import pytest
from conftest import MakeJobsD, eventually
from sqlalchemy.exc import OperationalError

from jobsd_async import JobsD, RunInfo, RunStatus, _pool
from jobsd_async._store import _instances

pytestmark = pytest.mark.cluster


def version_1(make_jobsd: MakeJobsD, executed_by: dict[str, int], **options: object) -> JobsD:
    jd = make_jobsd(poll_interval=0.05, **options)

    @jd.job(name="report")
    async def report(info: RunInfo, day: str) -> str:
        executed_by[f"v1 {day}"] = info.run_started_by
        return f"v1 {day}"

    return jd


def version_2(make_jobsd: MakeJobsD, executed_by: dict[str, int], **options: object) -> JobsD:
    jd = make_jobsd(poll_interval=0.05, **options)

    @jd.job(name="report")
    async def report(info: RunInfo, day: str, fmt: str) -> str:  # a new required parameter
        executed_by[f"v2 {day}"] = info.run_started_by
        return f"v2 {day} {fmt}"

    return jd


async def test_runs_of_either_version_run_on_an_instance_of_their_version(
    make_jobsd: MakeJobsD, caplog: pytest.LogCaptureFixture
) -> None:
    executed_by: dict[str, int] = {}
    # The old version's worker is live but busy at first, so the new one claims the old
    # version's runs, and must hand them back; then the old one is free to take them.
    old = version_1(make_jobsd, executed_by, workers=1)
    busy, free = asyncio.Event(), asyncio.Event()

    @old.job(name="hold")
    async def hold() -> None:
        busy.set()
        await free.wait()

    new = version_2(make_jobsd, executed_by)
    old_producer = version_1(make_jobsd, executed_by, workers=0)
    new_producer = version_2(make_jobsd, executed_by, workers=0)
    with caplog.at_level(logging.WARNING, logger="jobsd_async"):
        async with old, new, old_producer, new_producer:
            held = await hold.create_run().run()
            await asyncio.wait_for(busy.wait(), 10)
            old_runs = [await old_producer.create_run("report", f"d{i}").run() for i in range(8)]
            new_runs = [await new_producer.create_run("report", f"d{i}", "pdf").run() for i in range(8)]
            await eventually(lambda: handed_back(caplog), what="the new version handing a run back")
            free.set()
            states = [await old.wait_for_run(run_id, timeout=30) for run_id in old_runs + new_runs]
            await old.wait_for_run(held, timeout=10)

    assert [s.status for s in states] == [RunStatus.SUCCEEDED] * 16
    assert [s.result for s in states[:8]] == [f"v1 d{i}" for i in range(8)]
    assert [s.result for s in states[8:]] == [f"v2 d{i} pdf" for i in range(8)]
    assert {executed_by[f"v1 d{i}"] for i in range(8)} == {old.instance_id}
    assert {executed_by[f"v2 d{i}"] for i in range(8)} == {new.instance_id}
    assert all(s.run_total_count == 1 and s.retries_on_error_count == 0 for s in states)


def handed_back(caplog: pytest.LogCaptureFixture) -> bool:
    return any("another version of job 'report'" in r.getMessage() for r in caplog.records)


async def test_once_the_other_version_is_gone_an_unbindable_run_fails_at_once(make_jobsd: MakeJobsD) -> None:
    executed_by: dict[str, int] = {}
    new = version_2(make_jobsd, executed_by)
    old_producer = version_1(make_jobsd, executed_by, workers=0)  # producers run nothing
    async with new, old_producer:
        run_id = await old_producer.create_run("report", "monday").run()
        state = await new.wait_for_run(run_id, timeout=10)
    assert state.status is RunStatus.FAILED
    assert state.run_completed_error is not None
    assert "arguments do not match job 'report'" in state.run_completed_error
    assert state.run_total_count == 1, "binding cannot succeed later: no retries"
    assert executed_by == {}


async def test_a_failure_to_hand_a_run_back_hands_it_over_instead(
    make_jobsd: MakeJobsD, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Checking for other versions fails once (the database is away): the run must not stay
    # "running" forever; it is handed over and checked again.
    monkeypatch.setattr(_pool, "_HAND_OVER_LATER", 0.1)
    real = _instances.live_versions
    calls: list[int] = []

    async def away_once(*args: object, **kwargs: object) -> set[str]:
        calls.append(1)
        if len(calls) == 1:
            raise OperationalError("SELECT", {}, ConnectionError("the database is away"))
        return await real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(_instances, "live_versions", away_once)
    executed_by: dict[str, int] = {}
    new = version_2(make_jobsd, executed_by)
    old_producer = version_1(make_jobsd, executed_by, workers=0)
    async with new, old_producer:
        run_id = await old_producer.create_run("report", "monday").run()
        state = await new.wait_for_run(run_id, timeout=10)
    assert len(calls) == 2
    assert state.status is RunStatus.FAILED
    assert "arguments do not match job 'report'" in (state.run_completed_error or "")
    assert state.retries_on_error_count == 0 and state.retries_on_timeout_count == 0
