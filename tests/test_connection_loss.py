"""Connection loss anywhere (pooled or LISTEN) is survived without ``pool_pre_ping``.

Unlike ``test_db_faults.py``, which cuts the network in front of the server, these tests
let the server itself end the connections: every connection a test's engine opens is
recorded by its server id in a pool ``connect`` event, and a separate engine terminates
them (``pg_terminate_backend`` on PostgreSQL, ``KILL CONNECTION`` on MariaDB) while jobsd
works on them.  Only connections recorded here are ever killed: other test suites may be
using the same servers.  SQLite has no server connections to kill.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import warnings
from collections import Counter
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from typing import Any

import pytest
from conftest import BACKENDS, drop_tables, eventually
from serverconns import ServerConnections
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from jobsd_async import JobsD, RunInfo, RunState, RunStatus, StoreError
from jobsd_async._listener import Listener

SERVERS = [b for b in BACKENDS if b != "sqlite"]
POSTGRES = [b for b in BACKENDS if b == "postgresql"]

KILL_FOR = 3.0  # seconds the killer runs
KILL_EVERY = 0.3  # seconds between two waves of kills
RUNS = 150
HEARTBEAT = 0.5
FAST: dict[str, Any] = {"heartbeat_interval": HEARTBEAT, "timeout_check": 0.5, "run_timeout": 30}
SLOW_POLL = 30.0  # a run that starts well before this was started by a NOTIFY


async def db_now(engine: AsyncEngine, backend: str) -> datetime:
    """The database clock, as an aware UTC datetime."""
    query = "SELECT now()" if backend == "postgresql" else "SELECT UTC_TIMESTAMP(6)"
    async with engine.connect() as conn:
        value = (await conn.exec_driver_sql(query)).scalar_one()
    assert isinstance(value, datetime)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


async def last_seen(engine: AsyncEngine, jd: JobsD, prefix: str) -> dict[int, datetime]:
    """Each instance's ``last_seen_at`` as its row in ``{prefix}instances`` says."""
    instances = jd.metadata.tables[f"{prefix}instances"]
    async with engine.connect() as conn:
        rows = (await conn.execute(select(instances.c.id, instances.c.last_seen_at))).all()
    return {int(i): seen for i, seen in rows if seen is not None}


async def beating_after(engine: AsyncEngine, jds: list[JobsD], prefix: str, since: datetime) -> None:
    """Fail unless every instance in ``jds`` writes a heartbeat later than ``since``."""
    ids = {jd.instance_id for jd in jds}

    async def all_beat() -> bool:
        seen = await last_seen(engine, jds[0], prefix)
        return all(seen.get(i, since) > since for i in ids)

    await eventually(
        all_beat, timeout=6 * HEARTBEAT + 2, what=f"a heartbeat after {since} from each of {ids}"
    )


async def finished(jd: JobsD, run_id: int, timeout: float) -> RunState:
    """``wait_for_run``, tried again when a read meets a connection the killer closed.

    Without ``pool_pre_ping`` one call per stale pooled connection may fail (documented); the
    disconnect invalidates the pool, so the next call gets a fresh connection.
    """
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        try:
            return await jd.wait_for_run(run_id, timeout=max(0.01, end - loop.time()))
        except StoreError:
            if loop.time() >= end:
                raise
            await asyncio.sleep(0.05)


async def create(job: Any, *args: Any) -> int:
    """Submit a run, again on ``StoreError`` (the killer may have closed the connection)."""
    for _ in range(100):
        try:
            run_id = await job.create_run(*args).run()
            assert isinstance(run_id, int)
            return run_id
        except StoreError:
            await asyncio.sleep(0.05)
    raise AssertionError("a run could not be created in 100 tries")


@pytest.fixture
def killer(backend: str, engine: AsyncEngine) -> ServerConnections:
    """The recorder/killer; ``engine`` (the fixture's) also checks the server is reachable."""
    return ServerConnections(backend, engine)


@pytest.fixture
def errors(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.WARNING, logger="jobsd_async")
    return caplog


def logged_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    """jobsd ERROR records: a loop step failing with something that is not a database error."""
    return [
        f"{r.name}: {r.getMessage()}\n{r.exc_text or ''}"
        for r in caplog.records
        if r.levelno >= logging.ERROR and r.name.startswith("jobsd")
    ]


async def dispose(engine: AsyncEngine) -> None:
    await engine.dispose()
    with warnings.catch_warnings():
        # aiomysql leaves the sockets the server closed for the garbage collector.
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


@pytest.mark.parametrize("backend", SERVERS)
async def test_connections_killed_under_load(
    backend: str,
    database_url: str,
    engine: AsyncEngine,
    table_prefix: str,
    killer: ServerConnections,
    errors: pytest.LogCaptureFixture,
) -> None:
    own = create_async_engine(database_url, pool_size=20, max_overflow=20)  # no pool_pre_ping
    killer.instrument(own)
    pg = backend == "postgresql"

    executed: Counter[int] = Counter()

    async def work(info: RunInfo, n: int) -> int:
        executed[info.id] += 1
        await asyncio.sleep(0.02)
        return n

    remote_ran: list[int] = []

    async def remote(info: RunInfo) -> str:
        remote_ran.append(info.id)
        return "woken"

    # Two instances carry the load; on PostgreSQL a third one, which polls only every
    # 30 s, runs the job "remote" that only a fourth, worker-less instance creates: after
    # the killing, such a run can only start through the third one's (killed) LISTEN.
    a = JobsD(own, table_prefix=table_prefix, poll_interval=0.2, **FAST)
    b = JobsD(own, table_prefix=table_prefix, poll_interval=0.2, **FAST)
    work_a, work_b = a.register_job("work", work), b.register_job("work", work)
    instances = [a, b]
    if pg:
        woken = JobsD(own, table_prefix=table_prefix, poll_interval=SLOW_POLL, **FAST)
        woken.register_job("remote", remote)
        producer = JobsD(own, table_prefix=table_prefix, workers=0, poll_interval=SLOW_POLL, **FAST)
        remote_job = producer.register_job("remote", remote)
        instances += [woken, producer]
    # All four share the engine: one LISTEN connection serves them (a producer without
    # workers listens too, for its waiters).
    listening = 1

    created: list[int] = []

    async def produce() -> None:
        for n in range(RUNS):
            created.append(await create(work_a if n % 2 else work_b, n))
            await asyncio.sleep(0.025)

    try:
        async with AsyncExitStack() as stack:
            for jd in instances:
                await stack.enter_async_context(jd)
            first_listeners: set[int] = set()
            if pg:

                async def all_listening() -> bool:
                    nonlocal first_listeners
                    first_listeners = await killer.listeners()
                    return len(first_listeners) == listening

                await eventually(all_listening, timeout=5, what=f"{listening} LISTEN connections")

            loading = asyncio.create_task(produce())
            try:
                await asyncio.sleep(0.5)  # load first, then kill while it runs
                waves = await killer.killing(KILL_FOR, KILL_EVERY)
                killing_ended = await db_now(engine, backend)
            finally:
                await loading
            for run_id in created:
                state = await finished(a, run_id, timeout=30)
                assert state.status is RunStatus.SUCCEEDED, state

            assert waves >= 5, f"only {waves} waves of kills hit a connection ({killer.killed} killed)"
            assert max(executed.values()) == 1, "a row executed twice"
            # Every instance still beats after the killing.
            await beating_after(engine, instances, table_prefix, killing_ended)
            assert not logged_errors(errors), logged_errors(errors)

            if pg:
                # The LISTEN connections were killed, and came back as new ones.
                assert not first_listeners & await killer.alive(), "a LISTEN connection survived"

                async def listening_again() -> bool:
                    return len(await killer.listeners()) == listening

                await eventually(listening_again, timeout=5, what="LISTEN connections re-established")
                # Cross-instance wake-ups work again: only the NOTIFY can start this run now.
                run_id = await create(remote_job)
                state = await finished(producer, run_id, timeout=10)
                assert state.result == "woken", state
                assert remote_ran == [run_id], remote_ran

        # The database's account: every chain ended succeeded.
        runs = a.metadata.tables[f"{table_prefix}runs"]
        async with engine.connect() as conn:
            rows = [dict(m) for m in (await conn.execute(runs.select())).mappings()]
        assert all(r["run_completed_at"] is not None for r in rows), "a run never finished"
        chains: dict[int, list[dict[str, Any]]] = {}
        for r in rows:
            chains.setdefault(int(r["origin_id"] or r["id"]), []).append(r)
        for chain in chains.values():
            assert max(chain, key=lambda r: int(r["id"]))["run_completed_error"] is None, chain
        assert set(created) <= set(chains)
    finally:
        try:
            await dispose(own)
        finally:
            await drop_tables(engine, a)


@pytest.mark.parametrize("backend", POSTGRES)
async def test_listener_killed_comes_back(
    backend: str,
    database_url: str,
    engine: AsyncEngine,
    table_prefix: str,
    killer: ServerConnections,
    errors: pytest.LogCaptureFixture,
) -> None:
    own = create_async_engine(database_url)  # no pool_pre_ping
    killer.instrument(own)
    ran: list[int] = []

    async def remote(info: RunInfo) -> int:
        ran.append(info.id)
        return info.id

    # The worker polls every 30 s: a run it starts within seconds was announced by NOTIFY.
    worker = JobsD(own, table_prefix=table_prefix, poll_interval=SLOW_POLL, **FAST)
    worker.register_job("remote", remote)
    producer = JobsD(own, table_prefix=table_prefix, workers=0, poll_interval=SLOW_POLL, **FAST)
    remote_job = producer.register_job("remote", remote)

    async def listener() -> int:
        found: set[int] = set()

        async def one() -> bool:
            nonlocal found
            found = await killer.listeners()
            return len(found) == 1

        await eventually(one, timeout=4 * HEARTBEAT + 2, what="the process's LISTEN connection")
        return found.pop()

    async def woken() -> None:
        run_id = await create(remote_job)
        state = await finished(producer, run_id, timeout=10)
        assert state.result == run_id, state

    try:
        async with worker, producer:
            before = await listener()
            await woken()  # (this one may also have come from the worker's first poll)
            assert await killer.kill(only={before}) == 1
            killed_at = await db_now(engine, backend)

            async def gone() -> bool:
                return before not in await killer.alive()

            await eventually(gone, timeout=5, what=f"backend {before} ending")
            after = await listener()
            assert after != before
            await woken()
            await woken()
            assert len(ran) == 3
            await beating_after(engine, [worker, producer], table_prefix, killed_at)
            assert not logged_errors(errors), logged_errors(errors)
    finally:
        try:
            await dispose(own)
        finally:
            await drop_tables(engine, worker)


@pytest.mark.parametrize("backend", POSTGRES)
async def test_a_run_announced_while_nobody_listens_starts_once_listening_again(
    backend: str,
    database_url: str,
    engine: AsyncEngine,
    table_prefix: str,
    killer: ServerConnections,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The worker polls every 30 s.  Its LISTEN connection is killed and its reconnection
    # held back while another instance creates a run: that announcement reaches nobody.
    # Listening again, the worker looks for due runs at once, not at its next poll.
    own = create_async_engine(database_url)
    killer.instrument(own)
    ran: list[int] = []

    async def remote(info: RunInfo) -> None:
        ran.append(info.id)

    worker = JobsD(own, table_prefix=table_prefix, poll_interval=SLOW_POLL, **FAST)
    worker.register_job("remote", remote)
    producer = JobsD(own, table_prefix=table_prefix, workers=0, poll_interval=SLOW_POLL, **FAST)
    remote_job = producer.register_job("remote", remote)
    reconnecting, reconnect = asyncio.Event(), asyncio.Event()
    connect = Listener._connect

    async def held(listener: Listener) -> None:
        reconnecting.set()
        await reconnect.wait()
        await connect(listener)

    try:
        async with worker, producer:
            (before,) = await killer.listeners()
            monkeypatch.setattr(Listener, "_connect", held)
            assert await killer.kill(only={before}) == 1
            await asyncio.wait_for(reconnecting.wait(), 4 * HEARTBEAT + 2)
            run_id = await create(remote_job)  # announced to nobody
            reconnect.set()
            state = await finished(producer, run_id, timeout=10)
        assert state.status is RunStatus.SUCCEEDED
        assert ran == [run_id]
    finally:
        try:
            await dispose(own)
        finally:
            await drop_tables(engine, worker)
