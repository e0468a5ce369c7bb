"""Go JobsD v1.1.0 §9.1 (``job_test.go``) and §9.2 (``runInfo_test.go``): the job function contract.

In the port a job function is checked at registration (``InvalidJobFuncError``, Go's
``ErrJobFuncNotFunc``) and its arguments at submission (``JobArgsMismatchError``, Go's
``ErrJobFuncArgsMismatch``, by ``inspect.signature(...).bind`` after dropping a leading
``RunInfo`` parameter).  Go's ``ErrJobFuncNoErrRtn`` has no Python equivalent: a job succeeds
when it returns, whatever it returns.

This module deliberately does *not* use ``from __future__ import annotations``, so that both
real class annotations (``info: RunInfo``) and string annotations (``info: "RunInfo"``) are
exercised for the RunInfo detection.
"""

import asyncio
from typing import Any

import pytest
from conftest import MakeJobsD
from sqlalchemy import func, select

import jobsd_async
from jobsd_async import (
    InvalidJobFuncError,
    JobArgsMismatchError,
    JobsD,
    RunInfo,
    RunStatus,
)

WAIT = 10.0  # seconds; an upper bound for a run to finish, never expected to be reached


async def _count_rows(jd: JobsD, table_prefix: str) -> int:
    runs = jd.metadata.tables[f"{table_prefix}runs"]
    async with jd.engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(runs))).scalar_one())


# ---------------------------------------------------------------------------- §9.1 job_test.go


async def test_job_func_not_func(make_jobsd: MakeJobsD) -> None:
    """Go #1 TestJobFuncNotFunc: wrapping the integer 123 as a job function is refused.

    Asserts: ``register_job`` raises ``InvalidJobFuncError`` (Go ``ErrJobFuncNotFunc``), which is
    also a ``TypeError``; the name stays free, so a valid function can then take it.
    """
    jd = make_jobsd()
    not_a_function: Any = 123
    with pytest.raises(InvalidJobFuncError) as caught:
        jd.register_job("TestJobFuncNotFunc", not_a_function)
    assert isinstance(caught.value, TypeError)

    async def not_a_function_either() -> Any:  # an async generator is not a job either
        yield 1

    with pytest.raises(InvalidJobFuncError):
        jd.register_job("TestJobFuncNotFunc", not_a_function_either)

    def valid() -> None:
        return None

    job = jd.register_job("TestJobFuncNotFunc", valid)
    assert job.name == "TestJobFuncNotFunc"


async def test_job_func_return_value_is_free(make_jobsd: MakeJobsD) -> None:
    """Go #2 TestJobFuncNotFuncWithErr ("Job Func no rtn", "Job Func incorrect type rtn").

    Go requires an ``error`` result (``ErrJobFuncNoErrRtn``); Python has no such rule.  Ported
    as: a function returning nothing, and one returning an int, are both valid jobs (no error
    at registration or submission) and both runs succeed; the int is stored as the result.
    """
    jd = make_jobsd()
    calls: list[str] = []

    @jd.job("TestJobFuncNoRtn")
    async def no_rtn() -> None:
        calls.append("no rtn")

    @jd.job("TestJobFuncIntRtn")
    def int_rtn() -> int:
        calls.append("int rtn")
        return 123

    async with jd:
        no_rtn_id = await no_rtn.create_run().run()
        int_rtn_id = await int_rtn.create_run().run()
        no_rtn_state = await jd.wait_for_run(no_rtn_id, timeout=WAIT)
        int_rtn_state = await jd.wait_for_run(int_rtn_id, timeout=WAIT)

    assert sorted(calls) == ["int rtn", "no rtn"]
    assert no_rtn_state.status is RunStatus.SUCCEEDED
    assert no_rtn_state.result is None
    assert no_rtn_state.run_completed_error is None
    assert int_rtn_state.status is RunStatus.SUCCEEDED
    assert int_rtn_state.result == 123
    assert int_rtn_state.run_completed_error is None


async def test_job_func_args_mismatch(make_jobsd: MakeJobsD, table_prefix: str) -> None:
    """Go #3 TestJobFuncArgsMismatch: arguments that do not fit a three-int function.

    Go's five sub-tests: ``[1]``, ``[1,2]``, ``["1","2","3"]``, ``[1,2,"3"]``, ``[1,"2","3"]``.
    The port binds arguments to the signature and does not check their types, so the first two
    are kept as they are and the three type mismatches become Python's binding mismatches: too
    many positional arguments, an unknown keyword, and a parameter given twice.

    Asserts: each submission raises ``JobArgsMismatchError`` (also a ``TypeError``) and writes
    no row; a matching submission afterwards is accepted and runs.
    """
    jd = make_jobsd()
    got: list[tuple[int, int, int]] = []

    @jd.job("TestJobFuncArgsMismatch")
    async def three_ints(a: int, b: int, c: int) -> None:
        got.append((a, b, c))

    cases: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = [
        ("[1]", (1,), {}),
        ("[1,2]", (1, 2), {}),
        ("too many positional", (1, 2, 3, 4), {}),
        ("unknown keyword", (1, 2, 3), {"d": 4}),
        ("parameter given twice", (1, 2), {"a": 3}),
    ]
    async with jd:
        for label, args, kwargs in cases:
            with pytest.raises(JobArgsMismatchError) as caught:
                await jd.create_run("TestJobFuncArgsMismatch", *args, **kwargs).run()
            assert isinstance(caught.value, TypeError), label
            assert await _count_rows(jd, table_prefix) == 0, f"{label}: a row was written"

        run_id = await jd.create_run("TestJobFuncArgsMismatch", 1, 2, 3).run()
        state = await jd.wait_for_run(run_id, timeout=WAIT)

    assert state.status is RunStatus.SUCCEEDED
    assert got == [(1, 2, 3)]


async def test_job_func_run_info_execute(make_jobsd: MakeJobsD) -> None:
    """Go #4 TestJobFuncRunInfoExecute: a (RunInfo, int, int, str) function gets its RunInfo.

    Args ``(1, 2, "3")`` pass the check (RunInfo is not counted); executing records
    ``"1, 2, 3, <RunInfo id>"`` (Go: a synthetic RunInfo with ID 8; here the real run, whose
    first attempt's id is the run id) and the run succeeds.
    """
    jd = make_jobsd()
    records: list[str] = []
    infos: list[RunInfo] = []

    @jd.job("TestJobFuncRunInfoExecute")
    async def with_info(info: RunInfo, a: int, b: int, c: str) -> None:
        infos.append(info)
        records.append(f"{a}, {b}, {c}, {info.id}")

    async with jd:
        run_id = await with_info.create_run(1, 2, "3").run()
        state = await jd.wait_for_run(run_id, timeout=WAIT)

    assert state.status is RunStatus.SUCCEEDED
    assert state.run_completed_error is None
    assert records == [f"1, 2, 3, {run_id}"]
    assert isinstance(infos[0], RunInfo)
    assert infos[0].job_args == (1, 2, "3")
    assert infos[0].job == "TestJobFuncRunInfoExecute"


async def test_job_func_execute(make_jobsd: MakeJobsD) -> None:
    """Go #5 TestJobFuncExecute: an (int, int, str) function without RunInfo.

    Args ``(1, 2, "3")`` pass the check; executing records ``"1, 2, 3"`` and the run succeeds.
    The function is a plain ``def`` (it runs in a worker thread); #4 covers ``async def``.
    """
    jd = make_jobsd()
    records: list[str] = []

    @jd.job("TestJobFuncExecute")
    def plain(a: int, b: int, c: str) -> None:
        records.append(f"{a}, {b}, {c}")

    async with jd:
        run_id = await plain.create_run(1, 2, "3").run()
        state = await jd.wait_for_run(run_id, timeout=WAIT)

    assert state.status is RunStatus.SUCCEEDED
    assert state.run_completed_error is None
    assert records == ["1, 2, 3"]


# ---------------------------------------------------------------------------- §9.2 runInfo_test.go


async def test_run_info_job_func_detected(make_jobsd: MakeJobsD) -> None:
    """Go #6 TestRunInfoJobFuncDetected: a first parameter annotated RunInfo is detected.

    The function returns nothing (detection ignores the return type).  Covered annotations:
    the class ``RunInfo``, the string ``"RunInfo"`` and the string ``"jobsd_async.RunInfo"``,
    on ``async def`` and plain ``def``.  Detected means: a submission with *no* arguments binds
    (the RunInfo parameter is not a user argument) and the job receives a ``RunInfo`` whose id
    is the run id.
    """
    jd = make_jobsd()
    seen: dict[str, Any] = {}

    async def class_annotation(info: RunInfo) -> None:
        seen["class"] = info

    # The quotes are the point here: the string forms must be detected too.
    async def string_annotation(info: "RunInfo") -> None:
        seen["string"] = info

    def qualified_string_annotation(info: "jobsd_async.RunInfo") -> None:
        seen["qualified"] = info

    jobs = {
        "class": jd.register_job("RunInfoDetectedClass", class_annotation),
        "string": jd.register_job("RunInfoDetectedString", string_annotation),
        "qualified": jd.register_job("RunInfoDetectedQualified", qualified_string_annotation),
    }
    async with jd:
        run_ids = {key: await jd.create_run(job.name).run() for key, job in jobs.items()}
        states = {key: await jd.wait_for_run(run_id, timeout=WAIT) for key, run_id in run_ids.items()}

    for key, state in states.items():
        assert state.status is RunStatus.SUCCEEDED, key
        info = seen[key]
        assert isinstance(info, RunInfo), key
        assert info.id == run_ids[key], key


async def test_run_info_job_func_not_detected(make_jobsd: MakeJobsD) -> None:
    """Go #7 TestRunInfoJobFuncNotDetected: a first parameter that is not RunInfo is an argument.

    Covered: a first parameter annotated ``str``, and one merely *named* ``info`` (annotated
    ``Any``).  Not detected means: a submission with no arguments raises
    ``JobArgsMismatchError``, and with one argument the job receives exactly that argument.
    """
    jd = make_jobsd()
    seen: dict[str, Any] = {}
    done = asyncio.Event()

    async def first_is_str(s: str) -> None:
        seen["str"] = s
        if len(seen) == 2:
            done.set()

    async def named_info(info: Any) -> None:
        seen["named"] = info
        if len(seen) == 2:
            done.set()

    jd.register_job("RunInfoNotDetectedStr", first_is_str)
    jd.register_job("RunInfoNotDetectedNamed", named_info)
    async with jd:
        for name in ("RunInfoNotDetectedStr", "RunInfoNotDetectedNamed"):
            with pytest.raises(JobArgsMismatchError):
                await jd.create_run(name).run()
        str_id = await jd.create_run("RunInfoNotDetectedStr", "hello").run()
        named_id = await jd.create_run("RunInfoNotDetectedNamed", "world").run()
        str_state = await jd.wait_for_run(str_id, timeout=WAIT)
        named_state = await jd.wait_for_run(named_id, timeout=WAIT)

    assert str_state.status is RunStatus.SUCCEEDED
    assert named_state.status is RunStatus.SUCCEEDED
    assert done.is_set()
    assert seen == {"str": "hello", "named": "world"}
