"""jobsd_async, PgQueuer and Procrastinate side by side on one PostgreSQL, with ratios.

The peers are not dependencies of jobsd_async: install them into a separate virtualenv and run
this script with that interpreter::

    python3 -m venv /tmp/peers-venv
    /tmp/peers-venv/bin/pip install pgqueuer procrastinate asyncpg 'psycopg[binary]'
    /tmp/peers-venv/bin/python benchmarks/peers.py --repeat 3 --json /tmp/peers.json

The script itself only orchestrates: every round of every library runs in a child process of
its own (this same file with ``--child``), so the libraries never share an interpreter or an
event loop and none inherits another's heap. The PgQueuer and Procrastinate children run
under ``--peers-python`` (default: this interpreter if it can import pgqueuer, else
``/tmp/peers-venv/bin/python``). The jobsd_async children run under ``--jobsd-python``
(default: ``$JOBSD_PYTHON``, else the ``.venv`` of the checkout, else that of the main git
worktree) with ``PYTHONPATH=--jobsd-root`` (default: the checkout this script lives in), so
they measure that checkout's code whatever is installed in the venv (each child reports
where ``jobsd_async`` was imported from, checked against the root; the commit is printed).
Every child runs on the stdlib asyncio event loop (PgQueuer's ``pgq`` CLI would use uvloop;
nobody gets it here).

Databases: ``--dsn`` (default ``postgresql://postgres@127.0.0.1:5432/test``) and
``--mariadb-dsn`` (default ``mysql://root@127.0.0.1:3306/test``) are admin connections only;
jobsd reaches MariaDB through the driver the latter names (``mysql+asyncmy://``), else aiomysql.
Each child works in databases of its own, ``peers_<random>``, created for the round (on
PostgreSQL followed by a ``CHECKPOINT``, so that no library pays for the previous one's dirty
buffers) and dropped after it even when the round fails; SQLite uses a temporary file.
Server settings are left as they are. Libraries run in turn, the order rotated every round.

Measures (each round; the summary prints the median and the range of ``--repeat`` rounds):

- burn-down: N pending no-op jobs, enqueued beforehand with the library's batch enqueue (not
  timed), drained by ONE worker in the child; jobs/s from starting the worker until the
  library's own table records every job finished (``count(*)`` polled every 20 ms on a
  separate asyncpg connection: ``jobsd_runs.run_completed_at IS NOT NULL``; ``pgqueuer_log``
  rows with status ``successful``; ``procrastinate_jobs.status = 'succeeded'``).
  jobsd: one instance, ``workers=--jobsd-workers`` (100), defaults otherwise.
  PgQueuer: ``QueueManager.run(batch_size=--batch-size, mode=QueueExecutionMode.drain)`` on
  one asyncpg connection (its fastest documented set-up: batch 100, drain mode, which exits
  once the queue is empty; ``max_concurrent_tasks`` unlimited, durable tables).
  Procrastinate: ``run_worker_async(concurrency=--concurrency)`` over a psycopg pool of
  ``--procrastinate-pool-size`` connections. Procrastinate drains far slower, so it gets
  ``--procrastinate-jobs`` (default 2,000) jobs; jobsd then also burns down that many, in a
  fresh database, for the ratio at the same N (start-up weighs more at small N: jobsd
  drains 2,000 runs at a lower rate than 20,000).
- create -> result round trip: after ``--warmup`` (50), ``--round-trips`` (500) sequential
  "enqueue one job, learn it finished", each timed; p50 and p99 per round.
  jobsd: ``run_id = await job.create_run().run(); await jd.wait_for_run(run_id)`` on the
  instance that ran the burn-down. PgQueuer: ``Queries.enqueue`` then
  ``CompletionWatcher.wait_for(job_id)`` (its completion API: LISTEN on the queue table's
  change notifications, then a status query; ``debounce=0``), with a continuous worker of
  ``batch_size=--pgqueuer-latency-batch-size`` (default 1: its status-log buffer flushes when
  it holds batch_size entries or on a ~0.1 s timer, so with batch 100 a lone job's completion
  is recorded about 0.1 s later: p50 about 107 ms here). Procrastinate: ``defer_async``
  then polling its jobs table for ``status = 'succeeded'`` every ``--procrastinate-poll-ms``
  (2) ms on a raw asyncpg connection (it stores no results and sends no notification on
  completion; the sleep adds about 1 ms on average).
- one-at-a-time: the same create-then-await loop, ``--single`` (500) times, as runs/s.
- jobsd only, ``--backends`` (default ``postgresql,mariadb,sqlite``): on MariaDB and SQLite
  the burn-down, round trip and one-at-a-time as above (counting with SQLAlchemy on a
  separate engine); on PostgreSQL the cross-instance start latency: instance A
  (``workers=0``) creates, instance B (``workers=10, poll_interval=1``, its own engine, same
  process) runs; ``--latency-samples`` (200) runs after 20 of warm-up, from
  ``create_run().run()`` returning (and, second figure, from the call) to the job starting;
  and the cross-instance round trip (A creates and ``wait_for_run``s a run B executes).

Ratios are jobsd/peer: above 1 means jobsd is faster for rates, below 1 means jobsd is faster
for latencies. The ratio printed is that of the medians; the range is that of the per-round
ratios (the two libraries of a round ran minutes apart at most, under the same load).
Then issue #14's targets are checked against the medians (cross-instance start: from the
call, as ``throughput.py`` measures it). ``--json FILE`` writes the settings, versions, every
round (with the latency samples) and the summary.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from jobsd_async import Job, JobsD

BATCH_ENQUEUE = 1000
BURN_POLL = 0.02
LATENCY_WARMUP = 20

LIBS = ("jobsd", "pgqueuer", "procrastinate")
PEER_LIBS = ("pgqueuer", "procrastinate")
BACKENDS = ("postgresql", "mariadb", "sqlite")
NAMES = {"jobsd": "jobsd_async", "pgqueuer": "PgQueuer", "procrastinate": "Procrastinate"}

JOBSD_FINISHED = "SELECT count(*) FROM jobsd_runs WHERE run_completed_at IS NOT NULL"
PGQ_FINISHED = "SELECT count(*) FROM pgqueuer_log WHERE status = 'successful'"
PROC_FINISHED = "SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'"
PROC_JOB_DONE = "SELECT EXISTS (SELECT 1 FROM procrastinate_jobs WHERE id = $1 AND status = 'succeeded')"


@dataclass
class Settings:
    dsn: str
    mariadb_dsn: str
    jobs: int
    procrastinate_jobs: int
    single: int
    round_trips: int
    warmup: int
    latency_samples: int
    repeat: int
    batch_size: int
    pgqueuer_latency_batch_size: int
    concurrency: int
    procrastinate_pool_size: int
    procrastinate_poll_ms: float
    jobsd_workers: int
    timeout: float
    # Whether the jobsd round also burns down procrastinate_jobs (for the ratio at the same N).
    jobsd_small_burn: bool


@dataclass
class Outcome:
    """What one child measured: values by measure key, latency samples (ms), and facts."""

    values: dict[str, float] = field(default_factory=dict)
    samples: dict[str, list[float]] = field(default_factory=dict)
    info: dict[str, str] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Measure keys and how to print them


def burn_key(jobs: int) -> str:
    return f"burn_down_{jobs}"


@dataclass(frozen=True)
class Measure:
    key: str
    label: str
    unit: str
    higher_is_better: bool


def measure_of(key: str) -> Measure:
    if key.startswith("burn_down_"):
        return Measure(key, f"burn-down, {int(key.rsplit('_', 1)[1]):,} jobs", "jobs/s", True)
    labels = {
        "round_trip_p50_ms": "create -> result p50",
        "round_trip_p99_ms": "create -> result p99",
        "one_at_a_time": "one-at-a-time, awaited",
        "cross_start_p50_ms": "cross-instance start p50 (from return)",
        "cross_start_p99_ms": "cross-instance start p99 (from return)",
        "cross_start_call_p50_ms": "cross-instance start p50 (from call)",
        "cross_start_call_p99_ms": "cross-instance start p99 (from call)",
        "cross_round_trip_p50_ms": "cross-instance create -> result p50",
        "cross_round_trip_p99_ms": "cross-instance create -> result p99",
    }
    if key.endswith("_ms"):
        return Measure(key, labels[key], "ms", False)
    return Measure(key, labels[key], "runs/s", True)


def measure_order(key: str) -> tuple[int, int, str]:
    if key.startswith("burn_down_"):
        return (0, -int(key.rsplit("_", 1)[1]), key)
    order = [
        "round_trip_p50_ms",
        "round_trip_p99_ms",
        "one_at_a_time",
        "cross_start_p50_ms",
        "cross_start_p99_ms",
        "cross_start_call_p50_ms",
        "cross_start_call_p99_ms",
        "cross_round_trip_p50_ms",
        "cross_round_trip_p99_ms",
    ]
    return (1, order.index(key) if key in order else len(order), key)


def percentiles(samples: list[float]) -> tuple[float, float]:
    """p50 and p99 (inclusive method: interpolated between the samples)."""
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return cuts[49], cuts[98]


# --------------------------------------------------------------------------------------------
# Scratch databases (children)


def with_database(dsn: str, name: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{name}"))


def with_scheme(dsn: str, scheme: str) -> str:
    return urlunsplit(urlsplit(dsn)._replace(scheme=scheme))


@contextlib.asynccontextmanager
async def scratch_database(admin_dsn: str) -> AsyncIterator[str]:
    """Create ``peers_<random>`` on PostgreSQL, checkpoint, yield its DSN, drop it afterwards."""
    import asyncpg

    name = f"peers_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        # Write out the dirty buffers of whatever ran before, so this round does not pay for them.
        with contextlib.suppress(asyncpg.InsufficientPrivilegeError):
            await admin.execute("CHECKPOINT")
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


def mariadb_scheme(admin_dsn: str) -> str:
    """The SQLAlchemy scheme jobsd uses on MariaDB: the admin DSN's, if it names a driver
    (``mysql+asyncmy://...``), else aiomysql's."""
    scheme = urlsplit(admin_dsn).scheme
    return scheme if "+" in scheme else "mysql+aiomysql"


@contextlib.asynccontextmanager
async def scratch_mariadb(admin_dsn: str) -> AsyncIterator[str]:
    """Create ``peers_<random>`` on MariaDB, yield its SQLAlchemy URL, drop it afterwards."""
    import aiomysql

    parts = urlsplit(admin_dsn)
    params: dict[str, Any] = {
        "host": parts.hostname or "127.0.0.1",
        "port": parts.port or 3306,
        "user": parts.username or "root",
        "password": parts.password or "",
        "db": parts.path.lstrip("/") or None,
    }
    name = f"peers_{uuid.uuid4().hex[:12]}"

    async def admin(statement: str) -> None:
        conn = await aiomysql.connect(**params)
        try:
            async with conn.cursor() as cur:
                await cur.execute(statement)
        finally:
            conn.close()

    await admin(f"CREATE DATABASE `{name}`")
    try:
        yield with_scheme(with_database(admin_dsn, name), mariadb_scheme(admin_dsn))
    finally:
        await admin(f"DROP DATABASE IF EXISTS `{name}`")


# --------------------------------------------------------------------------------------------
# Timing helpers (children)

Count = Callable[[], Awaitable[int]]


def check_alive(worker: asyncio.Task[Any] | None) -> None:
    if worker is not None and worker.done() and not worker.cancelled() and worker.exception():
        raise RuntimeError(f"worker stopped early: {worker.exception()!r}")


async def wait_for_count(count: Count, target: int, worker: asyncio.Task[Any] | None, timeout: float) -> None:
    """Poll ``count`` until it reaches ``target``; fail fast if the worker failed.

    A worker that returns normally (PgQueuer's drain mode) flushes its log on the way out, so
    the count is given two more polls to arrive.
    """
    deadline = time.perf_counter() + timeout
    grace = 2
    while (done := await count()) < target:
        check_alive(worker)
        if worker is not None and worker.done():
            grace -= 1
            if grace < 0:
                raise RuntimeError(f"worker returned with {done} of {target} jobs recorded finished")
        if time.perf_counter() > deadline:
            raise TimeoutError(f"{done} of {target} jobs finished after {timeout}s")
        await asyncio.sleep(BURN_POLL)


async def awaited_runs(
    once: Callable[[], Awaitable[None]],
    settings: Settings,
    out: Outcome,
    worker: asyncio.Task[Any] | None = None,
) -> None:
    """Round trips (each timed, after warm-up), then the one-at-a-time rate, into ``out``."""
    if settings.round_trips:
        samples: list[float] = []
        async with asyncio.timeout(settings.timeout):
            for _ in range(settings.warmup):
                check_alive(worker)
                await once()
            for _ in range(settings.round_trips):
                check_alive(worker)
                began = time.perf_counter()
                await once()
                samples.append((time.perf_counter() - began) * 1000)
        out.samples["round_trip_ms"] = samples
        out.values["round_trip_p50_ms"], out.values["round_trip_p99_ms"] = percentiles(samples)
    if settings.single:
        async with asyncio.timeout(settings.timeout):
            began = time.perf_counter()
            for _ in range(settings.single):
                await once()
            out.values["one_at_a_time"] = settings.single / (time.perf_counter() - began)
        check_alive(worker)


def package_versions(*names: str) -> dict[str, str]:
    found = {}
    for name in names:
        with contextlib.suppress(PackageNotFoundError):
            found[name] = version(name)
    return found


async def postgres_version(conn: Any) -> str:
    return str(await conn.fetchval("SHOW server_version"))


# --------------------------------------------------------------------------------------------
# jobsd_async (children, in the project's venv)


async def noop() -> None:
    return None


def jobsd_instance(engine: AsyncEngine, **options: Any) -> tuple[JobsD, Job[[], None]]:
    from jobsd_async import JobsD

    jd = JobsD(engine, **options)
    return jd, jd.register_job("noop", noop)


def jobsd_engine(url: str) -> AsyncEngine:
    from sqlalchemy.ext.asyncio import create_async_engine

    if url.startswith("sqlite"):
        return create_async_engine(url)
    return create_async_engine(url, pool_size=20, max_overflow=20)


async def jobsd_enqueue(engine: AsyncEngine, jobs: int) -> None:
    producer, _ = jobsd_instance(engine, workers=0)
    async with producer:
        for start in range(0, jobs, BATCH_ENQUEUE):
            await producer.create_runs("noop", [() for _ in range(min(BATCH_ENQUEUE, jobs - start))])


async def jobsd_measure(
    engine: AsyncEngine, count: Count, jobs: int, settings: Settings, out: Outcome, *, awaited: bool
) -> None:
    """Burn down ``jobs`` runs on one instance; then, on it, the awaited round trips."""
    from jobsd_async import RunStatus

    await jobsd_enqueue(engine, jobs)
    jd, job = jobsd_instance(engine, workers=settings.jobsd_workers)
    began = time.perf_counter()
    async with jd:
        await wait_for_count(count, jobs, None, settings.timeout)
        out.values[burn_key(jobs)] = jobs / (time.perf_counter() - began)
        if awaited:

            async def once() -> None:
                run_id = await job.create_run().run()
                state = await jd.wait_for_run(run_id)
                if state.status is not RunStatus.SUCCEEDED:
                    raise RuntimeError(f"run {run_id} ended {state.status}")

            await awaited_runs(once, settings, out)


def jobsd_info() -> dict[str, str]:
    import jobsd_async

    info = {"jobsd_async_file": str(Path(jobsd_async.__file__).resolve())}
    info.update(package_versions("sqlalchemy", "asyncpg", "aiomysql", "asyncmy", "aiosqlite", "msgspec"))
    return info


async def child_jobsd(settings: Settings) -> Outcome:
    """jobsd_async on PostgreSQL, side by side with the peers."""
    import asyncpg

    out = Outcome(info=jobsd_info())
    async with scratch_database(settings.dsn) as dsn:
        poll = await asyncpg.connect(dsn)
        engine = jobsd_engine(with_scheme(dsn, "postgresql+asyncpg"))
        try:
            out.info["postgresql"] = await postgres_version(poll)
            await jobsd_measure(
                engine, lambda: poll.fetchval(JOBSD_FINISHED), settings.jobs, settings, out, awaited=True
            )
        finally:
            await engine.dispose()
            await poll.close()
    if settings.jobsd_small_burn:
        async with scratch_database(settings.dsn) as dsn:
            poll = await asyncpg.connect(dsn)
            engine = jobsd_engine(with_scheme(dsn, "postgresql+asyncpg"))
            try:
                await jobsd_measure(
                    engine,
                    lambda: poll.fetchval(JOBSD_FINISHED),
                    settings.procrastinate_jobs,
                    settings,
                    out,
                    awaited=False,
                )
            finally:
                await engine.dispose()
                await poll.close()
    return out


@contextlib.asynccontextmanager
async def jobsd_finished_counter(url: str) -> AsyncIterator[tuple[AsyncEngine, Count]]:
    """An engine of its own on ``url`` (for other statements too), and a count of the finished
    runs through it: a connection (so a transaction, so a snapshot) per poll."""
    from sqlalchemy import text

    counter = jobsd_engine(url)

    async def count() -> int:
        async with counter.connect() as conn:
            return int((await conn.execute(text(JOBSD_FINISHED))).scalar_one())

    try:
        yield counter, count
    finally:
        await counter.dispose()


async def jobsd_other_backend(url: str, settings: Settings, out: Outcome) -> None:
    from sqlalchemy import text

    engine = jobsd_engine(url)
    try:
        async with jobsd_finished_counter(url) as (counter, count):
            await jobsd_measure(engine, count, settings.jobs, settings, out, awaited=True)
            async with counter.connect() as conn:
                out.info["server"] = str((await conn.execute(text(version_query(url)))).scalar_one())
            out.info["driver"] = engine.dialect.driver
    finally:
        await engine.dispose()


def version_query(url: str) -> str:
    return "SELECT sqlite_version()" if url.startswith("sqlite") else "SELECT version()"


async def child_jobsd_mariadb(settings: Settings) -> Outcome:
    out = Outcome(info=jobsd_info())
    async with scratch_mariadb(settings.mariadb_dsn) as url:
        await jobsd_other_backend(url, settings, out)
    return out


async def child_jobsd_sqlite(settings: Settings) -> Outcome:
    out = Outcome(info=jobsd_info())
    with tempfile.TemporaryDirectory(prefix="peers_") as tmp:
        await jobsd_other_backend(f"sqlite+aiosqlite:///{tmp}/jobsd.db", settings, out)
    return out


async def child_jobsd_postgresql(settings: Settings) -> Outcome:
    """Cross-instance start latency and round trip: A creates, B (own engine) executes."""
    from jobsd_async import JobsD, RunStatus

    out = Outcome(info=jobsd_info())
    async with scratch_database(settings.dsn) as dsn:
        url = with_scheme(dsn, "postgresql+asyncpg")
        engine_a, engine_b = jobsd_engine(url), jobsd_engine(url)
        try:
            started = asyncio.Event()
            started_at = 0.0
            worker = JobsD(engine_b, workers=10, poll_interval=1.0)

            @worker.job(name="noop")
            async def stamp() -> None:
                nonlocal started_at
                started_at = time.perf_counter()
                started.set()

            producer, job = jobsd_instance(engine_a, workers=0)
            from_return: list[float] = []
            from_call: list[float] = []
            trips: list[float] = []
            async with worker, producer, asyncio.timeout(settings.timeout):
                for index in range(LATENCY_WARMUP + settings.latency_samples):
                    started.clear()
                    called = time.perf_counter()
                    await job.create_run().run()
                    returned = time.perf_counter()
                    await started.wait()
                    if index >= LATENCY_WARMUP:
                        from_return.append((started_at - returned) * 1000)
                        from_call.append((started_at - called) * 1000)
                    await asyncio.sleep(0.005)
                for index in range(LATENCY_WARMUP + settings.latency_samples):
                    called = time.perf_counter()
                    state = await producer.wait_for_run(await job.create_run().run())
                    if index >= LATENCY_WARMUP:
                        trips.append((time.perf_counter() - called) * 1000)
                    if state.status is not RunStatus.SUCCEEDED:
                        raise RuntimeError(f"run {state.run_id} ended {state.status}")
            for key, samples in (
                ("cross_start", from_return),
                ("cross_start_call", from_call),
                ("cross_round_trip", trips),
            ):
                out.samples[f"{key}_ms"] = samples
                out.values[f"{key}_p50_ms"], out.values[f"{key}_p99_ms"] = percentiles(samples)
        finally:
            await engine_a.dispose()
            await engine_b.dispose()
    return out


# --------------------------------------------------------------------------------------------
# PgQueuer and Procrastinate (children, in the peers venv)


async def child_pgqueuer(settings: Settings) -> Outcome:
    import asyncpg
    from pgqueuer.core.completion import CompletionWatcher
    from pgqueuer.db import AsyncpgDriver
    from pgqueuer.models import Job as PgqJob
    from pgqueuer.qm import QueueManager
    from pgqueuer.queries import Queries
    from pgqueuer.types import QueueExecutionMode

    out = Outcome(info=package_versions("pgqueuer", "asyncpg"))
    jobs = settings.jobs

    def manager(conn: Any) -> Any:
        qm = QueueManager(Queries(AsyncpgDriver(conn)))

        @qm.entrypoint("noop")
        async def noop(job: PgqJob) -> None:
            return None

        return qm

    async def stop(qm: Any, worker: asyncio.Task[None]) -> None:
        qm.shutdown.set()
        await asyncio.wait_for(worker, 30)

    async with scratch_database(settings.dsn) as dsn:
        conns = [await asyncpg.connect(dsn) for _ in range(4)]
        producer_conn, worker_conn, watch_conn, poll = conns
        try:
            out.info["postgresql"] = await postgres_version(poll)
            producer = Queries(AsyncpgDriver(producer_conn))
            await producer.install()
            for start in range(0, jobs, BATCH_ENQUEUE):
                n = min(BATCH_ENQUEUE, jobs - start)
                await producer.enqueue(["noop"] * n, [None] * n, [0] * n)

            qm = manager(worker_conn)
            began = time.perf_counter()
            worker = asyncio.create_task(
                qm.run(batch_size=settings.batch_size, mode=QueueExecutionMode.drain)
            )
            try:
                await wait_for_count(lambda: poll.fetchval(PGQ_FINISHED), jobs, worker, settings.timeout)
                out.values[burn_key(jobs)] = jobs / (time.perf_counter() - began)
            finally:
                await stop(qm, worker)

            if settings.round_trips or settings.single:
                qm = manager(worker_conn)
                worker = asyncio.create_task(qm.run(batch_size=settings.pgqueuer_latency_batch_size))
                watch = AsyncpgDriver(watch_conn)
                try:
                    async with CompletionWatcher(
                        watch, queries=Queries(watch), debounce=timedelta(0)
                    ) as watcher:

                        async def once() -> None:
                            job_id = (await producer.enqueue("noop", None))[0]
                            status = await watcher.wait_for(job_id)
                            if status != "successful":
                                raise RuntimeError(f"job {job_id} ended {status}")

                        await awaited_runs(once, settings, out, worker)
                finally:
                    await stop(qm, worker)
        finally:
            for conn in conns:
                await conn.close()
    return out


async def child_procrastinate(settings: Settings) -> Outcome:
    import asyncpg
    from procrastinate import App, PsycopgConnector

    out = Outcome(info=package_versions("procrastinate", "psycopg", "asyncpg"))
    jobs = settings.procrastinate_jobs
    pool_size = settings.procrastinate_pool_size
    pause = settings.procrastinate_poll_ms / 1000

    async with scratch_database(settings.dsn) as dsn:
        app = App(connector=PsycopgConnector(conninfo=dsn, min_size=pool_size, max_size=pool_size))

        @app.task(name="noop")
        async def noop() -> None:
            return None

        poll = await asyncpg.connect(dsn)
        try:
            out.info["postgresql"] = await postgres_version(poll)
            async with app.open_async():
                await app.schema_manager.apply_schema_async()
                for start in range(0, jobs, BATCH_ENQUEUE):
                    await noop.batch_defer_async(*({} for _ in range(min(BATCH_ENQUEUE, jobs - start))))

                began = time.perf_counter()
                worker = asyncio.create_task(
                    app.run_worker_async(concurrency=settings.concurrency, install_signal_handlers=False)
                )
                try:
                    await wait_for_count(lambda: poll.fetchval(PROC_FINISHED), jobs, worker, settings.timeout)
                    out.values[burn_key(jobs)] = jobs / (time.perf_counter() - began)

                    async def once() -> None:
                        job_id = await noop.defer_async()
                        while not await poll.fetchval(PROC_JOB_DONE, job_id):  # noqa: ASYNC110
                            await asyncio.sleep(pause)

                    await awaited_runs(once, settings, out, worker)
                finally:
                    worker.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await asyncio.wait_for(worker, 30)
        finally:
            await poll.close()
    return out


CHILDREN: dict[str, Callable[[Settings], Awaitable[Outcome]]] = {
    "jobsd": child_jobsd,
    "pgqueuer": child_pgqueuer,
    "procrastinate": child_procrastinate,
    "jobsd-postgresql": child_jobsd_postgresql,
    "jobsd-mariadb": child_jobsd_mariadb,
    "jobsd-sqlite": child_jobsd_sqlite,
}


def run_child(task: str, io_dir: Path) -> None:
    settings = Settings(**json.loads((io_dir / "settings.json").read_text()))
    logging.basicConfig(level=logging.WARNING)
    # Its "App is instantiated in the main Python module" hint is moot: the worker runs in-process.
    logging.getLogger("procrastinate.blueprints").setLevel(logging.ERROR)

    async def main() -> Outcome:
        # SIGTERM cancels like Ctrl-C does, so the scratch databases are dropped either way;
        # only once, so that a second signal does not cancel the dropping.
        main_task = asyncio.current_task()
        assert main_task is not None

        def cancel() -> None:
            if not main_task.cancelling():
                main_task.cancel()

        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, cancel)
        return await CHILDREN[task](settings)

    try:
        outcome = asyncio.run(main())
    except (KeyboardInterrupt, asyncio.CancelledError):
        raise SystemExit("interrupted (scratch databases dropped)") from None
    (io_dir / "outcome.json").write_text(json.dumps(asdict(outcome)))


# --------------------------------------------------------------------------------------------
# The orchestrator


@dataclass
class Interpreters:
    jobsd_python: str
    jobsd_root: Path
    peers_python: str


def git(root: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=False)
    return done.stdout.strip()


def default_jobsd_python(root: Path) -> str:
    if os.environ.get("JOBSD_PYTHON"):
        return os.environ["JOBSD_PYTHON"]
    candidates = [root / ".venv/bin/python"]
    common = git(root, "rev-parse", "--path-format=absolute", "--git-common-dir")
    if common:
        candidates.append(Path(common).parent / ".venv/bin/python")
    for candidate in candidates:
        if candidate.exists():
            return str(candidate)
    raise SystemExit("no venv with jobsd_async's dependencies found: pass --jobsd-python")


def default_peers_python() -> str:
    import importlib.util

    if importlib.util.find_spec("pgqueuer") and importlib.util.find_spec("procrastinate"):
        return sys.executable
    return "/tmp/peers-venv/bin/python"


def load() -> str:
    """1/5/15-minute load averages: a busy machine (another benchmark, a test run) skews results."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


class Terminated(Exception):
    """This process got SIGTERM."""


def terminated(signum: int, frame: object) -> None:
    raise Terminated


def spawn(task: str, settings: Settings, interpreters: Interpreters) -> Outcome:
    """Run one child and return what it measured (raises if it failed)."""
    jobsd = task.startswith("jobsd")
    python = interpreters.jobsd_python if jobsd else interpreters.peers_python
    env = dict(os.environ)
    if jobsd:
        root = str(interpreters.jobsd_root)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    with tempfile.TemporaryDirectory(prefix="peers_io_") as tmp:
        io_dir = Path(tmp)
        (io_dir / "settings.json").write_text(json.dumps(asdict(settings)))
        proc = subprocess.Popen([python, __file__, "--child", task, "--child-io", str(io_dir)], env=env)
        try:
            code = proc.wait()
        except BaseException as exc:
            # Ctrl-C reached the child too (same process group); anything else is passed on as
            # SIGTERM. Either way the child drops its scratch databases before it exits.
            if not isinstance(exc, KeyboardInterrupt) and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(60)
            raise
        if code != 0:
            raise RuntimeError(f"{task} child failed (exit status {code})")
        outcome = Outcome(**json.loads((io_dir / "outcome.json").read_text()))
    if jobsd:
        expected = (interpreters.jobsd_root / "jobsd_async").resolve()
        if Path(outcome.info["jobsd_async_file"]).parent != expected:
            raise RuntimeError(f"jobsd_async came from {outcome.info['jobsd_async_file']}, not {expected}")
    return outcome


@dataclass
class Series:
    """One library (or jobsd on one backend) over the rounds."""

    rounds: list[Outcome] = field(default_factory=list)

    def values(self, key: str) -> list[float]:
        return [r.values[key] for r in self.rounds if key in r.values]

    def measures(self) -> list[str]:
        keys = {k for r in self.rounds for k in r.values}
        return sorted(keys, key=measure_order)


def fmt_value(value: float, unit: str) -> str:
    if unit == "ms":
        return f"{value:.2f}" if value < 10 else f"{value:.1f}"
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def cell(values: list[float], unit: str) -> str:
    if not values:
        return "-"
    median = fmt_value(statistics.median(values), unit)
    if len(values) == 1:
        return median
    return f"{median} ({fmt_value(min(values), unit)}-{fmt_value(max(values), unit)})"


def table(title: str, columns: dict[str, Series]) -> list[str]:
    keys = sorted({k for s in columns.values() for k in s.measures()}, key=measure_order)
    rows = [[f"{measure_of(k).label} ({measure_of(k).unit})"] for k in keys]
    for series in columns.values():
        for row, key in zip(rows, keys, strict=True):
            row.append(cell(series.values(key), measure_of(key).unit))
    header = [title, *columns]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return lines


@dataclass
class Ratio:
    measure: str
    median_ratio: float
    round_ratios: list[float]
    higher_is_better: bool


def ratios(ours: Series, theirs: Series) -> list[Ratio]:
    out = []
    for key in sorted(set(ours.measures()) & set(theirs.measures()), key=measure_order):
        a, b = ours.values(key), theirs.values(key)
        per_round = [
            x.values[key] / y.values[key]
            for x, y in zip(ours.rounds, theirs.rounds, strict=False)
            if key in x.values and key in y.values
        ]
        out.append(
            Ratio(
                key, statistics.median(a) / statistics.median(b), per_round, measure_of(key).higher_is_better
            )
        )
    return out


def ratio_lines(peer: str, found: list[Ratio]) -> list[str]:
    lines = [f"jobsd/{NAMES[peer]}:"]
    for r in found:
        spread = (
            f" (rounds {min(r.round_ratios):.2f}-{max(r.round_ratios):.2f})"
            if len(r.round_ratios) > 1
            else ""
        )
        better = "higher" if r.higher_is_better else "lower"
        lines.append(f"  {measure_of(r.measure).label}: {r.median_ratio:.2f}x{spread}  [{better} is better]")
    return lines


def target_lines(series: dict[str, Series], settings: Settings) -> list[str]:
    """Issue #14's targets that this run can check (medians)."""

    def med(task: str, key: str) -> float | None:
        values = series[task].values(key) if task in series else []
        return statistics.median(values) if values else None

    checks: list[tuple[str, float | None, float, bool]] = []
    burn = burn_key(settings.jobs)
    jd, pgq = med("jobsd", burn), med("pgqueuer", burn)
    checks.append(("PostgreSQL burn-down >= 1.3x PgQueuer", jd / pgq if jd and pgq else None, 1.3, True))
    checks.append(("create -> result p50 <= 3 ms (PostgreSQL)", med("jobsd", "round_trip_p50_ms"), 3, False))
    checks.append(
        ("create -> result p99 <= 10 ms (PostgreSQL)", med("jobsd", "round_trip_p99_ms"), 10, False)
    )
    for backend in ("mariadb", "sqlite"):
        value = med(f"jobsd-{backend}", "round_trip_p50_ms")
        checks.append((f"create -> result p50 <= 5 ms ({backend})", value, 5, False))
    jd1, proc1 = med("jobsd", "one_at_a_time"), med("procrastinate", "one_at_a_time")
    checks.append(("one-at-a-time >= 2x Procrastinate", jd1 / proc1 if jd1 and proc1 else None, 2, True))
    # From the call, as throughput.py and the baseline (2.6-3.2 ms) measure it.
    start = med("jobsd-postgresql", "cross_start_call_p50_ms")
    checks.append(("cross-instance start p50 <= 3 ms (from the call)", start, 3, False))
    for backend in ("mariadb", "sqlite"):
        other = med(f"jobsd-{backend}", burn)
        checks.append(
            (f"{backend} burn-down >= 0.6x PostgreSQL", other / jd if other and jd else None, 0.6, True)
        )
    lines = ["issue #14 targets (medians of this run):"]
    for label, value, bound, at_least in checks:
        if value is None:
            continue
        met = value >= bound if at_least else value <= bound
        lines.append(f"  {'met    ' if met else 'NOT met'}  {label}: {value:.2f}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--only", help="comma-separated libraries among jobsd,pgqueuer,procrastinate (default: all)"
    )
    parser.add_argument(
        "--peers", nargs="+", choices=PEER_LIBS, help="older spelling of --only, peers only (no jobsd)"
    )
    parser.add_argument(
        "--backends",
        default=",".join(BACKENDS),
        help="jobsd-only measures: comma-separated among postgresql (cross-instance), mariadb, sqlite; "
        "'' for none",
    )
    parser.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/test", help="admin DSN")
    parser.add_argument(
        "--mariadb-dsn",
        default="mysql://root@127.0.0.1:3306/test",
        help="admin DSN; the driver it names (mysql+asyncmy://...) is jobsd's, aiomysql if none",
    )
    parser.add_argument("--jobs", type=int, default=20000, help="burn-down jobs (jobsd, PgQueuer)")
    parser.add_argument("--procrastinate-jobs", type=int, default=2000, help="burn-down jobs (Procrastinate)")
    parser.add_argument("--single", type=int, default=500, help="one-at-a-time runs per round (0 skips)")
    parser.add_argument("--round-trips", type=int, default=500, help="timed round trips per round (0 skips)")
    parser.add_argument("--warmup", type=int, default=50, help="round trips before the timed ones")
    parser.add_argument("--latency-samples", type=int, default=200, help="cross-instance samples per round")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=100, help="PgQueuer batch_size (burn-down)")
    parser.add_argument(
        "--pgqueuer-latency-batch-size", type=int, default=1, help="PgQueuer batch_size (round trips)"
    )
    parser.add_argument("--concurrency", type=int, default=100, help="Procrastinate worker concurrency")
    parser.add_argument("--procrastinate-pool-size", type=int, default=10, help="psycopg pool min=max size")
    parser.add_argument("--procrastinate-poll-ms", type=float, default=2, help="completion polling (ms)")
    parser.add_argument("--jobsd-workers", type=int, default=100, help="jobsd workers (burn-down instance)")
    parser.add_argument("--timeout", type=float, default=300, help="seconds allowed per measurement")
    parser.add_argument("--json", type=Path, help="write settings, versions, rounds and summary here")
    root = Path(__file__).resolve().parent.parent
    parser.add_argument("--jobsd-root", type=Path, default=root, help="checkout whose jobsd_async runs")
    parser.add_argument("--jobsd-python", help="interpreter for jobsd (a venv with its dependencies)")
    parser.add_argument("--peers-python", help="interpreter with pgqueuer and procrastinate")
    parser.add_argument("--child", choices=list(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--child-io", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_child(args.child, args.child_io)
        return

    if args.peers:
        if args.only is not None:
            parser.error("--peers and --only do not combine")
        libs = [lib for lib in PEER_LIBS if lib in args.peers]
    else:
        libs = [lib for lib in (args.only or ",".join(LIBS)).split(",") if lib]
        if unknown := set(libs) - set(LIBS):
            parser.error(f"unknown libraries: {', '.join(sorted(unknown))}")
    chosen = {b for b in args.backends.split(",") if b} if "jobsd" in libs else set()
    if unknown := chosen - set(BACKENDS):
        parser.error(f"unknown backends: {', '.join(sorted(unknown))}")
    backends = [b for b in BACKENDS if b in chosen]
    settings = Settings(
        dsn=args.dsn,
        mariadb_dsn=args.mariadb_dsn,
        jobs=args.jobs,
        procrastinate_jobs=args.procrastinate_jobs,
        single=args.single,
        round_trips=args.round_trips,
        warmup=args.warmup,
        latency_samples=args.latency_samples,
        repeat=args.repeat,
        batch_size=args.batch_size,
        pgqueuer_latency_batch_size=args.pgqueuer_latency_batch_size,
        concurrency=args.concurrency,
        procrastinate_pool_size=args.procrastinate_pool_size,
        procrastinate_poll_ms=args.procrastinate_poll_ms,
        jobsd_workers=args.jobsd_workers,
        timeout=args.timeout,
        jobsd_small_burn="procrastinate" in libs and args.procrastinate_jobs != args.jobs,
    )
    jobsd_root = args.jobsd_root.resolve()
    interpreters = Interpreters(
        jobsd_python=args.jobsd_python or (default_jobsd_python(jobsd_root) if "jobsd" in libs else ""),
        jobsd_root=jobsd_root,
        peers_python=args.peers_python or default_peers_python(),
    )
    signal.signal(signal.SIGTERM, terminated)

    meta: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": sys.argv,
        "host": platform.node(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
        "load_before": load(),
        "settings": asdict(settings),
        "libraries": libs,
        "backends": backends,
        "jobsd_root": str(jobsd_root),
        "python": {"jobsd": interpreters.jobsd_python, "peers": interpreters.peers_python},
    }
    if "jobsd" in libs:
        dirty = git(jobsd_root, "status", "--porcelain", "--", "jobsd_async")
        meta["jobsd_commit"] = git(jobsd_root, "rev-parse", "HEAD") + (
            " (jobsd_async/ modified)" if dirty else ""
        )
        print(f"jobsd_async from {jobsd_root} at {meta['jobsd_commit']}", flush=True)
    print(f"load average before: {meta['load_before']} ({os.cpu_count()} CPUs)", flush=True)

    tasks = [*libs, *(f"jobsd-{b}" for b in backends)]
    series = {task: Series() for task in tasks}
    began = time.perf_counter()
    try:
        for index in range(settings.repeat):
            # Rotate the side-by-side order, so that no library always follows the same one.
            shift = index % len(libs)
            order = [*libs[shift:], *libs[:shift], *(f"jobsd-{b}" for b in backends)]
            print(f"round {index + 1} (load {load()}):", flush=True)
            for task in order:
                outcome = spawn(task, settings, interpreters)
                series[task].rounds.append(outcome)
                shown = ", ".join(
                    f"{measure_of(k).label} {fmt_value(v, measure_of(k).unit)} {measure_of(k).unit}"
                    for k, v in sorted(outcome.values.items(), key=lambda kv: measure_order(kv[0]))
                )
                print(f"  {task}: {shown}", flush=True)
    finally:
        meta["seconds"] = round(time.perf_counter() - began)
        meta["load_after"] = load()
        summary = report(series, libs, backends, settings)
        print(f"total {meta['seconds']} s; load average after: {meta['load_after']}")
        if args.json:
            write_json(args.json, meta, series, summary)
            print(f"wrote {args.json}")


def describe(series: dict[str, Series], settings: Settings) -> list[str]:
    """How each library was set up, with the versions its child reported."""

    def info(task: str) -> dict[str, str]:
        return series[task].rounds[0].info if task in series and series[task].rounds else {}

    def versions(found: dict[str, str], *names: str) -> str:
        return ", ".join(f"{name} {found[name]}" for name in names if name in found)

    lines = []
    if jd := info("jobsd") or info("jobsd-mariadb") or info("jobsd-sqlite") or info("jobsd-postgresql"):
        lines.append(
            f"  jobsd_async from {Path(jd['jobsd_async_file']).parent} "
            f"({versions(jd, 'sqlalchemy', 'asyncpg', 'aiomysql', 'asyncmy', 'aiosqlite')}): one instance, "
            f"workers={settings.jobsd_workers}, defaults otherwise; completion by wait_for_run"
        )
    if pgq := info("pgqueuer"):
        lines.append(
            f"  PgQueuer {pgq.get('pgqueuer')}: burn-down batch_size={settings.batch_size}, drain mode, "
            f"one asyncpg connection; round trips batch_size={settings.pgqueuer_latency_batch_size}, "
            "CompletionWatcher(debounce=0)"
        )
    if proc := info("procrastinate"):
        lines.append(
            f"  Procrastinate {proc.get('procrastinate')} (psycopg {proc.get('psycopg')}): "
            f"concurrency={settings.concurrency}, pool {settings.procrastinate_pool_size}, listen_notify; "
            f"completion polled every {settings.procrastinate_poll_ms:g} ms"
        )
    servers = [
        f"PostgreSQL {found['postgresql']}"
        for found in (info("jobsd"), info("pgqueuer"), info("procrastinate"), info("jobsd-postgresql"))
        if "postgresql" in found
    ][:1]
    servers += [
        f"{found['server']} through {found.get('driver', '?')}"
        for found in (info("jobsd-mariadb"),)
        if "server" in found
    ]
    servers += [f"SQLite {found['server']}" for found in (info("jobsd-sqlite"),) if "server" in found]
    if servers:
        lines.append(f"  servers: {'; '.join(servers)}")
    return ["set-ups:", *lines] if lines else []


def report(
    series: dict[str, Series], libs: list[str], backends: list[str], settings: Settings
) -> dict[str, Any]:
    """Print the set-ups, tables, ratios and targets; return the numbers for the JSON file."""
    if setups := describe(series, settings):
        print("\n" + "\n".join(setups))
    side = {NAMES[lib]: series[lib] for lib in libs if series[lib].rounds}
    if side:
        print("\nPostgreSQL, side by side: median (range) over rounds")
        print("\n".join(table("measure", side)))
    found: dict[str, list[Ratio]] = {}
    if "jobsd" in libs and series["jobsd"].rounds:
        for peer in PEER_LIBS:
            if peer in libs and series[peer].rounds:
                found[peer] = ratios(series["jobsd"], series[peer])
                print("\n" + "\n".join(ratio_lines(peer, found[peer])))
    only: dict[str, Series] = {}
    for backend in backends:
        if backend == "postgresql":
            merged = Series(
                [
                    Outcome(values={**a.values, **b.values})
                    for a, b in zip(series["jobsd"].rounds, series["jobsd-postgresql"].rounds, strict=False)
                ]
            )
            only["postgresql"] = merged
        elif series[f"jobsd-{backend}"].rounds:
            only[backend] = series[f"jobsd-{backend}"]
    if only:
        print("\njobsd_async by backend: median (range) over rounds")
        print("\n".join(table("measure", only)))
    targets = target_lines(series, settings)
    if len(targets) > 1:
        print("\n" + "\n".join(targets))
    summary: dict[str, Any] = {
        task: {
            key: {
                "median": statistics.median(s.values(key)),
                "min": min(s.values(key)),
                "max": max(s.values(key)),
            }
            for key in s.measures()
        }
        for task, s in series.items()
    }
    summary["ratios"] = {f"jobsd/{peer}": [asdict(r) for r in found[peer]] for peer in found}
    summary["targets"] = targets[1:]
    return summary


def write_json(path: Path, meta: dict[str, Any], series: dict[str, Series], summary: dict[str, Any]) -> None:
    data = {
        "meta": meta,
        "rounds": {task: [asdict(r) for r in s.rounds] for task, s in series.items()},
        "summary": summary,
    }
    path.write_text(json.dumps(data, indent=1))


if __name__ == "__main__":
    try:
        main()
    except (KeyboardInterrupt, Terminated):
        raise SystemExit("interrupted (scratch databases dropped)") from None
