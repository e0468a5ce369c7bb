"""Does history slow the hot path?  Poll + claim cost on an empty table and with 1,000,000 finished rows.

    python benchmarks/scale.py [sqlite|postgresql|mariadb ...] [--history 1000000] [--rounds 200]

For each backend, on fresh tables:
1. ``--rounds`` times: create 50 pending runs, then time one poll and one claim of 50 (each
   in its own transaction, as an instance does them), then close the claimed rows.
2. Insert ``--history`` finished rows in one INSERT ... SELECT, and ANALYZE.
3. Time the same again, and print both medians, their ratio, and the query plans of the
   poll, the claim's pick, the timeout scan and the chain look-up with the history in place.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import uuid
from typing import Any

from sqlalchemy import Integer, Select, column, func, insert, literal, select, table, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from jobsd_async import JobsD
from jobsd_async._store import _claim, _read, _resurrect
from jobsd_async._store._rows import Store

URLS = {
    "postgresql": os.environ.get(
        "JOBSD_BENCH_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
    ),
    "mariadb": os.environ.get("JOBSD_BENCH_MYSQL_URL", "mysql+aiomysql://root@127.0.0.1:3306/test"),
}
BATCH = 50


async def noop() -> None:
    return None


async def poll_and_claim(jd: JobsD, store: Store) -> float:
    """Seconds for one poll and one claim of BATCH due rows."""
    began = time.perf_counter()
    async with store.dialect.reading() as conn:
        polled = await _claim.poll_due(store, conn, jobs=["noop"], schedules=[], horizon=5.0, limit=1000)
    claimed = await store.dialect.retrying(
        lambda conn: _claim.claim_due(
            store, conn, jobs=["noop"], schedules=[], limit=BATCH, instance_id=jd.instance_id
        )
    )
    took = time.perf_counter() - began
    assert len(polled) >= BATCH and len(claimed) == BATCH, (len(polled), len(claimed))
    runs = store.runs
    async with store.dialect.transaction() as conn:
        await conn.execute(
            update(runs)
            .where(runs.c.id.in_([row.id for row in claimed]))
            .values(run_completed_at=store.dialect.now(), name_active=None)
        )
    return took


async def measure(jd: JobsD, store: Store, rounds: int) -> float:
    samples = []
    for _ in range(rounds):
        await jd.create_runs("noop", [() for _ in range(BATCH)])
        samples.append(await poll_and_claim(jd, store))
    return statistics.median(samples) * 1000


def series(conn: AsyncConnection, count: int) -> Select[Any]:
    """``SELECT n`` for n in 1..count, the dialect's way."""
    name = conn.dialect.name
    if name == "postgresql":
        return select(func.generate_series(1, count).table_valued("n").render_derived().c.n)
    if name in ("mysql", "mariadb"):
        return select(column("seq", Integer).label("n")).select_from(table(f"seq_1_to_{count}"))
    start = select(literal(1).label("n")).cte("numbers", recursive=True)
    numbers = start.union_all(select(start.c.n + 1).where(start.c.n < count))
    return select(numbers.c.n)


async def add_history(engine: AsyncEngine, store: Store, instance_id: int, count: int) -> None:
    """``count`` finished one-off runs, each its own chain, finished a day ago."""
    runs = store.runs
    dialect = store.dialect
    async with engine.begin() as conn:
        source = series(conn, count).subquery()
        day_ago = dialect.add_seconds(dialect.now(), literal(-86400.0))
        values = {
            "name": func.concat("history-", source.c.n)
            if conn.dialect.name != "sqlite"
            else "history-" + source.c.n,
            "job": literal("noop"),
            "job_args": literal("[]"),
            "job_kwargs": literal("{}"),
            "delay": literal(0.0),
            "run_at": day_ago,
            "run_total_count": literal(1),
            "run_success_count": literal(1),
            "run_success_limit": literal(1),
            "run_started_at": day_ago,
            "run_started_by": literal(instance_id),
            "run_completed_at": day_ago,
            "retries_on_error_count": literal(0),
            "retries_on_timeout_count": literal(0),
            "created_at": day_ago,
            "created_by": literal(instance_id),
        }
        await conn.execute(
            insert(runs).from_select(
                list(values), select(*[v.label(k) for k, v in values.items()]).select_from(source)
            )
        )
        quoted = conn.dialect.identifier_preparer.quote(runs.name)
        analyze = {"postgresql": f"ANALYZE {quoted}", "sqlite": "ANALYZE"}
        await conn.exec_driver_sql(analyze.get(conn.dialect.name, f"ANALYZE TABLE {quoted}"))


async def plans(engine: AsyncEngine, store: Store, instance_id: int) -> dict[str, list[str]]:
    """The query plans of the hot reads, with literal values."""
    statements = {
        "poll": _claim.poll_statement(store, ["noop"], [], horizon=5.0, limit=1000),
        "claim pick": _claim.pick_statement(store, ["noop"], [], limit=BATCH),
        "timeout scan": _resurrect.orphans_statement(
            store, schedules=[], limit=100, instance_id=instance_id, own_grace=1.0
        ),
        "chain look-up": _read.latest_statement(store, 12345),
    }
    if store.dialect.is_mysql:  # the paused queues travel as a parameter there
        statements = {label: stmt.params(paused=["-"]) for label, stmt in statements.items()}
    out: dict[str, list[str]] = {}
    name = engine.dialect.name
    prefix = "EXPLAIN QUERY PLAN " if name == "sqlite" else "EXPLAIN "
    async with engine.connect() as conn:
        for label, stmt in statements.items():
            sql = str(stmt.compile(dialect=engine.dialect, compile_kwargs={"literal_binds": True}))
            result = await conn.exec_driver_sql(prefix + sql)
            out[label] = [" | ".join(str(v) for v in row) for row in result]
    return out


async def run(url: str, history: int, rounds: int) -> None:
    engine = create_async_engine(url)
    prefix = f"scale{uuid.uuid4().hex[:8]}_"
    jd = JobsD(engine, table_prefix=prefix, workers=0)
    jd.register_job("noop", noop)
    try:
        async with jd:
            store = jd._store
            assert store is not None
            empty = await measure(jd, store, rounds)
            began = time.perf_counter()
            await add_history(engine, store, jd.instance_id, history)
            filled = time.perf_counter() - began
            full = await measure(jd, store, rounds)
            print(
                f"{engine.dialect.name:10s} poll+claim of {BATCH}: empty {empty:.2f} ms, "
                f"with {history:,} finished rows {full:.2f} ms (x{full / empty:.2f}); "
                f"history inserted in {filled:.0f} s",
                flush=True,
            )
            for label, lines in (await plans(engine, store, jd.instance_id)).items():
                print(f"  {label}:")
                for line in lines:
                    print(f"    {line}")
    finally:
        async with engine.begin() as conn:
            await conn.run_sync(jd.metadata.drop_all)
        await engine.dispose()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("backends", nargs="*", default=["sqlite", "postgresql", "mariadb"])
    parser.add_argument("--history", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for backend in args.backends:
            url = URLS.get(backend) or f"sqlite+aiosqlite:///{tmp}/scale.db"
            await run(url, args.history, args.rounds)


if __name__ == "__main__":
    asyncio.run(main())
