"""A worker module for ``jobsd worker``: the jobs of an app, on a module-level JobsD.

The web process creates runs (``examples/fastapi_app.py``); any number of worker processes
run them::

    export JOBSD_DATABASE_URL=postgresql+asyncpg://app@db/app
    jobsd worker --app examples.worker:jd --workers 20

``jobsd`` imports this module from the current directory and calls nothing else: the
engine and the JobsD are built here, from the environment.
"""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import create_async_engine

from jobsd_async import JobsD, RunInfo, every

DATABASE_URL = os.environ.get("JOBSD_DATABASE_URL", "sqlite+aiosqlite:///jobsd_example.db")

engine = create_async_engine(DATABASE_URL)
jd = JobsD(engine, poll_interval=1.0)


# A periodic job: the cluster keeps one chain of it, however many workers start.
@jd.job("announce", periodic=every(3600))
async def announce(label: str = "hello") -> str:
    return f"{label}: the time is {datetime.now(UTC):%H:%M:%S} UTC"


@jd.job("add")
def add(a: int, b: int) -> int:  # a plain function runs in a worker thread
    return a + b


@jd.job("sleep")
async def sleep(info: RunInfo, seconds: float) -> float:
    """Sleeps, but stops early when told to (a timeout, a cancel, a shutdown)."""
    try:
        await asyncio.wait_for(info.cancel.wait(), seconds)
    except TimeoutError:
        return seconds
    return 0.0
