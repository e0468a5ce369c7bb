"""Tables and runs made by a released jobsd_async, for upgrade tests; run with its wheel.

Usage: PYTHONPATH=tests/releases/<wheel> python old_release.py DATABASE_URL TABLE_PREFIX MODE

- ``tables``: create the release's tables and exit.
- ``runs``: create runs of every kind (pending, unique, scheduled, running), print their
  ids as one JSON line once the running one has started, then run until killed (SIGKILL:
  its running row stays as a crashed instance leaves it).
"""

from __future__ import annotations

import asyncio
import json
import sys

from sqlalchemy.ext.asyncio import create_async_engine

import jobsd_async
from jobsd_async import JobsD, every


async def main(url: str, prefix: str, mode: str) -> None:
    engine = create_async_engine(url)
    jd = JobsD(engine, table_prefix=prefix, heartbeat_interval=0.5, timeout_check=0.5, poll_interval=0.2)
    started = asyncio.Event()

    @jd.job(name="echo")
    async def echo(value: str) -> str:
        return value

    @jd.job(name="block")
    async def block(value: str) -> str:
        started.set()
        await asyncio.sleep(3600)
        return value

    async with jd:
        if mode == "tables":
            print(json.dumps({"version": jobsd_async.__version__}), flush=True)
        else:
            ids = {
                "version": jobsd_async.__version__,
                "pending": await jd.create_run("echo", "pending").run_after(2.0),
                "unique": await jd.create_run("echo", "unique").unique("user-Alice").run_after(2.0),
                "scheduled": await jd.create_run("echo", "tick").schedule(every(0.3)).limit(2).run_after(2.0),
                "running": await jd.create_run("block", "was running").run(),
            }
            await asyncio.wait_for(started.wait(), 30)
            print(json.dumps(ids), flush=True)
            await asyncio.Event().wait()
    await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
