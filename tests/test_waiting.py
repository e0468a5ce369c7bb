"""``wait_for_run`` is woken by news of its own chain, not by every completion."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from datetime import UTC, datetime

import pytest
from conftest import MakeJobsD, jd_prefix, server
from sqlalchemy import update

import jobsd_async._runs_api as runs_api
from jobsd_async import RunState
from jobsd_async._store._rows import RunRow
from jobsd_async._waiters import Waiters

LONGEST_PAUSE = 0.25  # wait_for_run re-checks at 5 ms, doubling up to 250 ms


def wait_begins(monkeypatch: pytest.MonkeyPatch) -> asyncio.Event:
    """An event set once a ``wait_for_run`` caller waits for news (after any read)."""
    waits = asyncio.Event()
    wait = Waiters.wait

    async def waiting_for_news(self: Waiters, run_id: int, timeout: float) -> tuple[bool, RunRow | None]:
        waits.set()
        return await wait(self, run_id, timeout)

    monkeypatch.setattr(Waiters, "wait", waiting_for_news)
    return waits


async def test_a_waiter_is_not_woken_by_other_runs_completions(
    make_jobsd: MakeJobsD, monkeypatch: pytest.MonkeyPatch
) -> None:
    jd = make_jobsd()
    jd.register_job("noop", lambda: None)
    async with jd:
        far = await jd.create_run("noop").run_after(3600)
        reads: Counter[int] = Counter()
        read = jd.get_run_state

        async def counting(run_id: int) -> RunState:
            reads[run_id] += 1
            return await read(run_id)

        monkeypatch.setattr(jd, "get_run_state", counting)
        waiter = asyncio.create_task(jd.wait_for_run(far, timeout=60))
        started = time.monotonic()
        for _ in range(100):  # a hundred unrelated completions, one batch each
            await jd.wait_for_run(await jd.create_run("noop").run(), timeout=10)
        elapsed = time.monotonic() - started
        waiter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiter
    # Only its own growing re-checks: the doubling pauses, then one every LONGEST_PAUSE.
    doubling = 7  # 5, 10, 20, 40, 80, 160 ms, then 250 ms
    assert reads[far] <= 1 + doubling + elapsed / LONGEST_PAUSE + 2, (reads[far], elapsed)


async def test_a_waiter_is_woken_by_a_completion_on_another_instance(
    make_jobsd: MakeJobsD, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL: the instance that wrote a completion announces it (NOTIFY), and a
    worker-less instance waiting for that run wakes without re-checking."""
    if backend != "postgresql":
        pytest.skip("completions are announced by PostgreSQL NOTIFY only")
    # Re-checks an hour apart: only the announcement can end the wait in time.
    monkeypatch.setattr(runs_api, "_WAIT_POLL_FIRST", 3600.0)
    monkeypatch.setattr(runs_api, "_WAIT_POLL_MAX", 3600.0)
    release = asyncio.Event()
    waits = wait_begins(monkeypatch)

    async def gated() -> str:
        await release.wait()
        return "done"

    worker = make_jobsd()
    worker.register_job("gated", gated)
    producer = make_jobsd(workers=0)
    job = producer.register_job("gated", gated)
    async with worker, producer:
        run_id = await job.create_run().run()
        waiting = asyncio.create_task(producer.wait_for_run(run_id, timeout=30))
        await waits.wait()  # it read the run unfinished, and waits
        release.set()
        state = await waiting
    assert state.result == "done"
    assert state.run_started_by == worker.instance_id


@pytest.mark.parametrize("outcome", ["succeeded", "failed"])
async def test_a_chain_ending_here_hands_its_waiter_the_row_as_written(
    make_jobsd: MakeJobsD, monkeypatch: pytest.MonkeyPatch, outcome: str
) -> None:
    """A completion written here that ends an awaited chain returns the row as closed, so
    the waiter returns without reading it back, and what it returns is what a read gives."""
    release = asyncio.Event()
    waits = wait_begins(monkeypatch)

    async def gated(value: int) -> dict[str, int]:
        await release.wait()
        if outcome == "failed":
            raise ValueError(f"no {value}")
        return {"value": value}

    jd = make_jobsd()
    job = jd.register_job("gated", gated, retries_error_limit=0)
    async with jd:
        run_id = await job.create_run(7).run()
        reads = 0
        read = jd.get_run_state

        async def counting(run_id: int) -> RunState:
            nonlocal reads
            reads += 1
            return await read(run_id)

        monkeypatch.setattr(jd, "get_run_state", counting)
        # Re-checks an hour apart: only the completion's news can end the wait in time.
        monkeypatch.setattr(runs_api, "_WAIT_POLL_FIRST", 3600.0)
        waiter = asyncio.create_task(jd.wait_for_run(run_id, timeout=30))
        await asyncio.wait_for(waits.wait(), 10)  # the run is running, and it waits
        reads_before = reads
        release.set()
        state = await waiter
        assert reads == reads_before <= 1  # none after the completion: it carried the row
        assert state == await read(run_id)
        assert state.status.finished
        if outcome == "succeeded":
            assert state.result == {"value": 7}
        else:
            assert state.run_completed_error is not None and "no 7" in state.run_completed_error


async def test_a_run_started_here_is_awaited_without_reading_it(
    make_jobsd: MakeJobsD, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Created where it runs and started at once (direct start), a run is not read while
    it runs: the completion written here brings the news and the row.  (A read only finds
    a run that had already finished when the wait began.)"""

    async def double(x: int) -> int:
        await asyncio.sleep(0.01)  # still running when the wait begins
        return 2 * x

    jd = make_jobsd(workers=4)
    job = jd.register_job("double", double)
    async with jd:
        unfinished_reads = 0
        read = jd.get_run_state

        async def counting(run_id: int) -> RunState:
            nonlocal unfinished_reads
            state = await read(run_id)
            unfinished_reads += not state.status.finished
            return state

        monkeypatch.setattr(jd, "get_run_state", counting)
        for value in range(20):
            state = await jd.wait_for_run(await job.create_run(value).run(), timeout=30)
            assert state.result == 2 * value and state.status.finished
    if server(backend) in ("postgresql", "mariadb"):  # direct start: running here once run() returns
        assert unfinished_reads == 0
    # (SQLite: the dispatcher claims it, maybe after the wait began, which then reads it.)


async def test_a_run_finished_elsewhere_while_it_still_runs_here_is_noticed(
    make_jobsd: MakeJobsD, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run whose attempt still runs here but whose row was closed elsewhere (taken over
    while this instance looked dead) is noticed by the waiter's re-checks, not only when
    the job here ends."""
    monkeypatch.setattr(runs_api, "_WAIT_POLL_MAX", 0.05)  # re-checks soon as far apart as they get
    release = asyncio.Event()
    started = asyncio.Event()

    async def gated() -> None:
        started.set()
        await release.wait()

    jd = make_jobsd()
    job = jd.register_job("gated", gated)
    async with jd:
        run_id = await job.create_run().run()
        await asyncio.wait_for(started.wait(), 10)
        runs = jd.metadata.tables[f"{jd_prefix(jd)}runs"]
        async with jd.engine.begin() as conn:  # as another instance's take-over would close it
            await conn.execute(
                update(runs)
                .where(runs.c.id == run_id)
                .values(run_completed_at=datetime.now(UTC), run_completed_error="job run timed out")
            )
        try:
            state = await jd.wait_for_run(run_id, timeout=10)  # the job here still runs
            assert state.status.finished and state.run_completed_error == "job run timed out"
            assert not release.is_set()
        finally:
            release.set()
