"""Whatever a job returns or raises ends in a recorded completion, and harms no other run.

Hostile texts (NUL bytes, lone surrogates), results nested too deep to encode, exceptions
whose ``__str__`` raises, ``BaseException`` subclasses, ``SystemExit``/``KeyboardInterrupt``,
sync jobs that return a coroutine, and ``Job`` handles passed where a function belongs.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import textwrap
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import MakeJobsD, fetch_runs

from jobsd_async import InvalidJobFuncError, RunInfo, RunStatus, ScheduleError

REPLACEMENT = "\ufffd"


class Boom(BaseException):
    """Neither an Exception nor a CancelledError."""


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("__str__ itself fails")


async def test_hostile_error_texts_do_not_poison_other_completions(make_jobsd: MakeJobsD) -> None:
    jd = make_jobsd(workers=20)
    executed: Counter[int] = Counter()

    @jd.job(name="plain")
    async def plain(info: RunInfo, n: int) -> int:
        executed[info.id] += 1
        await asyncio.sleep(0.01)
        return n

    @jd.job(name="hostile", retries_error_limit=0)
    async def hostile(info: RunInfo, text: str) -> None:
        executed[info.id] += 1
        await asyncio.sleep(0.01)
        raise ValueError(text)

    async with jd:
        # Created together, so their completions share batches.
        plain_ids = [await plain.create_run(n).run() for n in range(40)]
        hostile_ids = [
            await hostile.create_run("nul \x00 byte").run(),
            await hostile.create_run("lone \ud800 surrogate").run(),
            await hostile.create_run("both \udfff\x00").run(),
        ]
        states = [await jd.wait_for_run(run_id, timeout=30) for run_id in plain_ids + hostile_ids]

    assert [s.result for s in states[:40]] == list(range(40))
    errors = [s.run_completed_error for s in states[40:]]
    assert errors == [
        f"ValueError: nul {REPLACEMENT} byte",
        f"ValueError: lone {REPLACEMENT} surrogate",
        f"ValueError: both {REPLACEMENT}{REPLACEMENT}",
    ]
    assert all(s.status is RunStatus.FAILED for s in states[40:])
    rows = await fetch_runs(jd)
    assert len(rows) == 43, "a run was re-executed as a new row"
    assert set(executed.values()) == {1}, "a row executed more than once"


async def test_a_result_nested_too_deep_fails_the_run_once(make_jobsd: MakeJobsD) -> None:
    jd = make_jobsd()

    @jd.job(name="deep", retries_error_limit=3)
    async def deep() -> Any:
        value: Any = []
        for _ in range(5000):
            value = [value]
        return value

    async with jd:
        state = await jd.wait_for_run(await deep.create_run().run(), timeout=10)
    assert state.status is RunStatus.FAILED
    assert state.run_completed_error is not None
    assert "result of job 'deep' is not JSON-serializable" in state.run_completed_error
    assert state.run_total_count == 1, "a result that cannot be stored is not retried"


async def test_an_exception_whose_str_raises_is_recorded(make_jobsd: MakeJobsD) -> None:
    jd = make_jobsd()

    @jd.job(name="odd", retries_error_limit=0)
    async def odd() -> None:
        raise Unprintable

    async with jd:
        state = await jd.wait_for_run(await odd.create_run().run(), timeout=10)
    assert state.status is RunStatus.FAILED
    assert state.run_completed_error == "Unprintable: <unprintable Unprintable object>"


@pytest.mark.parametrize("error", [Boom, SystemExit, KeyboardInterrupt, GeneratorExit])
async def test_base_exceptions_fail_the_run_and_the_host_lives_on(
    make_jobsd: MakeJobsD, error: type[BaseException]
) -> None:
    jd = make_jobsd()

    @jd.job(name="async_raiser", retries_error_limit=1)
    async def async_raiser() -> None:
        raise error("from a coroutine job")

    @jd.job(name="sync_raiser", retries_error_limit=0)
    def sync_raiser() -> None:
        raise error("from a thread")

    async with jd:
        first = await jd.wait_for_run(await async_raiser.create_run().run(), timeout=10)
        second = await jd.wait_for_run(await sync_raiser.create_run().run(), timeout=10)
        # The instance still works.
        jd.instance  # noqa: B018
    assert first.status is RunStatus.FAILED and second.status is RunStatus.FAILED
    assert first.run_total_count == 2, "the retry (a follow-up that raises again) must fail too"
    assert first.run_completed_error == f"{error.__name__}: from a coroutine job"
    assert second.run_completed_error == f"{error.__name__}: from a thread"


def test_keyboard_interrupt_in_a_job_does_not_end_a_standalone_app(tmp_path: Path) -> None:
    script = tmp_path / "app.py"
    script.write_text(
        textwrap.dedent(
            """
            import asyncio, sys
            from sqlalchemy.ext.asyncio import create_async_engine
            from jobsd_async import JobsD

            async def main(url):
                engine = create_async_engine(url)
                jd = JobsD(engine, retries_error_limit=1)

                @jd.job(name="interrupt")
                async def interrupt():
                    raise KeyboardInterrupt

                async with jd:
                    state = await jd.wait_for_run(await jd.create_run("interrupt").run(), timeout=10)
                    print("STATUS", state.status, state.run_total_count, flush=True)
                await engine.dispose()
                print("STILL ALIVE", flush=True)

            asyncio.run(main(sys.argv[1]))
            """
        )
    )
    pythonpath = os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, str(script), f"sqlite+aiosqlite:///{tmp_path / 'app.db'}"],
        env={**os.environ, "PYTHONPATH": pythonpath},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "STATUS failed 2" in proc.stdout
    assert "STILL ALIVE" in proc.stdout


async def test_a_sync_job_returning_a_coroutine_fails_clearly(make_jobsd: MakeJobsD) -> None:
    jd = make_jobsd()

    async def forgot_async() -> str:
        return "never awaited"

    @jd.job(name="sync_returns_coroutine", retries_error_limit=0)
    def sync_returns_coroutine() -> Any:
        return forgot_async()

    async with jd:
        state = await jd.wait_for_run(await sync_returns_coroutine.create_run().run(), timeout=10)
    assert state.status is RunStatus.FAILED
    assert state.run_completed_error is not None
    assert "plain function but returned an awaitable" in state.run_completed_error
    assert "async def" in state.run_completed_error


def test_a_job_handle_cannot_be_registered_as_a_job(make_jobsd: MakeJobsD) -> None:
    jd = make_jobsd()

    @jd.job(name="original")
    async def original() -> None:
        return None

    with pytest.raises(InvalidJobFuncError, match=r"job\.func"):
        jd.register_job("copy", original)
    with pytest.raises(InvalidJobFuncError, match=r"job\.func"):
        jd.job(original)
    assert jd.register_job("copy", original.func).name == "copy"


async def test_a_job_cancelled_by_its_own_code_fails_and_others_run(
    make_jobsd: MakeJobsD, caplog: pytest.LogCaptureFixture
) -> None:
    jd = make_jobsd()

    @jd.job(name="self_cancelling", retries_error_limit=0)
    async def self_cancelling() -> None:
        raise asyncio.CancelledError

    @jd.job(name="fine")
    async def fine() -> str:
        return "fine"

    with caplog.at_level(logging.ERROR, logger="jobsd_async"):
        async with jd:
            bad = await jd.wait_for_run(await self_cancelling.create_run().run(), timeout=10)
            good = await jd.wait_for_run(await fine.create_run().run(), timeout=10)
    assert bad.status is RunStatus.FAILED
    assert good.result == "fine"


async def test_completions_carrying_huge_arguments_stay_within_the_servers_packet(
    make_jobsd: MakeJobsD,
) -> None:
    # Three failing runs with 6 MB of arguments each: their follow-ups copy the arguments,
    # and together (18 MB) they exceed MariaDB's default max_allowed_packet (16 MB).
    jd = make_jobsd(workers=20)
    release = asyncio.Event()

    @jd.job(name="big", retries_error_limit=1)
    async def big(payload: str) -> None:
        await release.wait()
        raise ValueError(f"rejected {len(payload)} characters")

    @jd.job(name="small")
    async def small(n: int) -> int:
        await release.wait()
        return n

    async with jd:
        payload = "x" * 6_000_000
        big_ids = [await big.create_run(payload).run() for _ in range(3)]
        small_ids = [await small.create_run(n).run() for n in range(10)]
        release.set()  # all thirteen end together: their completions share a window
        states = [await jd.wait_for_run(run_id, timeout=60) for run_id in big_ids + small_ids]
    assert [s.status for s in states[:3]] == [RunStatus.FAILED] * 3
    assert [s.run_total_count for s in states[:3]] == [2] * 3
    assert [s.result for s in states[3:]] == list(range(10))


class Evil(Exception):
    def __str__(self) -> str:
        raise SystemExit(3)


async def test_an_exception_whose_str_raises_system_exit_is_recorded(make_jobsd: MakeJobsD) -> None:
    jd = make_jobsd()

    @jd.job(name="evil", retries_error_limit=0)
    async def evil() -> None:
        raise Evil

    def evil_schedule(now: datetime) -> datetime:
        raise KeyboardInterrupt

    jd.register_schedule("evil", evil_schedule)

    @jd.job(name="tick")
    async def tick() -> None:
        return None

    async with jd:
        state = await jd.wait_for_run(await evil.create_run().run(), timeout=10)
        with pytest.raises(ScheduleError, match="evil"):
            await tick.create_run().schedule("evil").run()
    assert state.status is RunStatus.FAILED
    assert state.run_completed_error == "Evil: <unprintable Evil object>"
