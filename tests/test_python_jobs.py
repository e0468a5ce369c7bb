"""Python-specific job behaviour: sync jobs in threads, kwargs, results, RunInfo detection."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import pytest
from conftest import MakeJobsD

from jobsd_async import RunInfo, RunStatus
from jobsd_async._jobs import JobFunc
from jobsd_async._text import MAX_RESULT_LENGTH


def takes_info_string_annotation(info: RunInfo, x: int) -> None:
    """This module uses postponed annotations, so ``RunInfo`` here is the string "RunInfo"."""


def takes_info_quoted(info: "jobsd_async.RunInfo", x: int) -> None:  # type: ignore[name-defined]  # noqa: F821, UP037
    """An unresolvable dotted string annotation still counts."""


def takes_no_info(info: str, x: int) -> None:
    """A first parameter of another type is a user argument."""


def takes_info_keyword_only(*, info: RunInfo) -> None:
    """RunInfo is only passed positionally, first."""


@pytest.mark.parametrize(
    ("func", "expected"),
    [
        (takes_info_string_annotation, True),
        (takes_info_quoted, True),
        (takes_no_info, False),
        (takes_info_keyword_only, False),
    ],
)
def test_run_info_detection(func: object, expected: bool) -> None:
    assert JobFunc("j", func).takes_run_info is expected


async def test_sync_jobs_run_in_threads_and_count_against_workers(make_jobsd: MakeJobsD) -> None:
    jd = make_jobsd(workers=2)
    lock = threading.Lock()
    running = 0
    peak = 0
    threads: set[str] = set()

    @jd.job
    def blocking(seconds: float) -> str:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
            threads.add(threading.current_thread().name)
        time.sleep(seconds)
        with lock:
            running -= 1
        return threading.current_thread().name

    async with jd:
        ids = [await blocking.create_run(0.2).run() for _ in range(5)]
        states = [await jd.wait_for_run(i, timeout=10) for i in ids]

    assert all(s.status is RunStatus.SUCCEEDED for s in states)
    assert peak == 2
    assert threading.main_thread().name not in threads
    assert {s.result for s in states} <= threads


async def test_sync_job_sees_cancel_through_is_cancelled(make_jobsd: MakeJobsD) -> None:
    jd = make_jobsd(cancel_grace=5)
    saw_cancel = threading.Event()

    @jd.job(run_timeout=0.2, retries_timeout_limit=0)
    def polite(info: RunInfo) -> None:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if info.is_cancelled():
                saw_cancel.set()
                return
            time.sleep(0.01)

    async with jd:
        run_id = await polite.create_run().run()
        state = await jd.wait_for_run(run_id, timeout=10)
        await asyncio.to_thread(saw_cancel.wait, 5)

    assert saw_cancel.is_set()
    assert state.status is RunStatus.TIMED_OUT
    assert state.run_completed_error == "job run timed out"


async def test_keyword_arguments_and_results(make_jobsd: MakeJobsD) -> None:
    jd = make_jobsd()

    @jd.job
    async def describe(name: str, *, times: int = 1, sep: str = "-") -> dict[str, object]:
        return {"text": sep.join([name] * times), "times": times}

    async with jd:
        run_id = await describe.create_run("ab", times=3, sep="+").run()
        state = await jd.wait_for_run(run_id, timeout=10)

    assert state.result == {"text": "ab+ab+ab", "times": 3}


async def test_an_unserializable_result_fails_the_run_with_a_clear_error(
    make_jobsd: MakeJobsD, caplog: pytest.LogCaptureFixture
) -> None:
    jd = make_jobsd()

    @jd.job("odd_result", retries_error_limit=2)
    async def odd_result() -> object:
        return Opaque()

    with caplog.at_level(logging.ERROR, logger="jobsd_async"):
        async with jd:
            run_id = await odd_result.create_run().run()
            state = await jd.wait_for_run(run_id, timeout=10)

    assert state.status is RunStatus.FAILED
    assert state.result is None
    assert state.run_completed_error == (
        "ResultError: the result of job 'odd_result' is not JSON-serializable: <opaque> "
        "(TypeError: objects of type Opaque cannot be stored as JSON)"
    )
    assert state.run_total_count == 1, "the job ran once: the same value would fail again"
    assert any("its result cannot be stored" in r.getMessage() for r in caplog.records)


async def test_a_result_too_large_to_store_fails_the_run(make_jobsd: MakeJobsD) -> None:
    jd = make_jobsd()

    @jd.job
    async def huge() -> str:
        return "x" * (MAX_RESULT_LENGTH + 1)

    async with jd:
        state = await huge.wait_for_run(await huge.create_run().run(), timeout=10)
    assert state.status is RunStatus.FAILED
    assert state.run_completed_error is not None
    assert "more than the 4194304 stored" in state.run_completed_error


class Opaque:
    def __repr__(self) -> str:
        return "<opaque>"


async def test_calling_a_job_calls_the_function(make_jobsd: MakeJobsD) -> None:
    jd = make_jobsd()

    @jd.job(name="adder")
    async def add(a: int, b: int) -> int:
        return a + b

    assert add.name == "adder"
    assert await add(2, 3) == 5
    assert await add.func(1, 1) == 2


async def test_job_raising_cancelled_error_itself_fails(make_jobsd: MakeJobsD) -> None:
    jd = make_jobsd()

    @jd.job(retries_error_limit=0)
    async def raises_cancelled() -> None:
        raise asyncio.CancelledError

    async with jd:
        run_id = await raises_cancelled.create_run().run()
        state = await jd.wait_for_run(run_id, timeout=10)

    assert state.status is RunStatus.FAILED
    assert state.run_completed_error is not None
    assert "CancelledError" in state.run_completed_error
