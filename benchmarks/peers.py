"""Throughput of two peer PostgreSQL job queues, PgQueuer and Procrastinate, for comparison.

The peers are not dependencies of jobsd_async: install them into a separate virtualenv and
run this script with that interpreter (it imports nothing from jobsd_async)::

    python3 -m venv /tmp/peers-venv
    /tmp/peers-venv/bin/pip install pgqueuer procrastinate asyncpg 'psycopg[binary]'
    /tmp/peers-venv/bin/python benchmarks/peers.py --jobs 20000 --repeat 3

It needs a PostgreSQL server; ``--dsn`` (default ``postgresql://postgres@127.0.0.1:5432/test``)
is only used as the admin connection: every round runs in a database of its own,
``peers_<random>``, created before the round and dropped (``WITH (FORCE)``) after it, even
when the round fails. Server settings are left as they are.

Prints, per peer, each round and the median of ``--repeat`` rounds of:

- burn-down: N pending no-op jobs, enqueued beforehand with the library's batch enqueue (not
  timed), drained by ONE worker running in this process; jobs/s from starting the worker until
  the library's own table records every job as finished (polled every 20 ms on a separate
  connection). PgQueuer: ``QueueManager.run(batch_size=100)`` (``max_concurrent_tasks`` left
  unlimited: the library requires it to be at least twice the batch size), completion = rows
  with status ``successful`` in ``pgqueuer_log``. Procrastinate: ``run_worker_async(
  concurrency=100)`` over a psycopg pool of ``--procrastinate-pool-size`` connections,
  completion = ``procrastinate_jobs.status = 'succeeded'``. Procrastinate drains far slower, so
  it gets ``--procrastinate-jobs`` (default 2,000) jobs instead of ``--jobs`` to keep the run short;
  its rate falls as the backlog grows, so compare it at the same N before publishing a ratio.
- one-at-a-time: ``--single`` times (default 500, 0 to skip), enqueue one job with the
  library's single enqueue and wait until the database records it finished (polled every 2 ms)
  before enqueuing the next, with the same worker running. PgQueuer records a finished job
  when its status-log buffer flushes, on a ~0.1 s timer that ``QueueManager.run`` does not
  expose, so it tops out near 10 jobs/s here. (benchmarks/throughput.py's one-at-a-time
  submits sequentially without waiting for each run, so its numbers do not compare.)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from importlib.metadata import version
from typing import Any
from urllib.parse import urlsplit, urlunsplit

BATCH_ENQUEUE = 1000
BURN_POLL = 0.02
SINGLE_POLL = 0.002

PGQ_FINISHED = "SELECT count(*) FROM pgqueuer_log WHERE status = 'successful'"
PGQ_JOB_DONE = "SELECT EXISTS (SELECT 1 FROM pgqueuer_log WHERE job_id = $1 AND status = 'successful')"
PROC_FINISHED = "SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'"
PROC_JOB_DONE = "SELECT EXISTS (SELECT 1 FROM procrastinate_jobs WHERE id = $1 AND status = 'succeeded')"


@dataclass
class Settings:
    dsn: str
    jobs: int
    procrastinate_jobs: int
    single: int
    repeat: int
    batch_size: int
    concurrency: int
    procrastinate_pool_size: int
    timeout: float


@dataclass
class Result:
    peer: str
    jobs: int
    burn: list[float] = field(default_factory=list)
    single: list[float] = field(default_factory=list)


def with_database(dsn: str, name: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{name}"))


@contextlib.asynccontextmanager
async def scratch_database(admin_dsn: str) -> AsyncIterator[str]:
    """Create ``peers_<random>``, yield its DSN, and drop it afterwards whatever happened."""
    import asyncpg

    name = f"peers_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield with_database(admin_dsn, name)
    finally:
        admin = await asyncpg.connect(admin_dsn)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


async def wait_for_count(
    conn: Any, query: str, target: int, worker: asyncio.Task[Any], timeout: float
) -> None:
    """Poll ``query`` (a count) until it reaches ``target``; fail fast if the worker stops."""
    deadline = time.perf_counter() + timeout
    while await conn.fetchval(query) < target:
        if worker.done():
            raise RuntimeError(f"worker stopped early: {worker.exception()!r}")
        if time.perf_counter() > deadline:
            raise TimeoutError(f"{await conn.fetchval(query)} of {target} jobs finished after {timeout}s")
        await asyncio.sleep(BURN_POLL)


async def one_by_one(
    conn: Any,
    enqueue: Callable[[], Awaitable[int]],
    done_query: str,
    count: int,
    worker: asyncio.Task[Any],
    timeout: float,
) -> float:
    """Enqueue one job, wait until the database records it finished, ``count`` times; jobs/s."""
    deadline = time.perf_counter() + timeout
    began = time.perf_counter()
    for _ in range(count):
        job_id = await enqueue()
        while not await conn.fetchval(done_query, job_id):
            if worker.done():
                raise RuntimeError(f"worker stopped early: {worker.exception()!r}")
            if time.perf_counter() > deadline:
                raise TimeoutError(f"job {job_id} not finished after {timeout}s")
            await asyncio.sleep(SINGLE_POLL)
    return count / (time.perf_counter() - began)


async def pgqueuer_round(dsn: str, settings: Settings, jobs: int, single: int) -> tuple[float, float | None]:
    import asyncpg
    from pgqueuer.db import AsyncpgDriver
    from pgqueuer.models import Job
    from pgqueuer.qm import QueueManager
    from pgqueuer.queries import Queries

    producer_conn = await asyncpg.connect(dsn)
    worker_conn = await asyncpg.connect(dsn)
    poll = await asyncpg.connect(dsn)
    try:
        producer = Queries(AsyncpgDriver(producer_conn))
        await producer.install()
        for start in range(0, jobs, BATCH_ENQUEUE):
            n = min(BATCH_ENQUEUE, jobs - start)
            await producer.enqueue(["noop"] * n, [None] * n, [0] * n)

        qm = QueueManager(Queries(AsyncpgDriver(worker_conn)))

        @qm.entrypoint("noop")
        async def noop(job: Job) -> None:
            return None

        began = time.perf_counter()
        worker = asyncio.create_task(qm.run(batch_size=settings.batch_size))
        try:
            await wait_for_count(poll, PGQ_FINISHED, jobs, worker, settings.timeout)
            burn = jobs / (time.perf_counter() - began)

            async def enqueue_one() -> int:
                return int((await producer.enqueue("noop", None))[0])

            single_rate = (
                await one_by_one(poll, enqueue_one, PGQ_JOB_DONE, single, worker, settings.timeout)
                if single
                else None
            )
        finally:
            qm.shutdown.set()
            await asyncio.wait_for(worker, 30)
        return burn, single_rate
    finally:
        for conn in (producer_conn, worker_conn, poll):
            await conn.close()


async def procrastinate_round(
    dsn: str, settings: Settings, jobs: int, single: int
) -> tuple[float, float | None]:
    import asyncpg
    from procrastinate import App, PsycopgConnector

    pool_size = settings.procrastinate_pool_size
    app = App(connector=PsycopgConnector(conninfo=dsn, min_size=pool_size, max_size=pool_size))

    @app.task(name="noop")
    async def noop() -> None:
        return None

    poll = await asyncpg.connect(dsn)
    try:
        async with app.open_async():
            await app.schema_manager.apply_schema_async()
            for start in range(0, jobs, BATCH_ENQUEUE):
                await noop.batch_defer_async(*({} for _ in range(min(BATCH_ENQUEUE, jobs - start))))

            began = time.perf_counter()
            worker = asyncio.create_task(
                app.run_worker_async(concurrency=settings.concurrency, install_signal_handlers=False)
            )
            try:
                await wait_for_count(poll, PROC_FINISHED, jobs, worker, settings.timeout)
                burn = jobs / (time.perf_counter() - began)
                single_rate = (
                    await one_by_one(poll, noop.defer_async, PROC_JOB_DONE, single, worker, settings.timeout)
                    if single
                    else None
                )
            finally:
                worker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait_for(worker, 30)
        return burn, single_rate
    finally:
        await poll.close()


Round = Callable[[str, Settings, int, int], Awaitable[tuple[float, float | None]]]
PEERS: dict[str, tuple[str, Round]] = {
    "pgqueuer": ("pgqueuer", pgqueuer_round),
    "procrastinate": ("procrastinate", procrastinate_round),
}


def describe(peer: str, settings: Settings) -> str:
    if peer == "pgqueuer":
        return f"batch_size={settings.batch_size}, max_concurrent_tasks=unlimited, 1 asyncpg connection"
    return (
        f"concurrency={settings.concurrency}, psycopg pool {settings.procrastinate_pool_size}, "
        "listen_notify=True"
    )


def load() -> str:
    """1/5/15-minute load averages: a busy machine (another benchmark, a test run) skews results."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def fmt(rates: list[float], digits: int = 0) -> str:
    return ", ".join(f"{r:.{digits}f}" for r in rates)


async def bench(peer: str, settings: Settings) -> Result:
    package, run_round = PEERS[peer]
    jobs = settings.procrastinate_jobs if peer == "procrastinate" else settings.jobs
    result = Result(peer, jobs)
    print(f"{peer} {version(package)} ({describe(peer, settings)}), burn-down of {jobs} jobs", flush=True)
    for index in range(1, settings.repeat + 1):
        async with scratch_database(settings.dsn) as dsn:
            burn, single = await run_round(dsn, settings, jobs, settings.single)
        result.burn.append(burn)
        line = f"  round {index}: burn-down {burn:8.0f} jobs/s"
        if single is not None:
            result.single.append(single)
            line += f" | one-at-a-time ({settings.single}) {single:6.1f} jobs/s"
        print(line, flush=True)
    return result


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--peers", nargs="+", choices=list(PEERS), default=list(PEERS))
    parser.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/test", help="admin DSN")
    parser.add_argument("--jobs", type=int, default=20000, help="burn-down jobs (PgQueuer)")
    parser.add_argument("--procrastinate-jobs", type=int, default=2000, help="burn-down jobs (Procrastinate)")
    parser.add_argument("--single", type=int, default=500, help="one-at-a-time jobs per round (0 skips)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=100, help="PgQueuer batch_size")
    parser.add_argument("--concurrency", type=int, default=100, help="Procrastinate worker concurrency")
    parser.add_argument("--procrastinate-pool-size", type=int, default=10, help="psycopg pool min=max size")
    parser.add_argument("--timeout", type=float, default=300, help="seconds allowed per measurement")
    args = parser.parse_args()
    settings = Settings(
        dsn=args.dsn,
        jobs=args.jobs,
        procrastinate_jobs=args.procrastinate_jobs,
        single=args.single,
        repeat=args.repeat,
        batch_size=args.batch_size,
        concurrency=args.concurrency,
        procrastinate_pool_size=args.procrastinate_pool_size,
        timeout=args.timeout,
    )
    logging.basicConfig(level=logging.WARNING)
    # Its "App is instantiated in the main Python module" hint is moot: the worker runs in-process.
    logging.getLogger("procrastinate.blueprints").setLevel(logging.ERROR)
    # SIGTERM cancels like Ctrl-C does, so the scratch databases are dropped either way.
    main_task = asyncio.current_task()
    assert main_task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
    began = time.perf_counter()
    print(f"load average before: {load()} ({os.cpu_count()} CPUs)", flush=True)
    results = [await bench(peer, settings) for peer in args.peers]
    print("\nmedians:")
    for r in results:
        burn = statistics.median(r.burn)
        line = f"  {r.peer:14s} burn-down {burn:8.0f} jobs/s ({r.jobs} jobs; rounds {fmt(r.burn)})"
        if r.single:
            line += f" | one-at-a-time {statistics.median(r.single):6.1f} jobs/s (rounds {fmt(r.single, 1)})"
        print(line)
    print(f"total {time.perf_counter() - began:.0f} s; load average after: {load()}")


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except (KeyboardInterrupt, asyncio.CancelledError):
        raise SystemExit("interrupted (scratch databases dropped)") from None
