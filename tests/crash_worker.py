"""A worker process for the crash tests: runs a unique recurring run that hangs until killed.

Usage: python crash_worker.py DATABASE_URL TABLE_PREFIX
Prints "CREATED <run id>" and then "RUNNING <row id>" once the job has started.
"""

from __future__ import annotations

import asyncio
import sys
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import create_async_engine

from jobsd_async import JobsD, RunInfo

HEARTBEAT = 0.5
TIMEOUT_CHECK = 0.5


def every_300ms(now: datetime) -> datetime:
    return now + timedelta(milliseconds=300)


async def main(url: str, prefix: str) -> None:
    engine = create_async_engine(url)
    jd = JobsD(
        engine,
        table_prefix=prefix,
        heartbeat_interval=HEARTBEAT,
        timeout_check=TIMEOUT_CHECK,
        poll_interval=0.2,
    )
    jd.register_schedule("every_300ms", every_300ms)

    @jd.job(name="crashy")
    async def crashy(info: RunInfo) -> None:
        print("RUNNING", info.id, flush=True)
        await asyncio.sleep(3600)

    async with jd:
        run_id = await crashy.create_run().unique("crashy").schedule("every_300ms").limit(2).run()
        print("CREATED", run_id, flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
