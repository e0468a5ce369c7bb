"""SPEC §3.8: a database outage mid-load loses nothing and doubles nothing.

A fault proxy between the instance and the server drops every connection and refuses new
ones for a few seconds while runs are being created and executed.  SQLite has no network
to cut, so this scenario exists on PostgreSQL and MariaDB only.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import warnings
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from conftest import BACKENDS, drop_tables
from faultproxy import FaultProxy
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from jobsd_async import JobsD, RunInfo, StoreError

OUTAGE = 3.0  # seconds


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
            await faulty.dispose()
            with warnings.catch_warnings():
                # aiomysql leaves the sockets the proxy cut for the garbage collector to close.
                warnings.simplefilter("ignore", ResourceWarning)
                gc.collect()

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
