"""Recovery time after SIGKILL: a worker process dies mid-run; how long until a peer re-runs it?

    python benchmarks/recovery.py [sqlite|postgresql|mariadb ...] [--rounds N]

The worker (this file run with --worker) runs a job that hangs; it is killed with SIGKILL
and a surviving instance in this process re-runs the run.  The bound promised by SPEC §3.6
is min(run_timeout, 3 * heartbeat_interval) + timeout_check; here heartbeat 0.5 s and
timeout_check 0.5 s, so 2.0 s plus the poll that picks up the follow-up.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import sys
import tempfile
import time
import uuid

from sqlalchemy.ext.asyncio import create_async_engine

from jobsd_async import JobsD, RunInfo

HEARTBEAT = 0.5
TIMEOUT_CHECK = 0.5
URLS = {
    "postgresql": os.environ.get(
        "JOBSD_BENCH_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
    ),
    "mariadb": os.environ.get("JOBSD_BENCH_MYSQL_URL", "mysql+aiomysql://root@127.0.0.1:3306/test"),
}


def _jobsd(url: str, prefix: str) -> JobsD:
    engine = create_async_engine(url)
    return JobsD(
        engine,
        table_prefix=prefix,
        heartbeat_interval=HEARTBEAT,
        timeout_check=TIMEOUT_CHECK,
        poll_interval=0.1,
    )


async def worker(url: str, prefix: str) -> None:
    jd = _jobsd(url, prefix)

    @jd.job(name="hang")
    async def hang(info: RunInfo) -> None:
        print("RUNNING", info.id, flush=True)
        await asyncio.sleep(3600)

    async with jd:
        await hang.create_run().run()
        await asyncio.Event().wait()


async def one_round(url: str) -> float:
    prefix = f"bench{uuid.uuid4().hex[:8]}_"
    survivor = _jobsd(url, prefix)
    rerun = asyncio.Event()
    survivor.register_job("hang", rerun.set)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--worker", url, prefix, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        while not (await proc.stdout.readline()).startswith(b"RUNNING"):
            pass
        async with survivor:
            os.kill(proc.pid, signal.SIGKILL)
            killed = time.monotonic()
            await asyncio.wait_for(rerun.wait(), 30)
            took = time.monotonic() - killed
        async with survivor.engine.begin() as conn:
            await conn.run_sync(survivor.metadata.drop_all)
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
        await survivor.engine.dispose()
    return took


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("backends", nargs="*", default=["sqlite", "postgresql", "mariadb"])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for backend in args.backends:
            url = URLS.get(backend) or f"sqlite+aiosqlite:///{tmp}/recovery.db"
            times = [await one_round(url) for _ in range(args.rounds)]
            print(
                f"{backend:11s} recovery after SIGKILL: median {statistics.median(times):.2f}s "
                f"min {min(times):.2f}s max {max(times):.2f}s (n={len(times)}; "
                f"bound 3*{HEARTBEAT}+{TIMEOUT_CHECK}={3 * HEARTBEAT + TIMEOUT_CHECK:.1f}s + poll)"
            )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        asyncio.run(worker(sys.argv[2], sys.argv[3]))
    else:
        asyncio.run(main())
