"""A worker process for the limit tests: holds the one slot of a limited job until killed.

Usage: python limit_worker.py DATABASE_URL TABLE_PREFIX
Prints "UP" once started and "RUNNING <run id>" when a run of ``hold`` starts.
"""

from __future__ import annotations

import asyncio
import sys

from sqlalchemy.ext.asyncio import create_async_engine

from jobsd_async import JobsD, RunInfo


async def main(url: str, prefix: str) -> None:
    engine = create_async_engine(url)
    jd = JobsD(
        engine, table_prefix=prefix, workers=3, heartbeat_interval=0.5, timeout_check=0.5, poll_interval=0.2
    )

    @jd.job(name="hold", max_running=1)
    async def hold(info: RunInfo) -> None:
        print("RUNNING", info.run_id, flush=True)
        await asyncio.sleep(3600)

    @jd.job(name="mark")
    async def mark() -> None:
        pass

    async with jd:
        print("UP", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
