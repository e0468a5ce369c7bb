"""Memory: what an idle instance adds, and whether a backlog stays in the database.

    python benchmarks/memory.py [sqlite|postgresql|mariadb ...] [--backlog 100000]

For each backend (Linux; RSS read from /proc/self/status):
1. **idle**: RSS with SQLAlchemy, the driver and a connected engine (what a service has
   anyway), then again with ``jobsd_async`` imported and an instance started and idle for a
   few heartbeats: the difference is what jobsd adds.
2. **backlog**: ``--backlog`` pending runs of a job that blocks; an instance with
   ``workers=10`` claims 10 and polls for a few intervals.  Prints the RSS growth and the
   length of its local queue, which must stay within ``poll_limit``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
import tempfile
import uuid

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

URLS = {
    "postgresql": os.environ.get(
        "JOBSD_BENCH_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
    ),
    "mariadb": os.environ.get("JOBSD_BENCH_MYSQL_URL", "mysql+aiomysql://root@127.0.0.1:3306/test"),
}


def rss_mb() -> float:
    gc.collect()
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


async def idle(engine: AsyncEngine, prefix: str) -> None:
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))
    before = rss_mb()
    from jobsd_async import JobsD  # imported here: importing it is part of what is measured

    jd = JobsD(engine, table_prefix=prefix, heartbeat_interval=0.2, poll_interval=0.2, timeout_check=0.2)

    @jd.job(name="noop")
    async def noop() -> None:
        return None

    async with jd:
        await asyncio.sleep(2.0)  # ten heartbeats, polls and timeout checks
        after = rss_mb()
    print(f"  idle instance: {before:.1f} MB -> {after:.1f} MB RSS (+{after - before:.1f} MB)", flush=True)


async def backlog(engine: AsyncEngine, prefix: str, count: int) -> None:
    from jobsd_async import JobsD

    release = asyncio.Event()

    async def block() -> None:
        await release.wait()

    producer = JobsD(engine, table_prefix=prefix, workers=0)
    producer.register_job("block", block)
    async with producer:
        for start in range(0, count, 5000):
            await producer.create_runs("block", [() for _ in range(min(5000, count - start))])
    before = rss_mb()
    worker = JobsD(engine, table_prefix=prefix, workers=10, poll_interval=0.5, shutdown_timeout=0.1)
    worker.register_job("block", block)
    async with worker:
        await asyncio.sleep(2.0)  # four polls
        after = rss_mb()
        queued = len(worker._runner.dispatcher._queue)  # type: ignore[union-attr]
        release.set()
    print(
        f"  {count:,} pending rows: {before:.1f} MB -> {after:.1f} MB RSS (+{after - before:.1f} MB); "
        f"local queue {queued} ids (poll_limit 1000)",
        flush=True,
    )


async def run(url: str, count: int) -> None:
    engine = create_async_engine(url)
    prefix = f"mem{uuid.uuid4().hex[:8]}_"
    print(engine.dialect.name, flush=True)
    try:
        await idle(engine, prefix)
        await backlog(engine, prefix, count)
    finally:
        from jobsd_async import JobsD

        async with engine.begin() as conn:
            await conn.run_sync(JobsD(engine, table_prefix=prefix).metadata.drop_all)
        await engine.dispose()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("backends", nargs="*", default=["sqlite", "postgresql", "mariadb"])
    parser.add_argument("--backlog", type=int, default=100_000)
    args = parser.parse_args()
    if len(args.backends) > 1:  # one process each, so each pays for importing jobsd_async
        for backend in args.backends:
            command = [sys.executable, __file__, backend, "--backlog", str(args.backlog)]
            process = await asyncio.create_subprocess_exec(*command)
            await process.wait()
        return
    with tempfile.TemporaryDirectory() as tmp:
        await run(URLS.get(args.backends[0]) or f"sqlite+aiosqlite:///{tmp}/memory.db", args.backlog)


if __name__ == "__main__":
    asyncio.run(main())
