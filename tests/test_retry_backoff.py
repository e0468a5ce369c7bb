"""Retry backoff: exponential with jitter and a cap, at instance, job and run level, stored in the row."""

from __future__ import annotations

from datetime import timedelta
from itertools import pairwise

import pytest
from conftest import MakeJobsD, fetch_runs

from jobsd_async import Backoff, JobsD, RunStatus


def test_delays_grow_exponentially_with_jitter_and_a_cap() -> None:
    backoff = Backoff(1, cap=5)
    assert [backoff.delay(n, rand=lambda: 1.0) for n in (1, 2, 3, 4)] == [1, 2, 4, 5]
    assert [backoff.delay(n, rand=lambda: 0.0) for n in (1, 2, 3, 4)] == [0.5, 1, 2, 2.5]
    assert Backoff(timedelta(seconds=2)).base == 2.0


@pytest.mark.parametrize(("base", "cap"), [(0, 10), (5, 1), (-1, 10)])
def test_invalid_backoffs(base: float, cap: float) -> None:
    with pytest.raises(ValueError, match="retry_backoff"):
        Backoff(base, cap)


def test_instance_option_is_validated() -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    with pytest.raises(ValueError, match="retry_backoff"):
        JobsD(create_async_engine("sqlite+aiosqlite:///:memory:"), retry_backoff=-1)


async def test_retries_wait_for_the_backoff(make_jobsd: MakeJobsD) -> None:
    jd = make_jobsd()

    @jd.job(name="flaky", retries_error_limit=2)
    async def flaky() -> None:
        raise RuntimeError("try again")

    async with jd:
        run_id = await flaky.create_run().retry_backoff(Backoff(0.3, cap=0.5)).run()
        state = await jd.wait_for_run(run_id, timeout=10)
        rows = await fetch_runs(jd)

    assert state.status is RunStatus.FAILED
    assert [(r["retry_backoff"], r["retry_backoff_cap"]) for r in rows] == [(0.3, 0.5)] * 3
    waits = [
        (later["run_at"] - earlier["run_completed_at"]).total_seconds() for earlier, later in pairwise(rows)
    ]
    slack = 0.05  # run_at comes from the instance's estimate of the database clock
    assert 0.15 - slack <= waits[0] <= 0.3 + slack
    assert 0.25 - slack <= waits[1] <= 0.5 + slack
    started = [r["run_started_at"] for r in rows]
    assert started[1] - started[0] >= timedelta(seconds=0.1)


async def test_precedence_instance_job_run(make_jobsd: MakeJobsD) -> None:
    jd = make_jobsd(retry_backoff=60, workers=0)
    inherits = jd.register_job("inherits", lambda: None)
    immediate = jd.register_job("immediate", lambda: None, retry_backoff=None)
    assert inherits.retry_backoff == Backoff(60)
    assert immediate.retry_backoff is None
    async with jd:
        await jd.create_run("inherits").run_after(60)
        await jd.create_run("immediate").run_after(60)
        await jd.create_run("immediate").retry_backoff(2).run_after(60)
        rows = await fetch_runs(jd)
    assert [r["retry_backoff"] for r in rows] == [60.0, None, 2.0]
    assert [r["retry_backoff_cap"] for r in rows] == [3600.0, None, 3600.0]
