"""jobsd_async.testing: drain, the enqueued assertions, run_job and the pytest plugin."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from typing import Any

import pytest
from conftest import MakeJobsD

import jobsd_async.testing as testing_module
from jobsd_async import JobArgsMismatchError, JobsD, JobsDStateError, RunInfo, RunStatus, every
from jobsd_async.testing import assert_enqueued, drain, enqueued, refute_enqueued, run_job

pytest_plugins = ["pytester"]

CUSTOMER = uuid.UUID("00000000-0000-0000-0000-00000000002a")


def shop(jd: JobsD, gate: asyncio.Event | None = None) -> dict[str, Any]:
    """Jobs that make more work: an order sends a receipt; the receipt fails once.

    With a ``gate``, orders wait for it before they do anything.
    """
    calls: list[str] = []

    @jd.job("receipt", retries_error_limit=2)
    async def receipt(info: RunInfo, order: int) -> str:
        calls.append(f"receipt {order} attempt {info.run_total_count}")
        if info.run_total_count == 1:
            raise ConnectionError("mail server busy")
        return f"receipt {order}"

    @jd.job("order")
    async def order(number: int, customer: uuid.UUID) -> int:
        if gate is not None:
            await gate.wait()
        calls.append(f"order {number}")
        await receipt.create_run(number).run()
        return number

    @jd.job("report")
    async def report() -> str:
        calls.append("report")
        return "report"

    return {"calls": calls, "order": order, "receipt": receipt, "report": report}


async def test_drain_runs_what_is_due_and_what_it_makes_due(
    make_jobsd: MakeJobsD, monkeypatch: pytest.MonkeyPatch
) -> None:
    jd = make_jobsd(poll_interval=3600)  # no poll will come: drain enqueues what it waits for
    # The orders wait until drain has looked at what is due or running: else they (and the
    # receipts they make) could all have finished before it is called, and it would rightly
    # return no chain of its own.
    gate = asyncio.Event()
    look = testing_module._due_or_running

    async def looked(*args: Any, **kwargs: Any) -> Any:
        rows = await look(*args, **kwargs)
        gate.set()
        return rows

    monkeypatch.setattr(testing_module, "_due_or_running", looked)
    jobs = shop(jd, gate)
    async with jd:
        first = await jobs["order"].create_run(1, CUSTOMER).run()
        second = await jobs["order"].create_run(2, CUSTOMER).run()
        later = await jobs["report"].create_run().run_after(3600)
        states = await drain(jd)
        expected = ["order 1", "order 2", "receipt 1 attempt 1", "receipt 1 attempt 2"]
        expected += ["receipt 2 attempt 1", "receipt 2 attempt 2"]
        assert sorted(jobs["calls"]) == expected
        # Every chain it ran (those already finished when it was called are not its own).
        assert states and all(s.status is RunStatus.SUCCEEDED for s in states)
        receipts = await enqueued(jd, "receipt")
        assert receipts == []
        assert [(await jd.get_run_state(r)).result for r in (first, second)] == [1, 2]
        assert (await jd.get_run_state(later)).status is RunStatus.PENDING
        assert await drain(jd) == []


async def test_drain_with_scheduled_runs_future_runs_and_a_recurring_chain_once(
    make_jobsd: MakeJobsD,
) -> None:
    jd = make_jobsd(poll_interval=3600)
    jobs = shop(jd)
    async with jd:
        later = await jobs["report"].create_run().run_after(3600)
        # Due later too: due now, it could run (and be followed by its next day) before
        # drain looks, which would then pull that next day forward.
        daily = await jobs["report"].create_run().schedule(every(timedelta(days=1))).run_after(3600)
        states = await drain(jd, with_scheduled=True)
        by_run = {s.run_id: s for s in states}
        assert by_run[later].status is RunStatus.SUCCEEDED
        assert by_run[daily].run_success_count == 1
        assert by_run[daily].status is RunStatus.PENDING  # its next day is not pulled forward again
        assert jobs["calls"] == ["report", "report"]


async def test_drain_reports_a_run_that_finished_before_it_looked(make_jobsd: MakeJobsD) -> None:
    jd = make_jobsd()
    done = asyncio.Event()

    @jd.job("quick")
    async def quick() -> str:
        done.set()
        return "quick"

    async with jd:
        run_id = await quick.create_run().run()
        await done.wait()
        await jd.wait_for_run(run_id, timeout=10)  # finished before drain is called
        [state] = await drain(jd)
        assert (state.run_id, state.result) == (run_id, "quick")
        assert await drain(jd) == []  # reported once: by the first drain after it ran


async def test_drain_times_out_on_work_that_never_ends(make_jobsd: MakeJobsD) -> None:
    jd = make_jobsd()
    release = asyncio.Event()

    @jd.job("stuck")
    async def stuck() -> None:
        await release.wait()

    async with jd:
        await stuck.create_run().run()
        with pytest.raises(TimeoutError):
            await drain(jd, timeout=0.3)
        release.set()
        assert [s.status for s in await drain(jd)] == [RunStatus.SUCCEEDED]


async def test_enqueued_and_its_assertions(make_jobsd: MakeJobsD) -> None:
    jd = make_jobsd(workers=0)  # a producer: everything stays pending
    jobs = shop(jd)
    async with jd:
        run_id = await jobs["order"].create_run(7, customer=CUSTOMER).unique("order-7").run_after(60)
        await jobs["report"].create_run().run()
        pending = await enqueued(jd, jobs["order"])
        assert [(p.run_id, p.args, p.kwargs, p.name) for p in pending] == [
            (run_id, (7,), {"customer": CUSTOMER}, "order-7")
        ]
        assert type(pending[0].kwargs["customer"]) is uuid.UUID  # decoded as the job declares
        assert len(await enqueued(jd)) == 2

        found = await assert_enqueued(
            jd,
            jobs["order"],
            args=(7,),
            kwargs={"customer": CUSTOMER},
            unique="order-7",
            run_at=pending[0].run_at + timedelta(seconds=0.5),
        )
        assert found.run_id == run_id
        await assert_enqueued(jd, "report")
        await refute_enqueued(jd, jobs["order"], args=(8,))
        await refute_enqueued(jd, "receipt")

        with pytest.raises(AssertionError, match=r"no pending run of 'order' matches args=\(8,\)") as info:
            await assert_enqueued(jd, jobs["order"], args=(8,))
        assert "Enqueued run" in str(info.value) and "order(7, customer=UUID(" in str(info.value)
        with pytest.raises(AssertionError, match="no pending run of 'order'"):
            await assert_enqueued(jd, jobs["order"], run_at=pending[0].run_at + timedelta(minutes=5))
        with pytest.raises(AssertionError, match="expected no pending run of 'report'"):
            await refute_enqueued(jd, jobs["report"])


async def test_run_job_runs_one_attempt_with_a_real_run_info(make_jobsd: MakeJobsD) -> None:
    jd = make_jobsd(poll_interval=3600)
    seen: list[RunInfo] = []

    @jd.job("import", retries_error_limit=5)
    async def import_rows(info: RunInfo, rows: int) -> int:
        seen.append(info)
        await info.set_progress({"done": rows})
        if rows < 0:
            raise ValueError("negative")
        return rows * 2

    async with jd:
        state = await run_job(jd, import_rows, 21)
        assert (state.status, state.result, state.progress) == (RunStatus.SUCCEEDED, 42, {"done": 21})
        assert seen[0].run_id == state.run_id and seen[0].run_started_by == jd.instance_id
        assert not seen[0].is_cancelled()

        failed = await run_job(jd, import_rows, -1)
        assert failed.status is RunStatus.FAILED
        assert failed.run_total_count == 1, "run_job runs one attempt, without retries"
        assert failed.run_completed_error == "ValueError: negative"

        with pytest.raises(JobArgsMismatchError):
            await run_job(jd, import_rows, "many")  # type: ignore[arg-type]


async def test_the_helpers_need_a_running_instance_with_workers(make_jobsd: MakeJobsD) -> None:
    jd = make_jobsd()
    jobs = shop(jd)
    with pytest.raises(JobsDStateError, match="needs a started JobsD"):
        await drain(jd)
    with pytest.raises(JobsDStateError, match="needs a started JobsD"):
        await enqueued(jd)
    producer = make_jobsd(workers=0)
    report = producer.register_job("report", jobs["report"].func)
    async with producer:
        with pytest.raises(JobsDStateError, match="workers=0"):
            await drain(producer)
        with pytest.raises(JobsDStateError, match="workers=0"):
            await run_job(producer, report)


PLUGIN_TEST = """
import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from jobsd_async import JobsD
from jobsd_async.testing import drain

pytest_plugins = ["jobsd_async.testing.plugin"]

URLS = []


@pytest.mark.parametrize("value", [1, 2])
async def test_each_test_gets_a_database_of_its_own(jobsd_engine, jobsd_database_url, value):
    URLS.append(jobsd_database_url)
    jd = JobsD(jobsd_engine, table_prefix="app_")
    double = jd.register_job("double", lambda x: 2 * x)
    async with jd:
        await double.create_run(value).run()
        [state] = await drain(jd)
    assert state.result == 2 * value
    assert len(set(URLS)) == len(URLS)


def test_a_web_app_builds_its_engine_from_the_url(jobsd_database_url, jobsd_table_prefix):
    import asyncio

    async def lifespan():
        engine = create_async_engine(jobsd_database_url)
        jd = JobsD(engine, table_prefix=jobsd_table_prefix)
        jd.register_job("noop", lambda: "ok")
        async with jd:
            [state] = await drain(jd) if await jd.create_run("noop").run() else []
        await engine.dispose()
        return state.result

    assert asyncio.run(lifespan()) == "ok"
"""


def test_the_pytest_plugin_isolates_every_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_app=PLUGIN_TEST)
    pytester.makeini("[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n")
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)
