"""Shutdown that cannot double-run, hang or leak (hardening; SPEC §3.7).

- a draining instance keeps beating, so a peer never re-runs its live jobs;
- ``shutdown_timeout=None`` waits for running jobs without limit;
- a job that swallows ``CancelledError`` cannot hang ``down()``; its run is handed over;
- ``down()`` twice at once, and ``down()`` during ``up()``;
- a sync job that ignores its timeout keeps its slot until its thread returns.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import textwrap
import threading
from collections import Counter
from pathlib import Path

import pytest
from conftest import MakeJobsD, fetch_runs

from jobsd_async import JobsDStateError, RunInfo, RunStatus


@pytest.mark.cluster
async def test_a_draining_instance_keeps_beating_so_a_peer_never_reruns_its_job(
    make_jobsd: MakeJobsD,
) -> None:
    # Beats 0.5 s apart: three missed (1.5 s) make an instance dead.  (At 0.2 s apart, a
    # loaded two-core CI host once delayed a beat past the 0.6 s that allowed.)
    leaving = make_jobsd(heartbeat_interval=0.5, shutdown_timeout=30)
    peer = make_jobsd(heartbeat_interval=0.5, timeout_check=0.05)
    started = asyncio.Event()
    release = asyncio.Event()
    executed: Counter[str] = Counter()

    @leaving.job(name="long")
    async def long_here() -> str:
        executed["leaving"] += 1
        started.set()
        await release.wait()
        return "owner's result"

    @peer.job(name="long")
    async def long_there() -> str:
        executed["peer"] += 1
        return "peer's result"

    async with peer:
        await leaving.up()
        run_id = await long_here.create_run().run()
        async with asyncio.timeout(10):
            await started.wait()
        going_down = asyncio.create_task(leaving.down())
        # The drain lasts eight of the leaving instance's heartbeat intervals (three missed
        # beats make an instance dead) while the peer checks for the dead every 50 ms.
        await asyncio.sleep(4.0)
        assert not going_down.done()
        release.set()
        await going_down
        state = await peer.wait_for_run(run_id, timeout=10)

    assert state.status is RunStatus.SUCCEEDED
    assert state.result == "owner's result"
    assert executed == {"leaving": 1}
    assert peer.instance.runs_timed_out_res == 0
    assert leaving.instance.shutdown_at is not None


async def test_shutdown_timeout_none_waits_for_running_jobs_without_limit(make_jobsd: MakeJobsD) -> None:
    jd = make_jobsd(shutdown_timeout=None, cancel_grace=0.1)
    started = asyncio.Event()
    release = asyncio.Event()
    saw_cancel: list[bool] = []

    @jd.job(name="long")
    async def long(info: RunInfo) -> str:
        started.set()
        await release.wait()
        saw_cancel.append(info.is_cancelled())
        return "done"

    await jd.up()
    run_id = await long.create_run().run()
    async with asyncio.timeout(10):
        await started.wait()
    going_down = asyncio.create_task(jd.down())
    await asyncio.sleep(1.0)  # ten times FAST's shutdown_timeout: nothing may be killed
    assert not going_down.done()
    release.set()
    await going_down
    state = await jd.get_run_state(run_id)
    assert state.status is RunStatus.SUCCEEDED
    assert state.result == "done"
    assert saw_cancel == [False]


async def test_a_job_swallowing_cancellation_cannot_hang_down_and_is_handed_over(
    make_jobsd: MakeJobsD, caplog: pytest.LogCaptureFixture
) -> None:
    jd = make_jobsd(shutdown_timeout=0.2, cancel_grace=0.1)
    started = asyncio.Event()
    stop_swallowing = asyncio.Event()

    @jd.job(name="stubborn", retries_error_limit=0)
    async def stubborn() -> None:
        started.set()
        while not stop_swallowing.is_set():
            try:
                await asyncio.sleep(0.05)
            except asyncio.CancelledError:
                continue  # refuses to end

    await jd.up()
    run_id = await stubborn.create_run().run()
    async with asyncio.timeout(10):
        await started.wait()
    with caplog.at_level(logging.ERROR, logger="jobsd_async"):
        async with asyncio.timeout(10):
            await jd.down()
    stop_swallowing.set()
    await asyncio.sleep(0.1)  # let the abandoned task end before the test's loop closes
    assert any("abandoning 1 jobs" in r.getMessage() for r in caplog.records)
    rows = await fetch_runs(jd)
    assert rows[0]["run_completed_error"] == "job run killed"
    assert len(rows) == 2 and rows[1]["origin_id"] == run_id, "the run was not handed over"
    assert rows[1]["run_completed_at"] is None and rows[1]["retries_on_error_count"] == 0


async def test_a_second_down_returns_only_once_the_instance_is_down(make_jobsd: MakeJobsD) -> None:
    jd = make_jobsd(shutdown_timeout=5)
    started = asyncio.Event()
    release = asyncio.Event()

    @jd.job(name="long")
    async def long() -> None:
        started.set()
        await release.wait()

    await jd.up()
    await long.create_run().run()
    async with asyncio.timeout(10):
        await started.wait()
    first = asyncio.create_task(jd.down())
    second = asyncio.create_task(jd.down())
    done, _ = await asyncio.wait({second}, timeout=0.5)
    assert not done, "the second down() returned while the first was still draining"
    release.set()
    await asyncio.gather(first, second)
    assert jd.instance.shutdown_at is not None


async def test_down_during_up_stops_what_up_started(make_jobsd: MakeJobsD) -> None:
    jd = make_jobsd()
    ran: list[int] = []
    jd.register_job("mark", lambda: ran.append(1))
    starting = asyncio.create_task(jd.up())
    await asyncio.sleep(0)  # up() is under way
    await jd.down()
    await starting
    assert jd.instance.shutdown_at is not None
    with pytest.raises(JobsDStateError, match="down"):
        await jd.create_run("mark").run()
    leftover = [t for t in asyncio.all_tasks() if t.get_name().startswith("jobsd")]
    assert leftover == [], leftover


async def test_a_sync_job_ignoring_its_timeout_keeps_its_slot_until_its_thread_returns(
    make_jobsd: MakeJobsD,
) -> None:
    jd = make_jobsd(workers=1, cancel_grace=0.1)
    first_started = threading.Event()
    release_first = threading.Event()
    first_returned = threading.Event()
    second_saw_first_returned: list[bool] = []

    @jd.job(name="stubborn", run_timeout=0.3, retries_timeout_limit=0)
    def stubborn() -> None:
        first_started.set()
        release_first.wait(30)  # ignores its timeout and its cancel
        first_returned.set()

    @jd.job(name="next_one", run_timeout=0.5)
    def next_one() -> str:
        second_saw_first_returned.append(first_returned.is_set())
        return "ran"

    async with jd:
        first = await stubborn.create_run().run()
        second = await next_one.create_run().run()
        assert (await jd.wait_for_run(first, timeout=10)).status is RunStatus.TIMED_OUT

        async def second_is_pending() -> bool:
            return (await jd.get_run_state(second)).status is RunStatus.PENDING

        # The first's task was cancelled (timeout + grace), but its thread still runs: the
        # only slot stays taken, so the second must not start (and time out unrun).
        await asyncio.sleep(0.5)
        assert await second_is_pending()
        release_first.set()
        state = await jd.wait_for_run(second, timeout=10)

    assert state.status is RunStatus.SUCCEEDED, state
    assert state.result == "ran"
    assert second_saw_first_returned == [True]


async def test_job_failures_are_logged_with_traceback_and_run_id(
    make_jobsd: MakeJobsD, caplog: pytest.LogCaptureFixture
) -> None:
    jd = make_jobsd()

    @jd.job(name="fails", retries_error_limit=1)
    async def fails() -> None:
        raise ValueError("broken input")

    with caplog.at_level(logging.ERROR, logger="jobsd_async"):
        async with jd:
            run_id = await fails.create_run().run()
            await jd.wait_for_run(run_id, timeout=10)
    failures = [r for r in caplog.records if r.exc_info and "failed" in r.getMessage()]
    assert len(failures) == 2
    for attempt, record in enumerate(failures, start=1):
        assert record.exc_info is not None and isinstance(record.exc_info[1], ValueError)
        assert record.__dict__["run_id"] == run_id
        assert record.__dict__["job"] == "fails"
        assert record.__dict__["attempt"] == attempt
        assert record.__dict__["instance_id"] == jd.instance_id
    rows = await fetch_runs(jd)
    assert [r["id"] for r in rows] == [failures[0].__dict__["row_id"], failures[1].__dict__["row_id"]]


@pytest.mark.cluster
async def test_a_killed_job_is_rerun_by_a_peer_only_after_it_has_ended_here(make_jobsd: MakeJobsD) -> None:
    # The job is killed at shutdown_timeout and takes a while to clean up: its follow-up
    # (which the peer runs) must not exist before the job has really ended here.
    leaving = make_jobsd(shutdown_timeout=0.3, cancel_grace=5)
    peer = make_jobsd(poll_interval=0.05)
    started = asyncio.Event()
    events: list[str] = []

    @leaving.job(name="slow_to_stop", retries_error_limit=0)
    async def slow_to_stop(info: RunInfo) -> None:
        started.set()
        await info.cancel.wait()
        await asyncio.sleep(1.0)  # cleaning up after the signal
        events.append("ended here")

    @peer.job(name="slow_to_stop", retries_error_limit=0)
    async def rerun() -> None:
        events.append("re-run by the peer")

    async with peer:
        await leaving.up()
        run_id = await slow_to_stop.create_run().run()
        async with asyncio.timeout(10):
            await started.wait()
        await leaving.down()
        state = await peer.wait_for_run(run_id, timeout=10)
    assert state.status is RunStatus.SUCCEEDED
    assert events == ["ended here", "re-run by the peer"]


async def test_a_cancelled_down_still_shuts_the_instance_down(make_jobsd: MakeJobsD) -> None:
    jd = make_jobsd(shutdown_timeout=30)
    started = asyncio.Event()

    @jd.job(name="long")
    async def long() -> None:
        started.set()
        await asyncio.sleep(60)

    await jd.up()
    await long.create_run().run()
    async with asyncio.timeout(10):
        await started.wait()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):
            await jd.down()
    assert jd.instance.shutdown_at is not None
    leftover = [t for t in asyncio.all_tasks() if t.get_name().startswith("jobsd")]
    assert leftover == [], leftover
    rows = await fetch_runs(jd)
    assert rows[0]["run_completed_error"] == "job run killed", "not handed over"


def test_a_sync_job_that_never_returns_does_not_keep_the_process_alive(tmp_path: Path) -> None:
    script = tmp_path / "app.py"
    script.write_text(
        textwrap.dedent(
            """
            import asyncio, sys, time
            from sqlalchemy.ext.asyncio import create_async_engine
            from jobsd_async import JobsD

            async def main(url):
                engine = create_async_engine(url)
                jd = JobsD(engine, shutdown_timeout=0.1, cancel_grace=0.1)
                started = asyncio.Event()
                loop = asyncio.get_running_loop()

                @jd.job(name="stubborn")
                def stubborn():
                    loop.call_soon_threadsafe(started.set)
                    time.sleep(300)  # ignores RunInfo.cancel

                async with jd:
                    await jd.create_run("stubborn").run()
                    await started.wait()
                await engine.dispose()
                print("DOWN", flush=True)

            asyncio.run(main(sys.argv[1]))
            """
        )
    )
    pythonpath = os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, str(script), f"sqlite+aiosqlite:///{tmp_path / 'app.db'}"],
        env={**os.environ, "PYTHONPATH": pythonpath},
        capture_output=True,
        text=True,
        timeout=60,  # the job sleeps 300 s: the process must not wait for its thread
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "DOWN" in proc.stdout
