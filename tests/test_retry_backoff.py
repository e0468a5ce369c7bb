"""Retry backoff: exponential with jitter and a cap, at instance, job and run level, stored in the row."""

from __future__ import annotations

import time
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
    failed_at: list[float] = []
    started_at: list[float] = []

    @jd.job(name="flaky", retries_error_limit=2)
    async def flaky() -> None:
        started_at.append(time.monotonic())
        failed_at.append(time.monotonic())
        raise RuntimeError("try again")

    async with jd:
        run_id = await flaky.create_run().retry_backoff(Backoff(0.3, cap=0.5)).run()
        state = await jd.wait_for_run(run_id, timeout=10)
        rows = await fetch_runs(jd)

    assert state.status is RunStatus.FAILED
    assert [(r["retry_backoff"], r["retry_backoff_cap"]) for r in rows] == [(0.3, 0.5)] * 3
    # The backoff counts from the failure, as the job saw it: jittered to [base/2, base], doubling.
    slack = 0.02  # the follow-up's due time comes from the instance's estimate of the database clock
    waits = [start - failure for failure, start in zip(failed_at, started_at[1:], strict=False)]
    assert waits[0] >= 0.15 - slack
    assert waits[1] >= 0.25 - slack
    # In the rows, the completion is stamped when its batch is written, which can only be later
    # than the failure: a due time never lies further than the backoff's upper end after it.
    due_after_completion = [
        (later["run_at"] - earlier["run_completed_at"]).total_seconds() for earlier, later in pairwise(rows)
    ]
    assert due_after_completion[0] <= 0.3 + 0.05
    assert due_after_completion[1] <= 0.5 + 0.05


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
