"""jobsd_async behind a real PgBouncer in transaction pool mode (PostgreSQL only).

In transaction mode a client connection holds a server connection only for the length of a
transaction, so nothing session-level survives: prepared statements (turned off with
``asyncpg_engine_kwargs()``) and LISTEN.  ``listen=False`` makes the instances poll only;
``listen=<server URL>`` LISTENs on a dedicated connection straight to the server, bypassing
the bouncer, so NOTIFY wake-ups still arrive.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import pytest
from conftest import BACKENDS, drop_tables, fetch_runs
from pgbouncer import PgBouncer, asyncpg_engine_kwargs, running_pgbouncer
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from jobsd_async import JobsD, RunInfo, RunState, RunStatus
from jobsd_async._store._dialect import Dialect

pytestmark = pytest.mark.parametrize("backend", [b for b in BACKENDS if b == "postgresql"])

# Fast settings for these tests; each test may override them.
SETTINGS: dict[str, Any] = {
    "poll_interval": 0.1,
    "heartbeat_interval": 0.5,
    "shutdown_timeout": 2.0,
    "cancel_grace": 0.5,
}

MakeBounced = Callable[..., JobsD]


@pytest.fixture
async def bouncer(engine: AsyncEngine, database_url: str) -> AsyncIterator[PgBouncer]:
    """A PgBouncer in transaction mode in front of the test's server (``engine`` probes it first)."""
    async with running_pgbouncer(database_url) as bouncer:
        yield bouncer


@pytest.fixture
async def bounced_engine(bouncer: PgBouncer) -> AsyncIterator[AsyncEngine]:
    """An engine whose every connection goes through the bouncer."""
    bounced = create_async_engine(bouncer.url(), pool_size=20, max_overflow=20, **asyncpg_engine_kwargs())
    try:
        yield bounced
    finally:
        await bounced.dispose()


@pytest.fixture
async def make_bounced(
    bounced_engine: AsyncEngine, engine: AsyncEngine, table_prefix: str
) -> AsyncIterator[MakeBounced]:
    """Build JobsD instances on the bounced engine; all are downed, then their tables dropped.

    Teardown order: instances down, then (fixture order) the bounced engine disposed, then the
    bouncer stopped; the tables are dropped over the direct ``engine``.
    """
    made: list[JobsD] = []

    def make(**options: Any) -> JobsD:
        jd = JobsD(bounced_engine, table_prefix=table_prefix, **{**SETTINGS, **options})
        made.append(jd)
        return jd

    try:
        yield make
    finally:
        try:
            await asyncio.gather(*(jd.down() for jd in made), return_exceptions=True)
        finally:
            if made:
                await drop_tables(engine, made[0])


class Executions:
    """A job that records which instance executed each row, and how many times."""

    def __init__(self) -> None:
        self.count: Counter[int] = Counter()  # row id -> executions
        self.by: dict[int, int] = {}  # row id -> instance id

    async def work(self, info: RunInfo, n: int) -> int:
        self.count[info.id] += 1
        self.by[info.id] = info.run_started_by
        await asyncio.sleep(0.005)
        return n


async def run_many(instances: Sequence[JobsD], total: int) -> list[RunState]:
    """Create ``total`` runs of ``work``, spread over ``instances`` concurrently; wait for all."""

    async def produce(jd: JobsD, numbers: range) -> list[tuple[int, int]]:
        return [(n, await jd.create_run("work", n).run()) for n in numbers]

    k = len(instances)
    batches = await asyncio.gather(*(produce(jd, range(i, total, k)) for i, jd in enumerate(instances)))
    created = sorted(pair for batch in batches for pair in batch)
    assert len({run_id for _, run_id in created}) == total
    states = []
    for n, run_id in created:  # each waited for on an instance other than its creator
        state = await instances[(n + 1) % k].wait_for_run(run_id, timeout=60)
        assert state.status is RunStatus.SUCCEEDED, (run_id, state.status, state.run_completed_error)
        assert state.result == n
        states.append(state)
    return states


async def assert_each_row_ran_once(jd: JobsD, executions: Executions, total: int) -> None:
    rows = await fetch_runs(jd)
    assert len(rows) == total, "a run took more than one row (a retry or a resurrection)"
    assert sorted(executions.count) == [r["id"] for r in rows], "a row never executed here"
    assert max(executions.count.values()) == 1, "a row executed twice"


async def test_two_polling_instances_through_pgbouncer_run_every_run_exactly_once(
    make_bounced: MakeBounced,
) -> None:
    total = 200
    executions = Executions()
    a, b = make_bounced(listen=False), make_bounced(listen=False)
    for jd in (a, b):
        jd.register_job("work", executions.work)
    async with a, b:
        states = await run_many([a, b], total)
        await assert_each_row_ran_once(a, executions, total)
    assert {s.run_started_by for s in states} == {a.instance_id, b.instance_id}
    assert all(executions.by[s.id] == s.run_started_by for s in states)


async def test_cancel_run_through_pgbouncer_stops_a_run_on_the_other_instance(
    make_bounced: MakeBounced,
) -> None:
    """No LISTEN, so the cancel reaches the owner through its heartbeat's check."""
    owner = make_bounced(listen=False, cancel_grace=5)
    other = make_bounced(listen=False, workers=0)  # producer only: the run can only go to owner
    started = asyncio.Event()
    saw_cancel = asyncio.Event()
    ran_on: list[int] = []

    async def long(info: RunInfo) -> str:
        ran_on.append(info.run_started_by)
        started.set()
        await info.cancel.wait()
        saw_cancel.set()
        return "finished anyway"  # recorded as cancelled whatever it returns

    owner.register_job("long", long)
    other.register_job("long", long)
    async with owner, other:
        run_id = await other.create_run("long").run()
        await asyncio.wait_for(started.wait(), 10)
        assert await other.cancel_run(run_id) is True
        await asyncio.wait_for(saw_cancel.wait(), 10)
        state = await other.wait_for_run(run_id, timeout=10)
        assert await other.cancel_run(run_id) is False  # already finished
        rows = await fetch_runs(other)
    assert ran_on == [owner.instance_id]
    assert state.status is RunStatus.CANCELLED
    assert state.run_completed_error == "job run cancelled"
    assert state.result is None
    assert len(rows) == 1


async def test_listen_on_the_direct_server_wakes_an_instance_behind_pgbouncer(
    make_bounced: MakeBounced, database_url: str, bouncer: PgBouncer
) -> None:
    """The worker polls every 30 s, so only the NOTIFY can start the runs within 10 s.

    Both instances' queries go through the bouncer (the producer's NOTIFY included); only the
    worker's LISTEN connection goes straight to the server.
    """
    executions = Executions()
    producer = make_bounced(workers=0, listen=False, poll_interval=30)  # has the job, never runs it
    worker = make_bounced(listen=database_url, poll_interval=30)
    producer.register_job("work", executions.work)
    worker.register_job("work", executions.work)
    assert producer.engine.url.port == worker.engine.url.port == bouncer.port != make_url(database_url).port
    async with producer, worker:
        states = []
        for n in range(3):  # one wake-up each, one after another
            run_id = await producer.create_run("work", n).run()
            states.append(await producer.wait_for_run(run_id, timeout=10))
        await assert_each_row_ran_once(producer, executions, 3)
    assert [s.status for s in states] == [RunStatus.SUCCEEDED] * 3
    assert [s.result for s in states] == [0, 1, 2]
    assert {s.run_started_by for s in states} == {worker.instance_id}


async def test_listen_through_pgbouncer_still_runs_every_run_exactly_once(make_bounced: MakeBounced) -> None:
    """LISTEN on a transaction-pooled connection is unreliable (PgBouncer may hand the server
    connection to other clients); polling must still get every run done, each once."""
    total = 60
    executions = Executions()
    a, b = make_bounced(listen=True, poll_interval=0.2), make_bounced(listen=True, poll_interval=0.2)
    for jd in (a, b):
        jd.register_job("work", executions.work)
    async with a, b:
        await run_many([a, b], total)
        await assert_each_row_ran_once(a, executions, total)


async def test_only_engines_with_a_statement_cache_skip_begin_and_commit(
    engine: AsyncEngine, database_url: str
) -> None:
    """Reads and one-statement writes run without BEGIN/COMMIT on a plain PostgreSQL engine;
    an engine set up for PgBouncer (no prepared statement cache) keeps its transactions,
    whose statements PgBouncer keeps on one server connection."""
    assert (await Dialect.detect(engine)).autocommit
    bounced_style = create_async_engine(database_url, **asyncpg_engine_kwargs())
    try:
        assert not (await Dialect.detect(bounced_style)).autocommit
    finally:
        await bounced_style.dispose()
