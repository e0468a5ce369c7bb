"""Throughput and latency of jobsd_async on each backend.

    python benchmarks/throughput.py [sqlite|postgresql|mariadb ...] [--runs N] [--repeat K]

Prints, per backend (median of --repeat rounds):
- burn-down: N pending no-op runs (inserted with create_runs) drained by one instance with
  workers=100, counted until every row is recorded complete in the database;
- sustained: a producer instance creates N runs in batches of 100 (create_runs) while a worker
  instance with workers=100 and poll_interval=0.1 runs them, until every row is recorded complete;
- one-at-a-time: min(N, 1000) sequential ``create_run(...).run()`` calls on one instance that also
  executes them, until all are complete;
- start latency: a run created on instance A (workers=0) and executed by idle instance B,
  p50/p95/p99 over 200 runs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from sqlalchemy import exists, select
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from jobsd_async import JobsD

T = TypeVar("T")
URLS = {
    "postgresql": os.environ.get(
        "JOBSD_BENCH_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
    ),
    "mariadb": os.environ.get("JOBSD_BENCH_MYSQL_URL", "mysql+aiomysql://root@127.0.0.1:3306/test"),
}


async def noop() -> None:
    return None


def make(engine: AsyncEngine, prefix: str, **options: Any) -> JobsD:
    jd = JobsD(engine, table_prefix=prefix, **options)
    jd.register_job("noop", noop)
    return jd


async def any_incomplete(jd: JobsD) -> bool:
    """Whether a row is not yet recorded complete (cheap: stops at the first one)."""
    runs = jd.metadata.tables[next(n for n in jd.metadata.tables if n.endswith("runs"))]
    async with jd.engine.connect() as conn:
        query = select(exists().where(runs.c.run_completed_at.is_(None)))
        return bool((await conn.execute(query)).scalar_one())


async def until_completed(jd: JobsD) -> None:
    # The target counts rows recorded complete in the database, so ask the database.
    # (The benchmark jobs have no follow-ups: when nothing is incomplete, all are done.)
    while await any_incomplete(jd):  # noqa: ASYNC110
        await asyncio.sleep(0.02)


async def burn_down(engine: AsyncEngine, prefix: str, runs: int) -> float:
    async with make(engine, prefix, workers=0) as producer:
        for start in range(0, runs, 1000):
            await producer.create_runs("noop", [() for _ in range(min(1000, runs - start))])
    worker = make(engine, prefix, workers=100)
    began = time.perf_counter()
    async with worker:
        await until_completed(worker)
        took = time.perf_counter() - began
    return runs / took


async def sustained(engine: AsyncEngine, prefix: str, runs: int) -> float:
    """Runs/s while a producer instance creates runs (batches of 100) as a worker runs them.

    The worker polls every 0.1 s: on MariaDB and SQLite that is how it hears of new rows.
    """
    worker = make(engine, prefix, workers=100, poll_interval=0.1)
    async with make(engine, prefix, workers=0) as producer, worker:
        began = time.perf_counter()
        for start in range(0, runs, 100):
            await producer.create_runs("noop", [() for _ in range(min(100, runs - start))])
        await until_completed(worker)
        return runs / (time.perf_counter() - began)


async def one_at_a_time(engine: AsyncEngine, prefix: str, runs: int) -> float:
    async with make(engine, prefix, workers=100) as jd:
        began = time.perf_counter()
        for _ in range(runs):
            await jd.create_run("noop").run()
        await until_completed(jd)
        return runs / (time.perf_counter() - began)


async def latency(engine: AsyncEngine, prefix: str, samples: int = 200) -> list[float]:
    started = asyncio.Event()
    started_at = 0.0
    worker = JobsD(engine, table_prefix=prefix, workers=10, poll_interval=1.0)

    @worker.job(name="noop")
    async def stamp() -> None:
        nonlocal started_at
        started_at = time.perf_counter()
        started.set()

    producer = make(engine, prefix, workers=0)
    out: list[float] = []
    async with worker, producer:
        for _ in range(samples):
            started.clear()
            sent = time.perf_counter()
            await producer.create_run("noop").run()
            await asyncio.wait_for(started.wait(), 10)
            out.append((started_at - sent) * 1000)
            await asyncio.sleep(0.005)
    return out


async def fresh(url: str, work: Callable[[AsyncEngine, str], Awaitable[T]]) -> T:
    engine = (
        create_async_engine(url, pool_size=20, max_overflow=20)
        if "sqlite" not in url
        else create_async_engine(url)
    )
    prefix = f"bench{uuid.uuid4().hex[:8]}_"
    try:
        return await work(engine, prefix)
    finally:
        probe = JobsD(engine, table_prefix=prefix)
        async with engine.begin() as conn:
            await conn.run_sync(probe.metadata.drop_all)
        await engine.dispose()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("backends", nargs="*", default=["sqlite", "postgresql", "mariadb"])
    parser.add_argument("--runs", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for backend in args.backends:
            url = URLS.get(backend) or f"sqlite+aiosqlite:///{tmp}/bench-{uuid.uuid4().hex[:6]}.db"
            burn = [await fresh(url, lambda e, p: burn_down(e, p, args.runs)) for _ in range(args.repeat)]
            steady = [await fresh(url, lambda e, p: sustained(e, p, args.runs)) for _ in range(args.repeat)]
            single = [
                await fresh(url, lambda e, p: one_at_a_time(e, p, min(args.runs, 1000)))
                for _ in range(args.repeat)
            ]
            lat = await fresh(url, latency)
            q = statistics.quantiles(lat, n=100)
            print(
                f"{backend:10s} burn-down {statistics.median(burn):8.0f} runs/s | "
                f"sustained {statistics.median(steady):6.0f} runs/s | "
                f"one-at-a-time {statistics.median(single):6.0f} runs/s | "
                f"start latency p50 {q[49]:.1f} ms p95 {q[94]:.1f} ms p99 {q[98]:.1f} ms",
                flush=True,
            )


if __name__ == "__main__":
    asyncio.run(main())
