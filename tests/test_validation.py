"""Bad input gets a clear SPEC §2.8 exception and writes nothing (fixes Go B5, B10)."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from conftest import MakeJobsD, fetch_runs

from jobsd_async import (
    InvalidJobFuncError,
    JobArgsMismatchError,
    JobArgsSerializationError,
    JobsD,
    JobsDStateError,
    RunNotFoundError,
    UnknownJobError,
    UnknownScheduleError,
)


async def add(a: int, b: int, *, scale: int = 1) -> int:
    return (a + b) * scale


def every_second(now: datetime) -> datetime:
    return now + timedelta(seconds=1)


@pytest.fixture
async def jd(make_jobsd: MakeJobsD) -> AsyncGenerator[JobsD, None]:
    jd = make_jobsd()
    jd.register_job("add", add)
    jd.register_schedule("every_second", every_second)
    async with jd:
        yield jd


async def test_unknown_job(jd: JobsD) -> None:
    with pytest.raises(UnknownJobError, match="'nope'"):
        await jd.create_run("nope").run()
    assert await fetch_runs(jd) == []


async def test_job_handle_of_another_instance_is_unknown(jd: JobsD, make_jobsd: MakeJobsD) -> None:
    other = make_jobsd()
    foreign = other.register_job("foreign", add)
    with pytest.raises(UnknownJobError):
        await jd.create_run(foreign, 1, 2).run()
    assert await fetch_runs(jd) == []


async def test_unknown_schedule(jd: JobsD) -> None:
    with pytest.raises(UnknownScheduleError, match="'hourly'"):
        await jd.create_run("add", 1, 2).schedule("hourly").run()
    assert await fetch_runs(jd) == []


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [((1,), {}), ((1, 2, 3), {}), ((1, 2), {"bogus": 1}), ((), {"a": 1})],
)
async def test_arguments_must_bind(jd: JobsD, args: tuple[object, ...], kwargs: dict[str, object]) -> None:
    with pytest.raises(JobArgsMismatchError, match="'add'"):
        await jd.create_run("add", *args, **kwargs).run()
    assert await fetch_runs(jd) == []


class Opaque:
    def __repr__(self) -> str:
        return "<opaque>"


async def test_unserializable_argument_is_named(jd: JobsD) -> None:
    with pytest.raises(JobArgsSerializationError, match="argument 1") as info:
        await jd.create_run("add", 1, Opaque()).run()
    assert "<opaque>" in str(info.value)
    with pytest.raises(JobArgsSerializationError, match="keyword argument 'scale'"):
        await jd.create_run("add", 1, 2, scale=object()).run()
    with pytest.raises(JobArgsSerializationError):
        await jd.create_run("add", 1, float("nan")).run()
    assert await fetch_runs(jd) == []


async def test_an_argument_that_does_not_fit_its_annotation_is_named(jd: JobsD) -> None:
    # A set has a JSON form (a list), but not one that converts back into the int declared.
    with pytest.raises(JobArgsMismatchError, match="argument 'b' of job 'add' does not fit its annotation"):
        await jd.create_run("add", 1, {1, 2}).run()
    with pytest.raises(JobArgsMismatchError, match="argument 'a'"):
        await jd.create_run("add", a="one", b=2).run()
    assert await fetch_runs(jd) == []


async def test_run_not_found(jd: JobsD) -> None:
    with pytest.raises(RunNotFoundError, match="12345"):
        await jd.get_run_state(12345)


async def test_limit_needs_a_schedule(jd: JobsD) -> None:
    with pytest.raises(ValueError, match="schedule"):
        jd.create_run("add", 1, 2).limit(3)


@pytest.mark.parametrize("name", ["", "a,b", "x" * 256])
async def test_bad_unique_names(jd: JobsD, name: str) -> None:
    with pytest.raises(ValueError, match="name"):
        jd.create_run("add", 1, 2).unique(name)


async def test_run_at_needs_an_aware_datetime(jd: JobsD) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        await jd.create_run("add", 1, 2).run_at(datetime(2030, 1, 1))
    assert await fetch_runs(jd) == []


async def test_negative_delay(jd: JobsD) -> None:
    with pytest.raises(ValueError, match="delay"):
        await jd.create_run("add", 1, 2).run_after(-1)


async def test_submitting_twice_raises(jd: JobsD) -> None:
    creator = jd.create_run("add", 1, 2)
    run_id = await creator.run()
    with pytest.raises(JobsDStateError, match="already submitted"):
        await creator.run_after(1)
    await jd.wait_for_run(run_id, timeout=10)
    assert len(await fetch_runs(jd)) == 1


def _gen() -> Iterator[int]:
    yield 1


async def _agen() -> AsyncGenerator[int, None]:
    yield 1


@pytest.mark.parametrize("func", [123, "text", _gen, _agen, int])
def test_invalid_job_functions(make_jobsd: MakeJobsD, func: object) -> None:
    jd = make_jobsd()
    with pytest.raises(InvalidJobFuncError):
        jd.register_job("bad", func)  # type: ignore[call-overload]


@pytest.mark.parametrize("name", ["", "a,b", "y" * 256, 5])
def test_bad_job_names(make_jobsd: MakeJobsD, name: object) -> None:
    jd = make_jobsd()
    with pytest.raises((ValueError, TypeError), match="name"):
        jd.register_job(name, add)  # type: ignore[call-overload]


def test_duplicate_registration(make_jobsd: MakeJobsD) -> None:
    jd = make_jobsd()
    jd.register_job("add", add)
    with pytest.raises(ValueError, match="already registered"):
        jd.register_job("add", add)
    jd.register_schedule("s", every_second)
    with pytest.raises(ValueError, match="already registered"):
        jd.register_schedule("s", every_second)


async def test_run_at_with_another_time_zone_is_honoured(jd: JobsD) -> None:
    paris = ZoneInfo("Europe/Paris")
    when = (datetime.now(UTC) + timedelta(seconds=0.5)).astimezone(paris)
    run_id = await jd.create_run("add", 1, 2).run_at(when)
    state = await jd.wait_for_run(run_id, timeout=10)
    assert state.result == 3
    assert state.run_started_at is not None
    assert state.run_started_at >= when - timedelta(milliseconds=5)
