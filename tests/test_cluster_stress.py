"""Many instances, in one process and in several, hammer one table: every run executes once."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections import Counter
from pathlib import Path

import pytest
from conftest import MakeJobsD, eventually, fetch_runs

from jobsd_async import JobsD, RunInfo

pytestmark = pytest.mark.cluster

WORKER = Path(__file__).with_name("cluster_worker.py")


async def test_eight_instances_run_every_run_exactly_once(
    make_jobsd: MakeJobsD, caplog: pytest.LogCaptureFixture
) -> None:
    executed: Counter[int] = Counter()
    instances: list[JobsD] = []
    for _ in range(8):
        jd = make_jobsd(workers=4, poll_interval=0.05)

        @jd.job(name="hammer")
        async def hammer(info: RunInfo, n: int) -> int:
            executed[info.id] += 1
            await asyncio.sleep(0.005)
            return n

        instances.append(jd)
    for jd in instances:
        await jd.up()

    async def create(jd: JobsD) -> list[int]:
        return [await jd.create_run("hammer", n).run() for n in range(40)]

    with caplog.at_level(logging.WARNING, logger="jobsd_async"):
        ids = [i for batch in await asyncio.gather(*(create(jd) for jd in instances)) for i in batch]
        for run_id in ids:
            await instances[0].wait_for_run(run_id, timeout=60)

    assert len(ids) == 320
    assert sorted(executed) == sorted(ids)
    assert set(executed.values()) == {1}
    assert sum(jd.instance.runs_started for jd in instances) == 320
    problems = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert problems == []


async def test_worker_processes_run_every_run_exactly_once(
    make_jobsd: MakeJobsD, database_url: str, table_prefix: str, tmp_path: Path
) -> None:
    local = make_jobsd(workers=0)  # creates the tables, then only watches
    await local.up()
    log = tmp_path / "executions.log"
    log.touch()
    per_worker = 60
    workers = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            str(WORKER),
            database_url,
            table_prefix,
            str(per_worker),
            str(log),
            stdout=asyncio.subprocess.PIPE,
        )
        for _ in range(3)
    ]
    try:
        for proc in workers:
            assert proc.stdout is not None
            async with asyncio.timeout(60):
                while (await proc.stdout.readline()).strip() != b"CREATED":
                    pass

        async def all_done() -> bool:
            rows = await fetch_runs(local)
            return len(rows) == 3 * per_worker and all(r["run_completed_at"] for r in rows)

        await eventually(all_done, timeout=60, what="every run completed")
    finally:
        for proc in workers:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        for proc in workers:
            async with asyncio.timeout(30):
                await proc.wait()

    assert all(proc.returncode == 0 for proc in workers)
    lines = log.read_text().split()
    row_ids = Counter(int(row_id) for row_id in lines[0::2])
    rows = await fetch_runs(local)
    assert sorted(row_ids) == sorted(r["id"] for r in rows)
    assert set(row_ids.values()) == {1}
    assert all(r["run_completed_error"] is None for r in rows)
    assert len(set(lines[1::2])) > 1, "only one process did any work"
