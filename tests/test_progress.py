"""Progress: a running job reports it with RunInfo.set_progress; callers and the CLI see it."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
from typing import Any

from conftest import MakeJobsD, jd_prefix
from sqlalchemy import event

from jobsd_async import JobsD, RunInfo, RunStatus


async def test_progress_is_visible_while_the_job_runs_and_after(make_jobsd: MakeJobsD) -> None:
    jd = make_jobsd()
    reported, finish = asyncio.Event(), asyncio.Event()

    @jd.job("import")
    async def import_rows(info: RunInfo, total: int) -> int:
        await info.set_progress({"done": 0, "total": total})
        await info.set_progress({"done": total // 2, "total": total, "stage": "naïve ✓"})
        reported.set()
        await finish.wait()
        return total

    async with jd:
        run_id = await import_rows.create_run(10).run()
        await asyncio.wait_for(reported.wait(), 10)
        state = await import_rows.get_run_state(run_id)
        assert state.status is RunStatus.RUNNING
        assert state.progress == {"done": 5, "total": 10, "stage": "naïve ✓"}
        finish.set()
        state = await import_rows.wait_for_run(run_id, timeout=10)
    assert state.result == 10
    assert state.progress == {"done": 5, "total": 10, "stage": "naïve ✓"}


async def test_a_sync_job_reports_from_its_thread(make_jobsd: MakeJobsD) -> None:
    jd = make_jobsd()
    threads: list[int] = []

    @jd.job("sync")
    def sync(info: RunInfo) -> None:
        threads.append(threading.get_ident())
        for step in range(1, 4):
            info.set_progress_sync(step / 3)

    async with jd:
        state = await sync.wait_for_run(await sync.create_run().run(), timeout=10)
    assert state.status is RunStatus.SUCCEEDED, state.run_completed_error
    assert state.progress == 1.0
    assert threads and threads[0] != threading.get_ident()


async def test_set_progress_sync_on_the_event_loop_is_refused(make_jobsd: MakeJobsD) -> None:
    jd = make_jobsd()

    @jd.job("wrong", retries_error_limit=0)
    async def wrong(info: RunInfo) -> None:
        info.set_progress_sync(1)

    async with jd:
        state = await wrong.wait_for_run(await wrong.create_run().run(), timeout=10)
    assert state.run_completed_error is not None
    assert "use `await set_progress()`" in state.run_completed_error


async def test_progress_without_a_json_form_raises_in_the_job(make_jobsd: MakeJobsD) -> None:
    jd = make_jobsd()
    problems: list[str] = []

    @jd.job("odd")
    async def odd(info: RunInfo) -> None:
        for value in (object(), float("nan"), "x" * 70000):
            try:
                await info.set_progress(value)
            except (TypeError, ValueError) as exc:
                problems.append(type(exc).__name__)
        await info.set_progress("fine")

    async with jd:
        state = await odd.wait_for_run(await odd.create_run().run(), timeout=10)
    assert problems == ["TypeError", "TypeError", "ValueError"]
    assert state.progress == "fine"


async def test_reports_are_coalesced(make_jobsd: MakeJobsD) -> None:
    jd = make_jobsd()
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "run_progress" in statement and statement.lstrip().upper().startswith("UPDATE"):
            statements.append(statement)

    @jd.job("busy")
    async def busy(info: RunInfo) -> None:
        await asyncio.gather(*(info.set_progress(i) for i in range(100)))

    event.listen(jd.engine.sync_engine, "before_cursor_execute", count)
    try:
        async with jd:
            state = await busy.wait_for_run(await busy.create_run().run(), timeout=10)
    finally:
        event.remove(jd.engine.sync_engine, "before_cursor_execute", count)
    assert state.progress == 99
    assert 1 <= len(statements) <= 5, f"{len(statements)} statements for 100 reports"


async def test_a_report_after_the_attempt_ended_writes_nothing(make_jobsd: MakeJobsD) -> None:
    jd = make_jobsd()
    kept: list[RunInfo] = []

    @jd.job("keep")
    async def keep(info: RunInfo) -> None:
        kept.append(info)
        await info.set_progress("during")

    async with jd:
        run_id = await keep.create_run().run()
        await keep.wait_for_run(run_id, timeout=10)
        await kept[0].set_progress("after")  # the row is finished: not its owner's any more
        assert (await keep.get_run_state(run_id)).progress == "during"


async def test_the_follow_up_starts_without_progress(make_jobsd: MakeJobsD) -> None:
    jd = make_jobsd()
    attempts: list[Any] = []

    @jd.job("twice", retries_error_limit=1)
    async def twice(info: RunInfo) -> None:
        attempts.append(info.run_total_count)
        if len(attempts) == 1:
            await info.set_progress("first attempt")
            raise RuntimeError("again")

    async with jd:
        state = await twice.wait_for_run(await twice.create_run().run(), timeout=10)
    assert state.run_total_count == 2
    assert state.progress is None


async def test_progress_written_by_hand_that_is_not_json_is_shown_as_text(make_jobsd: MakeJobsD) -> None:
    jd = make_jobsd()
    job = jd.register_job("job", lambda: None)
    async with jd:
        run_id = await job.create_run().run_after(3600)
        runs = jd.metadata.tables[f"{jd_prefix(jd)}runs"]
        async with jd.engine.begin() as conn:
            await conn.execute(runs.update().values(run_progress="{half"))
        assert (await jd.get_run_state(run_id)).progress == "{half"


async def test_the_cli_shows_progress(make_jobsd: MakeJobsD, database_url: str) -> None:
    jd = make_jobsd()
    job = jd.register_job("job", lambda: None)
    async with jd:
        run_id = await job.create_run().run_after(3600)
        runs = jd.metadata.tables[f"{jd_prefix(jd)}runs"]
        async with jd.engine.begin() as conn:
            await conn.execute(runs.update().values(run_progress='{"done": 3, "of": 7}'))
        human = await _jobsd(jd, database_url, "runs", "show", str(run_id))
        assert 'progress:  {"done": 3, "of": 7}' in human
        shown = json.loads(await _jobsd(jd, database_url, "runs", "show", str(run_id), "--json"))
        assert shown["run"]["progress"] == {"done": 3, "of": 7}


async def _jobsd(jd: JobsD, database_url: str, *args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "jobsd_async",
        *args,
        env={**os.environ, "JOBSD_DATABASE_URL": database_url, "JOBSD_TABLE_PREFIX": jd_prefix(jd)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    return out.decode()
