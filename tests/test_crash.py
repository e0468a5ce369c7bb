"""A worker process killed with SIGKILL mid-run: another instance re-runs it (SPEC §3.6)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

from conftest import MakeJobsD, read_word_after
from crash_worker import every_300ms

from jobsd_async import RunInfo, RunStatus

WORKER = Path(__file__).with_name("crash_worker.py")
HEARTBEAT = 0.5
TIMEOUT_CHECK = 0.5
# Recovery must come within 3 heartbeats + one timeout check; the margin covers process
# scheduling on a loaded 2-core machine and the poll that picks up the follow-up.
RECOVERY_BOUND = 3 * HEARTBEAT + TIMEOUT_CHECK + 2.5


async def test_sigkilled_worker_run_is_rerun_and_chain_continues(
    make_jobsd: MakeJobsD, database_url: str, table_prefix: str
) -> None:
    # The survivor creates the tables first so the worker never races it on DDL.
    survivor = make_jobsd(heartbeat_interval=HEARTBEAT, timeout_check=TIMEOUT_CHECK, poll_interval=0.1)
    executions: list[tuple[float, int]] = []

    @survivor.job(name="crashy")
    async def crashy(info: RunInfo) -> None:
        executions.append((time.monotonic(), info.run_success_count))

    survivor.register_schedule("every_300ms", every_300ms)

    worker = await asyncio.create_subprocess_exec(
        sys.executable, str(WORKER), database_url, table_prefix, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert worker.stdout is not None
        run_id = int(await read_word_after(worker.stdout, "CREATED"))
        await read_word_after(worker.stdout, "RUNNING")
        await survivor.up()
        os.kill(worker.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        await worker.wait()

        state = await survivor.wait_for_run(run_id, timeout=30)
    finally:
        if worker.returncode is None:
            worker.kill()
            await worker.wait()

    recovery = executions[0][0] - killed_at
    print(f"recovery after SIGKILL: {recovery:.2f}s")
    assert recovery < RECOVERY_BOUND
    assert state.status is RunStatus.SUCCEEDED
    assert [count for _, count in executions] == [0, 1]
    assert survivor.instance.runs_timed_out_res == 1
    # The chain ended: its unique name is free again.
    again = await survivor.create_run("crashy").unique("crashy").schedule("every_300ms").limit(1).run()
    assert again != run_id
