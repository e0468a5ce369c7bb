"""SPEC §3.8: a database outage mid-load loses nothing and doubles nothing.

A fault proxy between the instance and the server drops every connection and refuses new
ones for a few seconds while runs are being created and executed.  SQLite has no network
to cut, so this scenario exists on PostgreSQL and MariaDB only.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import warnings
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import pytest
from conftest import BACKENDS, drop_tables, eventually, fetch_runs
from faultproxy import FaultProxy
from sqlalchemy import func, text
from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeoutError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from jobsd_async import Job, JobsD, RunInfo, RunStatus, StoreError
from jobsd_async._store import _claim, _create

OUTAGE = 3.0  # seconds


async def dispose(faulty: AsyncEngine) -> None:
    """Dispose of an engine whose connections the proxy may have cut."""
    await faulty.dispose()
    with warnings.catch_warnings():
        # aiomysql leaves the sockets the proxy cut for the garbage collector to close.
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


@dataclass
class Call:
    kwargs: dict[str, Any]
    result: Any = None  # once it returned


def recorded(monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> list[Call]:
    """Spy on the coroutine function ``module.name``: its calls, in order (a call that
    raises included)."""
    calls: list[Call] = []
    original = getattr(module, name)

    async def recording(*args: Any, **kwargs: Any) -> Any:
        calls.append(call := Call(kwargs))
        call.result = await original(*args, **kwargs)
        return call.result

    monkeypatch.setattr(module, name, recording)
    return calls


def recording(ran: list[int]) -> Callable[[RunInfo, str], Coroutine[Any, Any, str]]:
    """The job "work": it records its run ids in ``ran`` and returns "done"."""

    async def work(info: RunInfo, marker: str) -> str:
        ran.append(info.id)
        return "done"

    return work


@contextlib.asynccontextmanager
async def proxied(
    proxy: FaultProxy, database_url: str, engine: AsyncEngine, table_prefix: str, **options: Any
) -> AsyncIterator[tuple[JobsD, Job[[str], str], list[int]]]:
    """An instance on an engine through the proxy, with the job "work" (see :func:`recording`)
    and the ids it ran; its engine disposed of and its tables dropped afterwards."""
    faulty = create_async_engine(proxy.proxied(database_url))
    jd = JobsD(faulty, table_prefix=table_prefix, **options)
    ran: list[int] = []
    try:
        yield jd, jd.register_job("work", recording(ran)), ran
    finally:
        await dispose(faulty)
        await drop_tables(engine, jd)


@pytest.fixture
async def proxy(database_url: str, engine: AsyncEngine) -> AsyncIterator[FaultProxy]:
    parts = urlsplit(database_url)
    proxy = FaultProxy(parts.hostname or "127.0.0.1", parts.port or 0)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "sqlite"])
async def test_outage_during_load_loses_and_doubles_nothing(
    proxy: FaultProxy, database_url: str, engine: AsyncEngine, table_prefix: str
) -> None:
    faulty = create_async_engine(proxy.proxied(database_url), pool_pre_ping=True)
    jd = JobsD(
        faulty,
        table_prefix=table_prefix,
        poll_interval=0.2,
        heartbeat_interval=0.5,
        timeout_check=0.5,
        run_timeout=30,
    )
    executed: Counter[int] = Counter()

    @jd.job(name="work")
    async def work(info: RunInfo, n: int) -> int:
        executed[info.id] += 1
        await asyncio.sleep(0.02)
        return n

    created: list[int] = []
    refused = 0

    async def produce(count: int) -> None:
        nonlocal refused
        for n in range(count):
            while True:
                try:
                    created.append(await work.create_run(n).run())
                    break
                except StoreError:
                    refused += 1
                    await asyncio.sleep(0.1)
            await asyncio.sleep(0.03)

    try:  # the tables are this test's own: dropped whatever happens
        try:
            async with jd:
                producer = asyncio.create_task(produce(120))
                await asyncio.sleep(1.0)
                async with proxy.outage():
                    await asyncio.sleep(OUTAGE)
                await producer
                for run_id in created:
                    await jd.wait_for_run(run_id, timeout=60)
                # The instance keeps accepting work afterwards.
                after = await work.create_run(-1).run()
                assert (await jd.wait_for_run(after, timeout=30)).result == -1
        finally:
            await dispose(faulty)

        logging.getLogger(__name__).info("refused creations during the outage: %d", refused)
        assert refused > 0, "the outage did not hit the producer; the test proved nothing"
        runs = jd.metadata.tables[f"{table_prefix}runs"]
        async with engine.connect() as conn:
            rows = [dict(m) for m in (await conn.execute(runs.select())).mappings()]
        assert all(r["run_completed_at"] is not None for r in rows), "a run never finished"
        chains: dict[int, list[dict[str, Any]]] = {}
        for r in rows:
            chains.setdefault(int(r["origin_id"] or r["id"]), []).append(r)
        # Every chain ends succeeded (a run cut off mid-flight may have been retried first).
        for chain in chains.values():
            assert max(chain, key=lambda r: int(r["id"]))["run_completed_error"] is None
        assert set(created) <= set(chains)
        assert max(executed.values()) == 1, "a row executed twice"
    finally:
        await drop_tables(engine, jd)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "sqlite"])
async def test_a_run_started_here_whose_insert_answer_is_lost_runs_once(
    proxy: FaultProxy,
    database_url: str,
    engine: AsyncEngine,
    table_prefix: str,
    backend: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A run created where it can start at once is inserted already claimed; on PostgreSQL
    # in one statement, without BEGIN and COMMIT.  Its answer is lost after the server
    # carried it out: the insert run again finds that row instead of starting a second
    # chain, and hands it back to pending (it never started), from where it runs.  On
    # MariaDB the insert's transaction never committed: it is simply run again.
    handing_back = recorded(monkeypatch, _claim, "hand_back")
    # Beats far enough apart that the resurrector does not hand the row over first.
    options = {"poll_interval": 0.2, "heartbeat_interval": 5, "timeout_check": 5}
    async with proxied(proxy, database_url, engine, table_prefix, **options) as (jd, work, ran), jd:
        # Only the insert carries the run's arguments (and its answer, RETURNING the row).
        with proxy.losing_answer(b"answer-lost-marker") as lost:
            run_id = await work.create_run("answer-lost-marker").run()
        assert lost.is_set(), "no answer was lost; the test proved nothing"
        state = await jd.wait_for_run(run_id, timeout=30)
        rows = await fetch_runs(jd)
    assert state.status is RunStatus.SUCCEEDED and state.result == "done"
    assert [(r["id"], r["run_completed_error"], r["run_total_count"]) for r in rows] == [(run_id, None, 1)]
    assert ran == [run_id], "the job ran more than once"
    # On PostgreSQL the lost insert had landed: its row was found and handed back.
    assert [c.result for c in handing_back] == ([True] if backend == "postgresql" else [])


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b == "postgresql"])
async def test_a_run_created_for_others_whose_insert_answer_is_lost_runs_once(
    proxy: FaultProxy,
    database_url: str,
    engine: AsyncEngine,
    table_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # An instance without workers inserts a run pending (on PostgreSQL in autocommit
    # mode, without BEGIN and COMMIT); the insert lands but its answer is lost.  Run
    # again, the insert finds that row instead of inserting a second one; the run id is
    # that row's, and another instance runs it once.
    inserts = recorded(monkeypatch, _create, "insert_unique")
    options = {"workers": 0, "heartbeat_interval": 5, "timeout_check": 5}
    async with proxied(proxy, database_url, engine, table_prefix, **options) as (producer, create, ran):
        worker = JobsD(
            engine, table_prefix=table_prefix, poll_interval=0.2, heartbeat_interval=5, timeout_check=5
        )
        worker.register_job("work", recording(ran))
        async with worker, producer:
            # The insert announces the run in the same statement (a SELECT of the inserted
            # id and pg_notify): the first one-row answer after its text was sent.
            with proxy.losing_answer(b"SELECT 1", after=b"pg_notify") as lost:
                run_id = await create.create_run("created-for-others").run()
            assert lost.is_set(), "no answer was lost; the test proved nothing"
            state = await worker.wait_for_run(run_id, timeout=30)
            rows = await fetch_runs(worker)
    assert [c.kwargs.get("landed_since") is None for c in inserts] == [True, False]
    assert state.status is RunStatus.SUCCEEDED and state.result == "done"
    assert [(r["id"], r["run_completed_error"]) for r in rows] == [(run_id, None)]
    assert ran == [run_id]


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b == "postgresql"])
async def test_an_insert_run_again_while_the_lost_ones_run_closes_finds_that_run(
    engine: AsyncEngine, table_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The insert run again after a lost answer while the row the lost one wrote is being
    closed (another instance ran it): the statement's ``NOT EXISTS`` still sees that row
    open, and its ``ON CONFLICT`` then finds the name free.  It must not start a second
    chain.  The closing is held in a transaction until the insert waits on it."""
    producer = JobsD(engine, table_prefix=table_prefix, workers=0, heartbeat_interval=5, timeout_check=5)
    job = producer.register_job("work", recording([]))
    firsts: list[tuple[Any, dict[str, Any]]] = []
    insert_unique = _create.insert_unique

    async def keeping(store: Any, conn: AsyncConnection, values: dict[str, Any], **kwargs: Any) -> Any:
        firsts.append((store, values))
        return await insert_unique(store, conn, values, **kwargs)

    monkeypatch.setattr(_create, "insert_unique", keeping)
    try:
        async with producer:
            run_id = await job.create_run("x").run()
            store, values = firsts[0]
            runs = store.runs
            closing = await engine.connect()
            again = await engine.connect()
            try:
                await again.execution_options(isolation_level="AUTOCOMMIT")
                pid = (await again.exec_driver_sql("SELECT pg_backend_pid()")).scalar_one()
                await closing.execute(
                    runs.update()
                    .where(runs.c.id == run_id)
                    .values(name_active=None, run_completed_at=func.now(), run_success_count=1)
                )
                since = datetime.now(UTC) - timedelta(seconds=10)
                inserting = asyncio.create_task(insert_unique(store, again, values, landed_since=since))

                async def waiting_on_the_closing() -> bool:
                    async with engine.connect() as watcher:
                        query = "SELECT wait_event FROM pg_stat_activity WHERE pid = :pid"
                        return (await watcher.execute(text(query), {"pid": pid})).scalar() == "transactionid"

                try:
                    await eventually(waiting_on_the_closing, what="the insert waits on the closing")
                    await closing.commit()
                    found, inserted = await asyncio.wait_for(inserting, 10)
                finally:
                    inserting.cancel()
                    await asyncio.gather(inserting, return_exceptions=True)
            finally:
                await closing.close()
                await again.close()
            rows = await fetch_runs(producer)
    finally:
        await drop_tables(engine, producer)
    assert (found, inserted) == (run_id, False)
    assert [r["id"] for r in rows] == [run_id], "a second chain was started"


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b == "postgresql"])
async def test_an_insert_answer_lost_for_longer_than_the_retention_is_not_guessed(
    proxy: FaultProxy,
    database_url: str,
    engine: AsyncEngine,
    table_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # With a retention of half a second, a run the lost insert created could have run,
    # finished and been deleted by the time the loss is noticed: the insert is then not
    # run again (it could start a second chain); the caller hears that the outcome is
    # unknown, and the run, created, runs once.
    inserts = recorded(monkeypatch, _create, "insert_claimed")
    options = {"poll_interval": 0.2, "heartbeat_interval": 0.2, "timeout_check": 0.2, "retention": 0.5}
    noticed = asyncio.Event()
    async with proxied(proxy, database_url, engine, table_prefix, **options) as (jd, work, ran):
        try:
            async with jd:
                with proxy.losing_answer(b"answer-pruned-marker", hold=noticed) as lost:
                    creating = asyncio.create_task(work.create_run("answer-pruned-marker").run())
                    async with asyncio.timeout(10):
                        await lost.wait()
                    await eventually(lambda: len(ran) == 1, timeout=30, what="the lost insert's run ran")
                    await asyncio.sleep(0.6)  # (a duration is what is under test: past the retention)
                    noticed.set()
                    with pytest.raises(StoreError, match="too long ago to tell"):
                        await creating
        finally:
            noticed.set()
    assert len(ran) == 1
    assert len(inserts) == 1, "the insert was run again"


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b == "postgresql"])
async def test_a_lost_insert_answer_noticed_late_never_starts_a_second_chain(
    proxy: FaultProxy, database_url: str, engine: AsyncEngine, table_prefix: str
) -> None:
    # The insert's answer is held until the run it created was handed over, ran and
    # finished (its name is free again), and only then lost: the insert run again now
    # must still find that run (by its name among the rows closed since), not start a
    # second chain.
    options = {"poll_interval": 0.2, "heartbeat_interval": 0.2, "timeout_check": 0.2}
    noticed = asyncio.Event()
    async with proxied(proxy, database_url, engine, table_prefix, **options) as (jd, work, ran):

        async def chain_finished() -> bool:
            rows = await fetch_runs(jd)
            return bool(rows) and rows[-1]["run_completed_at"] is not None

        try:
            async with jd:
                with proxy.losing_answer(b"answer-late-marker", hold=noticed) as lost:
                    creating = asyncio.create_task(work.create_run("answer-late-marker").run())
                    async with asyncio.timeout(10):
                        await lost.wait()
                    await eventually(chain_finished, timeout=30, what="the lost insert's run finished")
                    noticed.set()
                    run_id = await creating
                state = await jd.wait_for_run(run_id, timeout=10)
                rows = await fetch_runs(jd)
        finally:
            noticed.set()
    assert len(ran) == 1, "the job ran more than once"
    assert run_id == rows[0]["id"]
    assert {int(r["origin_id"] or r["id"]) for r in rows} == {run_id}, "a second chain was created"
    assert [r["run_completed_error"] for r in rows] == ["job run killed", None]
    assert state.status is RunStatus.SUCCEEDED and state.result == "done"


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b == "postgresql"])
async def test_an_insert_lost_on_its_way_is_run_again_and_creates_the_run(
    proxy: FaultProxy,
    database_url: str,
    engine: AsyncEngine,
    table_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The connection drops while the insert is on its way: it never reached the server.
    # Run again (looking for a row the first run may have written, and finding none), it
    # creates the run, which starts here at once.
    runs_again = recorded(monkeypatch, _create, "insert_claimed")
    options = {"poll_interval": 0.2, "heartbeat_interval": 0.2}
    async with proxied(proxy, database_url, engine, table_prefix, **options) as (jd, work, ran), jd:
        # Only the insert carries the run's arguments.
        with proxy.losing_request(b"request-lost-marker") as lost:
            run_id = await work.create_run("request-lost-marker").run()
        assert lost.is_set(), "no request was lost; the test proved nothing"
        state = await jd.wait_for_run(run_id, timeout=10)
        rows = await fetch_runs(jd)
    assert [c.kwargs.get("landed_since") is None for c in runs_again] == [True, False]
    assert state.status is RunStatus.SUCCEEDED and state.result == "done"
    assert [(r["id"], r["run_started_by"], r["run_completed_error"]) for r in rows] == [
        (run_id, jd.instance_id, None)
    ]
    assert ran == [run_id]


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "sqlite"])
async def test_down_is_bounded_when_the_database_stops_answering(
    proxy: FaultProxy, database_url: str, engine: AsyncEngine, table_prefix: str
) -> None:
    faulty = create_async_engine(proxy.proxied(database_url))
    jd = JobsD(
        faulty, table_prefix=table_prefix, poll_interval=0.2, heartbeat_interval=0.5, timeout_check=0.5
    )
    jd.register_job("noop", lambda: None)
    try:
        await jd.up()
        async with proxy.frozen():
            # Every statement now hangs (no error, no reply): down() must still end.
            async with asyncio.timeout(40):
                await jd.down()
    finally:
        await proxy.close()  # the frozen connections: cut
        await dispose(faulty)
        await drop_tables(engine, jd)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "sqlite"])
async def test_a_pool_emptied_by_jobs_never_delays_the_heartbeat(
    database_url: str, engine: AsyncEngine, table_prefix: str
) -> None:
    # While three runs are running, their jobs take every connection the owner's pool has
    # left and hold them for 2 s (ten heartbeats): were the heartbeat to need one from the
    # pool, the peer would take the owner for dead and re-run.  The instance's connections
    # are its own, held between uses, so the pool running dry costs it nothing.
    small = create_async_engine(database_url, pool_size=4, max_overflow=0, pool_timeout=0.5)
    owner = JobsD(small, table_prefix=table_prefix, heartbeat_interval=0.2, poll_interval=0.1, workers=3)
    peer = JobsD(engine, table_prefix=table_prefix, timeout_check=0.05, poll_interval=0.1)
    executed: Counter[str] = Counter()
    release = asyncio.Event()

    @owner.job(name="hold")
    async def hold(n: int) -> None:
        executed[f"owner {n}"] += 1
        await release.wait()

    @peer.job(name="hold")
    async def rerun(n: int) -> None:
        executed[f"peer {n}"] += 1

    try:
        async with owner:
            run_ids = [await owner.create_run("hold", n).run() for n in range(3)]
            await eventually(lambda: len(executed) == 3, what="the owner running all three")
            taken: list[AsyncConnection] = []
            async with peer:  # a watcher from now on, while the owner's pool is empty
                while True:
                    try:
                        taken.append(await small.connect())
                    except SQLAlchemyTimeoutError:
                        break  # the pool is empty
                beats = owner.instance.last_seen_at
                await asyncio.sleep(2.0)
                assert owner.instance.last_seen_at != beats, "the owner stopped beating"
                for conn in taken:
                    await conn.close()
                release.set()
                states = [await peer.wait_for_run(run_id, timeout=30) for run_id in run_ids]
        assert all(s.status.value == "succeeded" for s in states)
        assert executed == {f"owner {n}": 1 for n in range(3)}, executed
        assert peer.instance.runs_timed_out_res == 0
    finally:
        release.set()
        await small.dispose()
        await drop_tables(engine, owner)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b == "postgresql"])
async def test_a_lock_timeout_delays_a_completion_but_never_fails_it(
    database_url: str, engine: AsyncEngine, table_prefix: str
) -> None:
    # Writes of this instance give up on a row lock after 100 ms (SQLSTATE 55P03); another
    # transaction holds the run's row for 2 s when it completes.  That is no refusal of the
    # data: the completion waits and lands, and the run is not executed again.
    impatient = create_async_engine(database_url, connect_args={"server_settings": {"lock_timeout": "100"}})
    jd = JobsD(impatient, table_prefix=table_prefix, poll_interval=0.1)
    started = asyncio.Event()
    release = asyncio.Event()
    executed: list[int] = []

    @jd.job(name="work")
    async def work(info: RunInfo) -> str:
        executed.append(info.id)
        started.set()
        await release.wait()
        return "landed"

    try:
        async with jd:
            run_id = await work.create_run().run()
            async with asyncio.timeout(10):
                await started.wait()
            runs = jd.metadata.tables[f"{table_prefix}runs"]
            async with engine.connect() as holder:
                await holder.execute(runs.select().where(runs.c.id == run_id).with_for_update())
                release.set()
                await asyncio.sleep(2.0)  # the completion meets the lock, again and again
                await holder.rollback()
            state = await jd.wait_for_run(run_id, timeout=30)
        assert state.status.value == "succeeded" and state.result == "landed"
        assert executed == [run_id]
    finally:
        await impatient.dispose()
        await drop_tables(engine, jd)
