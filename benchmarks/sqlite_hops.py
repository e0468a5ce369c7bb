"""SQLite: hops to aiosqlite's thread, and latency, per create → result on one instance.

    python benchmarks/sqlite_hops.py [--runs 300] [--rounds 3]

aiosqlite runs every call on a thread of its own; each call from the event loop (a cursor,
an ``execute``, a fetch, a commit, a rollback) is a hop there and back, and on a busy host
each hop is a wake-up of two threads.  Per round, one instance (``workers=10``, defaults
otherwise) on a fresh file warms up with 50 runs, then creates a no-op run, awaits its
result with ``wait_for_run`` and creates the next, ``--runs`` times.  Printed per round:
hops per create → result (the heartbeat's and the poller's included, as an app pays them)
and the p50 / p99 of the latency.

The hops are counted by wrapping ``aiosqlite.core.Connection._execute`` (the one door to
the thread), so the figure moves only when the statements or transactions change; the
latency moves with the host too (compare rounds run alternately, e.g. with
``PYTHONPATH=<other checkout>``).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiosqlite.core
from sqlalchemy.ext.asyncio import create_async_engine

import jobsd_async
from jobsd_async import JobsD

_hops = 0


def _count_hops() -> None:
    execute: Callable[..., Awaitable[Any]] = aiosqlite.core.Connection._execute

    async def counted(self: Any, fn: Any, *args: Any, **kwargs: Any) -> Any:
        global _hops
        _hops += 1
        return await execute(self, fn, *args, **kwargs)

    aiosqlite.core.Connection._execute = counted  # type: ignore[method-assign]


async def one_round(runs: int) -> tuple[float, list[float]]:
    global _hops
    with tempfile.TemporaryDirectory() as folder:
        engine = create_async_engine(f"sqlite+aiosqlite:///{Path(folder) / 'jobsd.db'}")
        jd = JobsD(engine, workers=10)

        async def noop() -> None:
            return None

        jd.register_job("noop", noop)
        try:
            async with jd:
                for _ in range(50):
                    await jd.wait_for_run(await jd.create_run("noop").run(), timeout=10)
                _hops = 0
                latencies = []
                for _ in range(runs):
                    started = time.perf_counter()
                    await jd.wait_for_run(await jd.create_run("noop").run(), timeout=10)
                    latencies.append((time.perf_counter() - started) * 1000)
                return _hops / runs, latencies
        finally:
            await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    _count_hops()
    print(f"jobsd_async from {Path(jobsd_async.__file__).parent}")
    for number in range(1, args.rounds + 1):
        hops, latencies = asyncio.run(one_round(args.runs))
        latencies.sort()
        p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
        print(
            f"round {number}: {hops:.1f} hops per create -> result, "
            f"p50 {statistics.median(latencies):.2f} ms, p99 {p99:.2f} ms"
        )


if __name__ == "__main__":
    main()
