"""Quickstart: announce the time.

One JobsD instance on a throw-away SQLite file runs a handful of jobs and prints what
happens as it happens:

- an ``async`` job announcing the time, run now, after a delay and at a fixed time;
- a plain (sync) job, which runs in a worker thread;
- a job that fails on its first attempt and succeeds on the retry;
- a job taking ``RunInfo``, on a registered schedule every 2 seconds, limited to 3 runs;
- a unique run submitted twice: the second submission returns the first one's run id.

Run it with ``python examples/quickstart.py``; it exits by itself after about 7 seconds.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy.ext.asyncio import create_async_engine

from jobsd_async import JobsD, RunInfo

_STARTED = time.monotonic()


def say(message: str) -> None:
    """Print ``message`` with the seconds elapsed since the start."""
    print(f"[{time.monotonic() - _STARTED:5.2f}s] {message}", flush=True)


def clock() -> str:
    return datetime.now(UTC).strftime("%H:%M:%S.%f")[:-3]


async def main(database_url: str) -> None:
    engine = create_async_engine(database_url)
    jd = JobsD(engine, workers=4, poll_interval=1.0, run_timeout=30)

    @jd.job("announce")
    async def announce(label: str) -> str:
        now = clock()
        say(f"announce: {label}: the time is {now} UTC")
        return now

    @jd.job("checksum")
    def checksum(text: str) -> int:
        # A plain function: JobsD runs it in a worker thread, so blocking here is fine.
        time.sleep(0.2)
        say(f"checksum: running in thread {threading.current_thread().name!r}")
        return sum(text.encode())

    @jd.job("flaky", retries_error_limit=2)
    async def flaky(info: RunInfo) -> str:
        attempt = info.run_total_count
        if info.retries_on_error_count == 0:
            say(f"flaky: attempt {attempt} fails on purpose")
            raise RuntimeError("the first attempt always fails")
        say(f"flaky: attempt {attempt} succeeds (retry {info.retries_on_error_count})")
        return f"succeeded on attempt {attempt}"

    @jd.job("tick")
    async def tick(info: RunInfo) -> str:
        say(
            f"tick: run {info.run_id} row {info.id}, success {info.run_success_count + 1} "
            f"of {info.run_success_limit}, the time is {clock()} UTC"
        )
        return clock()

    @jd.job("report")
    async def report(day: str) -> str:
        say(f"report: building the report for {day} (takes 1 s)")
        await asyncio.sleep(1.0)
        return f"report for {day}"

    @jd.schedule("every-2s")
    def every_two_seconds(now: datetime) -> datetime:
        return now + timedelta(seconds=2)

    try:
        async with jd:
            say(f"instance {jd.instance_id} is up")
            run_ids = {
                "announce now": await announce.create_run("now").run(),
                "checksum": await checksum.create_run("hello, jobsd").run(),
                "flaky": await flaky.create_run().run(),
                "tick x3": await tick.create_run().schedule("every-2s").limit(3).run(),
            }

            today = datetime.now(UTC).date().isoformat()
            first = await report.create_run(today).unique(f"report-{today}").run()
            second = await report.create_run(today).unique(f"report-{today}").run()
            say(f"unique: submitted twice, got run ids {first} and {second} (same: {first == second})")
            run_ids["report"] = first

            run_ids["announce after 3 s"] = await announce.create_run("3 s later").run_after(3)
            when = datetime.now(UTC) + timedelta(seconds=4)
            run_ids["announce at"] = await announce.create_run(f"at {when:%H:%M:%S}").run_at(when)
            say(f"submitted runs {sorted(run_ids.values())}; waiting for them to finish")

            states = await asyncio.gather(*(jd.wait_for_run(i, timeout=30) for i in run_ids.values()))
            say("all runs finished:")
            for what, state in zip(run_ids, states, strict=True):
                print(
                    f"    {what:<20} run {state.run_id:>2}: {state.status.value:<9} "
                    f"attempts={state.run_total_count} successes={state.run_success_count} "
                    f"result={state.result!r}",
                    flush=True,
                )
        say("instance is down")
    finally:
        await engine.dispose()


if __name__ == "__main__":
    # jobsd_async logs through the standard logging module: lifecycle at INFO, failures at
    # WARNING.  Sending it to stdout keeps its lines in order with the prints above.
    logging.basicConfig(
        stream=sys.stdout, level=logging.INFO, format="        log: %(levelname)s %(message)s"
    )
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(main(f"sqlite+aiosqlite:///{Path(tmp) / 'quickstart.db'}"))
