"""Input limits: every duration, count, due time, name and run id is checked at input.

An accepted value must be one every database can store and compute with (a claim adds
``run_timeout`` to a timestamp), so the bounds are checked before anything is written:
a ``ValueError``/``TypeError`` naming the value, never an ``OverflowError`` or ``StoreError``,
and nothing in the tables.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from conftest import MakeJobsD, fetch_runs
from sqlalchemy.ext.asyncio import AsyncEngine

from jobsd_async import Backoff, JobsD, RunNotFoundError, RunStatus, every

HUNDRED_YEARS = 100 * 365.25 * 86400


@pytest.fixture
async def jd(make_jobsd: MakeJobsD) -> Any:
    jd = make_jobsd()
    jd.register_job("noop", lambda: None)
    jd.register_job("echo", lambda value: value)
    async with jd:
        yield jd


@pytest.mark.parametrize(
    "submit",
    [
        lambda jd: jd.create_run("noop").run_timeout(timedelta.max).run(),
        lambda jd: jd.create_run("noop").run_timeout(1e13).run(),
        lambda jd: jd.create_run("noop").run_after(1e12),
        lambda jd: jd.create_run("noop").run_after(timedelta(days=365 * 101)),
        lambda jd: jd.create_run("noop").retry_backoff(Backoff(1e12, 1e12)).run(),
        lambda jd: jd.create_run("noop").retry_backoff(1e12).run(),
        lambda jd: jd.create_run("noop").retries_error_limit(2**40).run(),
        lambda jd: jd.create_run("noop").retries_timeout_limit(2**31).run(),
        lambda jd: jd.create_run("noop").schedule(every(60)).limit(2**40).run(),
        lambda jd: jd.create_run("noop").run_at(datetime(1, 1, 1, tzinfo=UTC)),
        lambda jd: jd.create_run("noop").run_at(datetime(9999, 12, 31, tzinfo=UTC)),
        lambda jd: jd.create_run("noop").run_at(datetime.now(UTC) + timedelta(days=365 * 101)),
        lambda jd: jd.prune(timedelta.max),
        lambda jd: jd.prune(1e300),
    ],
)
async def test_out_of_range_values_raise_value_error_and_write_nothing(
    jd: JobsD, submit: Callable[[JobsD], Awaitable[Any]]
) -> None:
    with pytest.raises(ValueError, match=r"at most|between"):
        await submit(jd)
    assert await fetch_runs(jd) == []


async def test_the_largest_accepted_values_are_stored_and_run(jd: JobsD) -> None:
    run_id = await (
        jd.create_run("noop")
        .run_timeout(HUNDRED_YEARS)
        .retries_error_limit(2**31 - 1)
        .retry_backoff(Backoff(HUNDRED_YEARS, HUNDRED_YEARS))
        .run()
    )
    state = await jd.wait_for_run(run_id, timeout=10)
    assert state.status is RunStatus.SUCCEEDED
    later = await jd.create_run("noop").run_at(datetime.now(UTC) + timedelta(days=365 * 99))
    assert (await jd.get_run_state(later)).status is RunStatus.PENDING


@pytest.mark.parametrize(
    "make",
    [
        lambda: every(1e300),
        lambda: every(timedelta.max),
        lambda: Backoff(1e12),
        lambda: Backoff(1, 1e12),
    ],
)
def test_schedules_and_backoffs_have_bounds(make: Callable[[], object]) -> None:
    with pytest.raises(ValueError, match="at most"):
        make()


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("workers", 10**9),
        ("poll_limit", 10**9),
        ("poll_interval", 1e300),
        ("run_timeout", timedelta.max),
        ("retries_error_limit", 2**40),
        ("heartbeat_interval", 1e13),
        ("shutdown_timeout", 1e13),
        ("retention", timedelta.max),
    ],
)
def test_instance_options_have_bounds(engine: AsyncEngine, option: str, value: object) -> None:
    with pytest.raises(ValueError, match=option):
        JobsD(engine, **{option: value})  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["nul\x00byte", "lone\ud800surrogate", "\udfff"])
async def test_names_with_nul_or_lone_surrogates_are_refused(make_jobsd: MakeJobsD, name: str) -> None:
    jd = make_jobsd()
    with pytest.raises(ValueError, match="NUL"):
        jd.register_job(name, lambda: None)
    with pytest.raises(ValueError, match="NUL"):
        jd.register_schedule(name, lambda now: now)
    jd.register_job("noop", lambda: None)
    async with jd:
        with pytest.raises(ValueError, match="NUL"):
            await jd.create_run("noop").unique(name).run()
        assert await fetch_runs(jd) == []


@pytest.mark.parametrize("bad", [None, "1", 1.0, True, b"1", [1]])
async def test_run_ids_must_be_ints(jd: JobsD, bad: Any) -> None:
    run_id = await jd.create_run("noop").run_after(3600)
    for call in (jd.get_run_state, jd.wait_for_run, jd.cancel_run):
        with pytest.raises(TypeError, match="run_id must be an int"):
            await call(bad)
    # Nothing was touched: the newest run is still pending.
    assert (await jd.get_run_state(run_id)).status is RunStatus.PENDING


@pytest.mark.parametrize("missing", [0, -1, 2**63, 2**64, -(2**70), 987654321])
async def test_ids_no_run_has_raise_run_not_found(jd: JobsD, missing: int) -> None:
    await jd.create_run("noop").run_after(3600)
    with pytest.raises(RunNotFoundError):
        await jd.get_run_state(missing)
    with pytest.raises(RunNotFoundError):
        await jd.wait_for_run(missing, timeout=1)
    with pytest.raises(RunNotFoundError):
        await jd.cancel_run(missing)


async def test_arguments_nested_too_deep_are_a_serialization_error(jd: JobsD) -> None:
    from jobsd_async import JobArgsSerializationError

    deep: Any = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(JobArgsSerializationError, match="argument 0"):
        await jd.create_run("echo", deep).run()
    with pytest.raises(JobArgsSerializationError, match="argument 0"):
        await jd.create_runs("echo", [(deep,)])
    assert await fetch_runs(jd) == []
