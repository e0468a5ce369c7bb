"""The connection budget (``max_connections``) and the shared LISTEN connection.

Counted on the servers themselves: every connection a test's engine opens is recorded by
its server id, and the test asks the server which of them are still open.  SQLite has no
server connections.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import Any

import pytest
from conftest import BACKENDS, drop_tables, eventually
from faultproxy import FaultProxy
from serverconns import ServerConnections
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from jobsd_async import JobsD, RunInfo, RunStatus
from jobsd_async._store import _connections

SERVERS = [b for b in BACKENDS if b != "sqlite"]
POSTGRES = [b for b in BACKENDS if b == "postgresql"]
FAST: dict[str, Any] = {"heartbeat_interval": 0.2, "timeout_check": 0.2, "poll_interval": 0.1}


@pytest.fixture
def recorder(backend: str, engine: AsyncEngine) -> ServerConnections:
    return ServerConnections(backend, engine)


@pytest.mark.parametrize("backend", SERVERS)
async def test_idle_instance_holds_two_connections_busy_one_at_most_four(
    backend: str,
    database_url: str,
    engine: AsyncEngine,
    table_prefix: str,
    recorder: ServerConnections,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_connections, "IDLE_CLOSE", 0.5)
    own = create_async_engine(database_url, pool_size=20, max_overflow=20)
    recorder.instrument(own)
    # Loops at their usual pace relative to each other (a beat, a poll, a timeout check).
    jd = JobsD(
        own, table_prefix=table_prefix, workers=10, heartbeat_interval=1, poll_interval=5, timeout_check=5
    )
    executed: Counter[int] = Counter()

    @jd.job(name="work")
    async def work(info: RunInfo) -> None:
        executed[info.id] += 1
        await asyncio.sleep(0.01)

    listen = 1 if backend == "postgresql" else 0
    try:
        async with jd:

            async def idle() -> bool:
                return len(await recorder.alive()) <= 1 + listen

            await eventually(idle, timeout=10, what=f"an idle instance holding {1 + listen} connections")

            peak = 0
            done = asyncio.Event()

            async def sample() -> None:
                nonlocal peak
                while not done.is_set():
                    peak = max(peak, len(await recorder.alive()))
                    await asyncio.sleep(0.02)

            sampling = asyncio.create_task(sample())
            ids = [await work.create_run().run() for _ in range(40)]
            ids += await jd.create_runs(work, [() for _ in range(160)])
            for run_id in ids:
                assert (await jd.wait_for_run(run_id, timeout=60)).status is RunStatus.SUCCEEDED
            done.set()
            await sampling
            assert peak <= 3 + listen, f"a busy instance held {peak} connections"
            assert set(executed.values()) == {1} and len(executed) == 200

            await eventually(idle, timeout=10, what="unused connections closed")
    finally:
        await own.dispose()
        await drop_tables(engine, jd)


@pytest.mark.parametrize("backend", SERVERS)
async def test_down_returns_every_connection_of_the_instance_before_it_returns(
    backend: str, engine: AsyncEngine, table_prefix: str
) -> None:
    """When ``down()`` returns, none of the instance's connections is still checked out of
    the engine's pool: an app may dispose of the engine, or end its event loop, at once
    (they were closed in background tasks that ``down()`` did not wait for: the end of the
    loop could cancel them halfway)."""
    jd = JobsD(engine, table_prefix=table_prefix, workers=4, **FAST)

    @jd.job(name="work")
    async def work() -> None:
        await asyncio.sleep(0.05)

    try:
        async with jd:
            # Runs ending together, and a beat: more than one connection in use at once.
            ids = await asyncio.gather(*(jd.create_run("work").run() for _ in range(8)))
            await asyncio.gather(*(jd.wait_for_run(run_id, timeout=10) for run_id in ids))
            assert engine.pool.checkedout() >= 1  # type: ignore[attr-defined]
        assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    finally:
        await drop_tables(engine, jd)


@pytest.mark.parametrize("backend", SERVERS)
async def test_max_connections_one_shares_a_single_connection(
    backend: str, database_url: str, engine: AsyncEngine, table_prefix: str, recorder: ServerConnections
) -> None:
    own = create_async_engine(database_url, pool_size=20, max_overflow=20)
    recorder.instrument(own)
    jd = JobsD(own, table_prefix=table_prefix, workers=8, max_connections=1, **FAST)
    executed: Counter[int] = Counter()

    @jd.job(name="work")
    async def work(info: RunInfo) -> None:
        executed[info.id] += 1

    listen = 1 if backend == "postgresql" else 0
    try:
        async with jd:
            peak = 0
            ids = await jd.create_runs(work, [() for _ in range(100)])
            for run_id in ids:
                await jd.wait_for_run(run_id, timeout=60)
                peak = max(peak, len(await recorder.alive()))
            assert peak <= 1 + listen, f"max_connections=1 held {peak} connections"
            assert set(executed.values()) == {1} and len(executed) == 100
    finally:
        await own.dispose()
        await drop_tables(engine, jd)


@pytest.mark.parametrize("backend", POSTGRES)
async def test_instances_of_a_process_share_one_listen_connection(
    backend: str, database_url: str, engine: AsyncEngine, table_prefix: str, recorder: ServerConnections
) -> None:
    own = create_async_engine(database_url)
    recorder.instrument(own)
    ran: list[str] = []

    def worker(name: str) -> JobsD:
        # Polls every 30 s: a run it starts within seconds was announced by NOTIFY.
        jd = JobsD(own, table_prefix=table_prefix, poll_interval=30, heartbeat_interval=0.2)

        @jd.job(name=f"on {name}")
        async def job() -> None:
            ran.append(name)

        return jd

    a, b, c = worker("a"), worker("b"), worker("c")
    producer = JobsD(own, table_prefix=table_prefix, workers=0)

    async def nothing() -> None:
        return None

    on = {name: producer.register_job(f"on {name}", nothing) for name in "abc"}
    try:
        async with producer, a, b, c:
            assert len(await recorder.listeners()) == 1
            for name in "abc":
                await producer.wait_for_run(await on[name].create_run().run(), timeout=10)
            await a.down()
            assert len(await recorder.listeners()) == 1
            for name in "bc":  # the others still hear about new runs
                await producer.wait_for_run(await on[name].create_run().run(), timeout=10)
            assert ran == ["a", "b", "c", "b", "c"]
        assert await recorder.listeners() == set(), "the last one to leave closes it"
    finally:
        await own.dispose()
        await drop_tables(engine, producer)


@pytest.mark.parametrize("backend", POSTGRES)
async def test_at_the_ceiling_an_instance_backs_off_keeps_beating_and_recovers(
    backend: str,
    database_url: str,
    engine: AsyncEngine,
    table_prefix: str,
    recorder: ServerConnections,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The server refuses new connections for a while (``too many connections for role``):
    first while the instance holds connections, then while it holds none."""
    caplog.set_level(logging.WARNING, logger="jobsd_async")
    monkeypatch.setattr(_connections, "IDLE_CLOSE", 0.3)
    role = f"{table_prefix}role"
    async with engine.connect() as conn:
        await conn.exec_driver_sql(f'CREATE ROLE "{role}" LOGIN')
        await conn.exec_driver_sql(f'GRANT CREATE, USAGE ON SCHEMA public TO "{role}"')
        await conn.commit()

    async def ceiling(limit: int) -> None:
        async with engine.connect() as conn:
            await conn.exec_driver_sql(f'ALTER ROLE "{role}" CONNECTION LIMIT {limit}')
            await conn.commit()

    own = create_async_engine(make_url(database_url).set(username=role, password=None))
    recorder.instrument(own)
    attempts = 0

    @event.listens_for(own.sync_engine, "do_connect")
    def count(*_: object) -> None:
        nonlocal attempts
        attempts += 1

    jd = JobsD(own, table_prefix=table_prefix, workers=4, **FAST)
    # On another account: creates the runs and watches the instance, whose running runs it
    # would take over (time out and retry) if the instance missed its beats.
    watcher = JobsD(engine, table_prefix=table_prefix, workers=0, timeout_check=0.1)
    executed: Counter[int] = Counter()

    @jd.job(name="work")
    async def work(info: RunInfo) -> None:
        executed[info.id] += 1
        await asyncio.sleep(0.02)

    @watcher.job(name="work")
    async def never(info: RunInfo) -> None:
        raise AssertionError("a worker-less instance ran a run")

    async def refused_for(seconds: float, run_id: int) -> int:
        """Connection attempts the instance makes while refused for ``seconds``, while
        callers keep 100 reads queued for its connections (a demand that lasts)."""
        before = attempts
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while loop.time() < end:
            await asyncio.gather(*(jd.get_run_state(run_id) for _ in range(100)), return_exceptions=True)
            await asyncio.sleep(0.01)
        return attempts - before

    async def holding(count: int) -> bool:
        return len(await recorder.alive()) == count

    try:
        async with jd, watcher:
            # 1. Holding the listener and one connection, it may open no more.
            await eventually(lambda: holding(2), timeout=10, what="the listener and one connection")
            await ceiling(0)
            ids = await watcher.create_runs("work", [() for _ in range(100)])
            seen = jd.instance.last_seen_at
            tries = await refused_for(3.0, ids[0])
            assert 1 <= tries <= 12, f"{tries} connection attempts in 3 s at the ceiling"
            for run_id in ids:
                assert (await watcher.wait_for_run(run_id, timeout=30)).status is RunStatus.SUCCEEDED
            assert jd.instance.last_seen_at != seen, "the instance stopped beating at the ceiling"

            # 2. Its connections killed while the server refuses: it holds none.
            assert await recorder.kill() >= 2
            more = await watcher.create_runs("work", [() for _ in range(20)])
            # (Longer than the longest delay, 5 s: the refusals of step 1 have lengthened it.)
            tries = await refused_for(6.0, more[0])
            assert 1 <= tries <= 12, f"{tries} connection attempts in 6 s holding none"

            # 3. The server takes connections again: the instance recovers by itself.
            seen = jd.instance.last_seen_at
            await ceiling(-1)
            for run_id in more:
                assert (await watcher.wait_for_run(run_id, timeout=30)).status is RunStatus.SUCCEEDED
            await eventually(lambda: jd.instance.last_seen_at != seen, what="a beat after recovery")
        assert sorted(executed) == sorted(ids + more), "a run ran that was not created, or did not run"
        assert set(executed.values()) == {1}, "a run ran twice"
        assert watcher.instance.runs_timed_out_res == 0
        assert "refused a new connection" in caplog.text
        assert "accepts new connections again" in caplog.text
    finally:
        await own.dispose()
        await drop_tables(engine, jd)
        async with engine.connect() as conn:
            await conn.exec_driver_sql(f'DROP OWNED BY "{role}"')
            await conn.exec_driver_sql(f'DROP ROLE "{role}"')
            await conn.commit()


@pytest.mark.parametrize("backend", SERVERS)
async def test_a_stream_of_work_on_one_connection_cannot_starve_the_heartbeat(engine: AsyncEngine) -> None:
    """With ``max_connections=1``, claims and completions that give the connection back and
    ask again at once must not keep it from the heartbeat (found in benchmarks/scale_out.py:
    starved beats let peers take live instances for dead and re-run their runs)."""
    conns = _connections.Connections(engine, 1, logger=logging.getLogger("jobsd_async"))
    leases = 0
    stop = asyncio.Event()

    async def stream() -> None:
        nonlocal leases
        while not stop.is_set():
            async with conns.lease() as conn:
                await conn.exec_driver_sql("SELECT 1")
            leases += 1

    work = asyncio.create_task(stream())
    try:
        await eventually(lambda: leases >= 3, what="the stream of work running")
        asked_at = leases
        async with asyncio.timeout(5), conns.lease(urgent=True) as conn:
            got_at = leases
            await conn.exec_driver_sql("SELECT 1")
        assert got_at - asked_at <= 1, f"the heartbeat waited for {got_at - asked_at} leases"
    finally:
        stop.set()
        await work
        await conns.close()


@pytest.mark.parametrize("backend", SERVERS)
@pytest.mark.parametrize(
    ("waiting", "holding", "limit"),
    [("the heartbeat", "work", 3), ("work", "work", 3), ("work", "the heartbeat", 2)],
)
async def test_a_lease_takes_a_connection_coming_back_rather_than_waiting_on_an_empty_pool(
    backend: str, database_url: str, waiting: str, holding: str, limit: int
) -> None:
    """The instance's one connection is busy with a slow statement (of other work, or of
    the heartbeat) and the application holds the rest of the engine's pool.  The next lease
    takes the instance's connection when it comes back; it may not wait ``pool_timeout``
    for the pool.  Found for the beat in review (it failed after 5 s), then for ordinary work
    (a completion, a claim) by the ten-instance cluster tests on a pool of 30, where a
    completion waited the 30 s of the default.  With ``max_connections=2`` the heartbeat's
    connection is the only one work may get back."""
    small = create_async_engine(database_url, pool_size=2, max_overflow=0, pool_timeout=5)
    conns = _connections.Connections(small, limit, logger=logging.getLogger("jobsd_async"))
    sleep = "SELECT pg_sleep(0.3)" if backend == "postgresql" else "SELECT SLEEP(0.3)"
    busy = asyncio.Event()
    beat = waiting == "the heartbeat"

    async def slow_statement() -> None:
        async with conns.lease(urgent=holding == "the heartbeat") as conn:
            busy.set()
            await conn.exec_driver_sql(sleep)

    try:
        async with small.connect() as app:  # the application holds the pool's other connection
            await app.exec_driver_sql("SELECT 1")
            slow = asyncio.create_task(slow_statement())
            await busy.wait()
            async with asyncio.timeout(4), conns.lease(urgent=beat, patient=beat) as conn:
                await conn.exec_driver_sql("SELECT 1")
            assert conns.opened == 1  # served by the connection that came back
            await slow
    finally:
        await conns.close()
        await small.dispose()


@pytest.mark.parametrize("backend", POSTGRES)
async def test_a_listener_reconnecting_into_a_black_hole_does_not_stop_the_beats(
    database_url: str, engine: AsyncEngine, table_prefix: str
) -> None:
    """The LISTEN connection (here through a proxy) is lost and its server stops answering:
    reconnecting hangs, and the beats must go on meanwhile (found in review: the beat loop
    waited for the reconnect)."""
    parts = make_url(database_url)
    proxy = FaultProxy(parts.host or "127.0.0.1", parts.port or 5432)
    await proxy.start()
    jd = JobsD(engine, table_prefix=table_prefix, listen=proxy.proxied(database_url), **FAST)
    try:
        async with jd:
            await eventually(lambda: jd.instance.last_seen_at is not None, what="a first beat")
            async with proxy.frozen():
                proxy.cut()  # the LISTEN connection dies; a new one hangs in the black hole
                cut = jd.instance.last_seen_at
                # The tick of this beat finds the listener lost and starts reconnecting.
                await eventually(lambda: jd.instance.last_seen_at != cut, timeout=3, what="a beat")
                seen = jd.instance.last_seen_at
                await eventually(
                    lambda: jd.instance.last_seen_at != seen, timeout=3, what="a beat while reconnecting"
                )
    finally:
        await proxy.close()
        await drop_tables(engine, jd)


@pytest.mark.parametrize("backend", SERVERS)
async def test_work_refused_a_new_connection_waits_for_one_held_and_retries_after_the_delay(
    backend: str, database_url: str
) -> None:
    """While the server refuses new connections, work that wanted another one neither fails
    (the instance holds one) nor waits for it to come back: it opens one once the retry
    delay is over and the server accepts again (found in review)."""
    parts = make_url(database_url)
    proxy = FaultProxy(parts.host or "127.0.0.1", parts.port or (5432 if backend == "postgresql" else 3306))
    await proxy.start()
    engine = create_async_engine(proxy.proxied(database_url))
    conns = _connections.Connections(engine, 3, logger=logging.getLogger("jobsd_async"))
    sleep = "SELECT pg_sleep(3)" if backend == "postgresql" else "SELECT SLEEP(3)"
    busy = asyncio.Event()

    async def slow_work() -> None:
        async with conns.lease() as conn:
            busy.set()
            await conn.exec_driver_sql(sleep)

    try:
        work = asyncio.create_task(slow_work())
        await busy.wait()
        got = asyncio.Event()

        async def more_work() -> None:
            async with conns.lease() as conn:
                await conn.exec_driver_sql("SELECT 1")
                got.set()

        async with proxy.refusing():
            wanting = asyncio.create_task(more_work())
            await eventually(lambda: conns.opened == 1 and conns._refusals >= 1, what="a refusal")
        async with asyncio.timeout(2):  # well before the held connection comes back (3 s)
            await got.wait()
        await wanting
        await work
    finally:
        await conns.close()
        await engine.dispose()
        await proxy.close()
