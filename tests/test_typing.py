"""Typed handles: mypy --strict checks a job's arguments (``RunInfo`` is not the caller's to pass)
and types its results.

A program using the public API is type-checked by mypy; the lines marked ``# E`` must be
exactly the ones it reports (with the marked message), and ``reveal_type`` must show the
marked types.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
from mypy import api

# ruff: noqa: E501

# (The program's lines carry the expected messages in full.)
PROGRAM = """
from datetime import datetime
from uuid import UUID

from jobsd_async import Args, Job, JobsD, RunInfo, RunState, cron, every

jd = JobsD()  # module level: the app factory gives the engine later


@jd.job("add")
async def add(a: int, b: int) -> int:
    return a + b


@jd.job("stamp")
def stamp(info: RunInfo, who: UUID, *, when: datetime | None = None) -> str:
    return str(who)


@jd.job
async def nothing() -> None:
    return None


@jd.job("report", periodic=cron("0 2 * * *"), periodic_args=Args("eu"))
async def report(region: str) -> str:
    return region


async def totals(a: int, b: int) -> int:
    return a + b


nightly = jd.register_job("nightly", totals, periodic=every(3600), periodic_args=(1, 2))
jd.register_job("bad", totals, periodic="every:5")  # E: No overload variant of "register_job" of "Registrations" matches argument types
jd.job("worse", periodic=lambda now: now)  # E: No overload variant of "job" of "Registrations" matches argument types


async def use(ident: UUID) -> None:
    await add.create_run(1, 2).run()
    await add.create_run(1, "2").run()  # E: Argument 2 to "create_run" of "Job" has incompatible type "str"; expected "int"
    await stamp.create_run(ident, when=datetime.now()).run()
    await stamp.create_run("not a uuid").run()  # E: Argument 1 to "create_run" of "Job" has incompatible type "str"; expected "UUID"
    await stamp.create_run(ident, colour="red").run()  # E: Unexpected keyword argument "colour"
    await jd.create_run("add", "anything").run()  # by name: checked at run time only
    await jd.create_run(add, 1).run()  # E: No overload variant of "create_run" of "RunsAPI" matches argument types
    await add.create_runs([add.args(1, 2), add.args(a=3, b=4), (5, 6)])
    await jd.create_runs(add, [add.args(1, b="x")])  # E: Argument "b" to "args" of "Job" has incompatible type "str"; expected "int"
    await jd.create_runs("add", [Args(1, 2), (3, 4)])

    state = await add.wait_for_run(1)
    reveal_type(state)  # R: jobsd_async._runs.RunState[int]
    total: int = state.result
    text: str = state.result  # E: Incompatible types in assignment (expression has type "int", variable has type "str")
    reveal_type(await stamp.get_run_state(2))  # R: jobsd_async._runs.RunState[str]
    reveal_type(await nothing.get_run_state(3))  # R: jobsd_async._runs.RunState[None]
    reveal_type(await jd.get_run_state(4))  # R: jobsd_async._runs.RunState[Any]
    reveal_type(add)  # R: jobsd_async._jobs.Job[[a: int, b: int], int]
    reveal_type(report)  # R: jobsd_async._jobs.Job[[region: str], str]
    reveal_type(nightly)  # R: jobsd_async._jobs.Job[[a: int, b: int], int]
    reveal_type(report.periodic)  # R: jobsd_async._schedules.BuiltinSchedule | None
    await report.create_run(1).run()  # E: Argument 1 to "create_run" of "Job" has incompatible type "int"; expected "str"


def takes(job: Job[[int, int], int], loose: Job[[int, int]]) -> None: ...


takes(add, add)
takes(stamp, stamp)  # E: Argument 1 to "takes" has incompatible type
"""


def test_mypy_checks_arguments_and_types_results(tmp_path: Path) -> None:
    source = textwrap.dedent(PROGRAM)
    program = tmp_path / "program.py"
    program.write_text(source)
    stdout, stderr, _ = api.run(
        ["--strict", "--no-incremental", "--show-traceback", "--hide-error-context", str(program)]
    )
    assert not stderr, stderr
    reported: dict[int, list[str]] = {}
    for line in stdout.splitlines():
        found = re.match(r".*program\.py:(\d+): (error|note): (.*)", line)
        if found:
            reported.setdefault(int(found[1]), []).append(found[3])
    for number, line in enumerate(source.splitlines(), start=1):
        messages = reported.pop(number, [])
        if "# E: " in line:
            expected = line.split("# E: ", 1)[1]
            assert any(expected in message for message in messages), (number, line, messages)
        elif "# R: " in line:
            expected = line.split("# R: ", 1)[1]
            assert any(f'Revealed type is "{expected}"' in m for m in messages), (number, line, messages)
        else:
            assert not [m for m in messages if not m.startswith("See ")], (number, line, messages)
    assert not reported, f"mypy reported lines not marked: {reported}"


pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
