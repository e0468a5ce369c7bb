"""A cluster member in its own process, for the multi-process tests.

Usage: python cluster_worker.py DATABASE_URL TABLE_PREFIX RUNS_TO_CREATE LOG_FILE
Creates its runs, executes whatever it claims (appending "row_id pid" lines to LOG_FILE),
and shuts down gracefully on SIGTERM.  Prints "READY" once up and "CREATED" when done.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from sqlalchemy.ext.asyncio import create_async_engine

from jobsd_async import JobsD, RunInfo


async def main(url: str, prefix: str, count: int, log_path: str) -> None:
    engine = create_async_engine(url)
    jd = JobsD(engine, table_prefix=prefix, workers=4, poll_interval=0.1, heartbeat_interval=0.5)

    @jd.job(name="hammer")
    def hammer(info: RunInfo, n: int) -> int:  # sync: runs in a worker thread
        with open(log_path, "a") as log:
            log.write(f"{info.id} {os.getpid()}\n")
        return n

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with jd:
        print("READY", flush=True)
        for n in range(count):
            await hammer.create_run(n).run()
        print("CREATED", flush=True)
        await stop.wait()
    await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]))
