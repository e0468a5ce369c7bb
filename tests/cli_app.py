"""The app the command-line tests run ``jobsd`` with: ``--app cli_app:jd``.

Its database and table prefix come from ``JOBSD_DATABASE_URL`` and ``JOBSD_TABLE_PREFIX``,
and ``CLI_APP_SHUTDOWN_TIMEOUT`` sets how long a shutdown lets jobs finish.
"""

from __future__ import annotations

import asyncio
import gc
import os

from sqlalchemy.ext.asyncio import create_async_engine

from jobsd_async import JobsD, RunInfo

jd = JobsD(
    create_async_engine(os.environ["JOBSD_DATABASE_URL"]),
    table_prefix=os.environ["JOBSD_TABLE_PREFIX"],
    poll_interval=0.1,
    heartbeat_interval=0.5,
    timeout_check=0.5,
    shutdown_timeout=float(os.environ.get("CLI_APP_SHUTDOWN_TIMEOUT", "1")),
    cancel_grace=0.5,
)


@jd.job("long", retries_error_limit=0, retries_timeout_limit=0)
async def long(info: RunInfo, seconds: float) -> str:
    """Runs for ``seconds`` unless told to stop."""
    try:
        await asyncio.wait_for(info.cancel.wait(), seconds)
    except TimeoutError:
        return "finished"
    return "stopped"


@jd.job("echo")
async def echo(value: str) -> str:
    return value


@jd.job("fail", retries_error_limit=0)
async def fail() -> None:
    raise ValueError("fails on purpose")


@jd.job("frozen")
async def frozen() -> int:
    """How many objects the worker took out of the garbage collector's sight."""
    return gc.get_freeze_count()
