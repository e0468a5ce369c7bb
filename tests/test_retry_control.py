"""Retry control: which exceptions are retried (per job, per run, or by a predicate), and
``raise Retry(after=...)``."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from conftest import MakeJobsD, eventually, fetch_runs, jd_prefix

from jobsd_async import JobsD, Retry, RunStatus, every


class InvalidAddress(ValueError):
    pass


class Transient(ConnectionError):
    pass


def raising(*errors: BaseException) -> Callable[[], Any]:
    """A job raising ``errors`` one per attempt (the last one again and again)."""
    attempts: list[BaseException] = list(errors)

    async def job() -> None:
        raise attempts.pop(0) if len(attempts) > 1 else attempts[0]

    return job


async def attempts_of(jd: JobsD, run_id: int) -> int:
    state = await jd.wait_for_run(run_id, timeout=15)
    return state.run_total_count


async def test_no_retry_on_fails_at_once_and_other_errors_are_retried(make_jobsd: MakeJobsD) -> None:
    jd = make_jobsd()
    invalid = jd.register_job(
        "invalid", raising(InvalidAddress("x@")), retries_error_limit=3, no_retry_on=ValueError
    )
    flaky = jd.register_job("flaky", raising(KeyError("k")), retries_error_limit=2, no_retry_on=ValueError)
    async with jd:
        invalid_run, flaky_run = await invalid.create_run().run(), await flaky.create_run().run()
        assert await attempts_of(jd, invalid_run) == 1, "a subclass of ValueError was retried"
        assert await attempts_of(jd, flaky_run) == 3
        state = await jd.get_run_state(invalid_run)
    assert state.status is RunStatus.FAILED
    assert state.run_completed_error == "InvalidAddress: x@"
    assert state.retries_on_error_count == 0


async def test_retry_on_retries_only_the_named_exceptions(make_jobsd: MakeJobsD) -> None:
    jd = make_jobsd()
    options: dict[str, Any] = {"retries_error_limit": 2, "retry_on": (ConnectionError, TimeoutError)}
    transient = jd.register_job("transient", raising(Transient(), Transient(), Transient()), **options)
    other = jd.register_job("other", raising(RuntimeError("no")), **options)
    async with jd:
        transient_run, other_run = await transient.create_run().run(), await other.create_run().run()
        assert await attempts_of(jd, transient_run) == 3
        assert await attempts_of(jd, other_run) == 1


async def test_a_run_overrides_its_jobs_policy(make_jobsd: MakeJobsD) -> None:
    jd = make_jobsd()
    job = jd.register_job("job", raising(InvalidAddress("x")), retries_error_limit=1, no_retry_on=ValueError)
    async with jd:
        assert await attempts_of(jd, await job.create_run().no_retry_on().run()) == 2
        assert await attempts_of(jd, await job.create_run().no_retry_on(KeyError).run()) == 2
        assert await attempts_of(jd, await job.create_run().retry_on(KeyError).no_retry_on().run()) == 1
        assert await attempts_of(jd, await job.create_run().run()) == 1


async def test_the_policy_travels_in_the_row_as_exception_names(make_jobsd: MakeJobsD) -> None:
    jd = make_jobsd()
    job = jd.register_job(
        "job", raising(KeyError()), retry_on=Transient, no_retry_on=(InvalidAddress, KeyError)
    )
    async with jd:
        await job.create_run().run_after(3600)
        await job.create_run().retry_on().no_retry_on().run_after(3600)
        first, second = await fetch_runs(jd)
    assert json.loads(first["retry_policy"]) == {
        "on": ["test_retry_control.Transient"],
        "not_on": ["test_retry_control.InvalidAddress", "builtins.KeyError"],
    }
    assert second["retry_policy"] is None


async def test_a_policy_written_by_hand_that_is_not_ours_retries_as_usual(make_jobsd: MakeJobsD) -> None:
    jd = make_jobsd()
    job = jd.register_job("job", raising(KeyError()), retries_error_limit=2, no_retry_on=KeyError)
    async with jd:
        run_id = await job.create_run().run_after(3600)
        runs = jd.metadata.tables[f"{jd_prefix(jd)}runs"]
        async with jd.engine.begin() as conn:
            await conn.execute(
                runs.update().values(retry_policy='{"not_on": 7}', run_at=datetime(2000, 1, 1, tzinfo=UTC))
            )
        assert await attempts_of(jd, run_id) == 3


async def test_retry_if_decides_where_the_attempt_runs(make_jobsd: MakeJobsD) -> None:
    jd = make_jobsd()
    asked: list[BaseException] = []

    def transient(error: BaseException) -> bool:
        asked.append(error)
        return "try again" in str(error)

    job = jd.register_job(
        "job",
        raising(RuntimeError("try again"), RuntimeError("try again"), RuntimeError("fatal")),
        retries_error_limit=5,
        retry_if=transient,
    )
    async with jd:
        assert await attempts_of(jd, await job.create_run().run()) == 3
    assert [str(e) for e in asked] == ["try again", "try again", "fatal"]


async def test_a_retry_if_that_raises_retries_and_logs(
    make_jobsd: MakeJobsD, caplog: pytest.LogCaptureFixture
) -> None:
    jd = make_jobsd()

    def broken(error: BaseException) -> bool:
        raise LookupError("predicate bug")

    job = jd.register_job("job", raising(RuntimeError("x")), retries_error_limit=1, retry_if=broken)
    async with jd:
        assert await attempts_of(jd, await job.create_run().run()) == 2
    assert any(
        "retry_if of job 'job' raised LookupError: predicate bug" in r.getMessage() for r in caplog.records
    )


async def test_raise_retry_delays_the_retry_and_counts_it(make_jobsd: MakeJobsD) -> None:
    jd = make_jobsd()
    job = jd.register_job(
        "job", raising(Retry("rate limited", after=timedelta(minutes=30))), retries_error_limit=3
    )
    async with jd:
        await job.create_run().run()
        await eventually(lambda: _rows_at_least(jd, 2), what="the retry row")
        failed, retry = await fetch_runs(jd)
    assert failed["run_completed_error"] == "Retry: rate limited"
    assert retry["retries_on_error_count"] == 1
    assert retry["run_started_at"] is None
    delay = (retry["run_at"] - failed["run_completed_at"]).total_seconds()
    assert 1790 <= delay <= 1810


async def test_retry_is_retried_whatever_the_policy_and_fails_once_retries_are_used(
    make_jobsd: MakeJobsD,
) -> None:
    jd = make_jobsd()
    job = jd.register_job(
        "job", raising(Retry("again", after=0.01)), retries_error_limit=2, no_retry_on=Exception
    )
    async with jd:
        run_id = await job.create_run().run()
        state = await jd.wait_for_run(run_id, timeout=15)
    assert state.run_total_count == 3
    assert state.status is RunStatus.FAILED
    assert state.run_completed_error == "Retry: again"


async def test_a_scheduled_chain_goes_on_after_a_failure_that_is_not_retried(make_jobsd: MakeJobsD) -> None:
    jd = make_jobsd()
    job = jd.register_job("job", raising(InvalidAddress("x")), retries_error_limit=3, no_retry_on=ValueError)
    async with jd:
        await job.create_run().schedule(every(0.05)).limit(2).run()
        await eventually(lambda: _rows_at_least(jd, 2), what="the next tick's row")
        first, follow_up = (await fetch_runs(jd))[:2]
    assert first["run_completed_error"] == "InvalidAddress: x"
    assert follow_up["retries_on_error_count"] == 0, "the failure was retried"
    assert follow_up["origin_id"] == first["id"]


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"retry_on": "ValueError"}, TypeError, "retry_on takes exception classes"),
        ({"no_retry_on": [ValueError, 3]}, TypeError, "no_retry_on takes exception classes"),
        ({"retry_on": ()}, ValueError, "at least one"),
        ({"retry_if": 3}, TypeError, "retry_if of job 'job' must be callable"),
        ({"retry_if": bool, "retry_on": ValueError}, ValueError, "not both"),
    ],
)
def test_bad_retry_options_are_refused_at_registration(
    make_jobsd: MakeJobsD, options: dict[str, Any], error: type[Exception], match: str
) -> None:
    jd = make_jobsd()
    with pytest.raises(error, match=match):
        jd.register_job("job", raising(KeyError()), **options)
    assert "job" not in jd._jobs


def test_bad_retry_arguments() -> None:
    with pytest.raises(ValueError, match="after must not be negative"):
        Retry(after=-1)
    with pytest.raises(TypeError, match="after must be a number of seconds"):
        Retry(after="soon")  # type: ignore[arg-type]


async def _rows_at_least(jd: JobsD, count: int) -> bool:
    return len(await fetch_runs(jd)) >= count
