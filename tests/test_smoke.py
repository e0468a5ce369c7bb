"""The basic path on every backend: create a run, it executes, its state is recorded."""

from __future__ import annotations

from conftest import MakeJobsD

from jobsd_async import RunInfo, RunStatus


async def test_run_executes_and_records_result(make_jobsd: MakeJobsD) -> None:
    jd = make_jobsd()
    seen: list[tuple[int, str]] = []

    @jd.job
    async def greet(info: RunInfo, who: str) -> str:
        seen.append((info.id, who))
        return f"hello {who}"

    async with jd:
        run_id = await greet.create_run("world").run()
        state = await jd.wait_for_run(run_id, timeout=10)

    assert seen == [(run_id, "world")]
    assert state.status is RunStatus.SUCCEEDED
    assert state.result == "hello world"
    assert state.run_started_by == jd.instance_id
