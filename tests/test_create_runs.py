"""create_runs: many one-off runs in one multi-row insert, validated all or nothing."""

from __future__ import annotations

import pytest
from conftest import MakeJobsD, fetch_runs

from jobsd_async import Args, JobArgsMismatchError, JobArgsSerializationError, RunStatus


async def test_create_runs_inserts_and_runs_them_all(make_jobsd: MakeJobsD) -> None:
    jd = make_jobsd()

    @jd.job(name="scale")
    async def scale(x: int, *, factor: int = 1) -> int:
        return x * factor

    async with jd:
        ids = await jd.create_runs(scale, [(1,), Args(2, factor=10), (3,)])
        states = [await jd.wait_for_run(i, timeout=10) for i in ids]
        rows = await fetch_runs(jd)

    assert ids == sorted(ids) and len(set(ids)) == 3
    assert [s.result for s in states] == [1, 20, 3]
    assert all(s.status is RunStatus.SUCCEEDED for s in states)
    assert [r["id"] for r in rows] == ids


@pytest.mark.parametrize(
    ("items", "error"),
    [([(1,), ("x", "y", "z")], JobArgsMismatchError), ([(1,), (object(),)], JobArgsSerializationError)],
)
async def test_one_bad_item_writes_nothing(
    make_jobsd: MakeJobsD, items: list[tuple[object, ...]], error: type[Exception]
) -> None:
    jd = make_jobsd()
    jd.register_job("one", lambda x: x)
    async with jd:
        with pytest.raises(error):
            await jd.create_runs("one", items)
        with pytest.raises(TypeError, match="tuple of arguments or an Args"):
            await jd.create_runs("one", [[1]])  # type: ignore[list-item]
        assert await fetch_runs(jd) == []


async def test_create_runs_in_the_callers_transaction(make_jobsd: MakeJobsD) -> None:
    jd = make_jobsd()
    jd.register_job("one", lambda x: x)
    async with jd:
        async with jd.engine.connect() as conn:
            await conn.begin()
            await jd.create_runs("one", [(1,), (2,)], conn=conn)
            await conn.rollback()
        assert await fetch_runs(jd) == []
        async with jd.engine.connect() as conn:
            await conn.begin()
            ids = await jd.create_runs("one", [(1,), (2,)], conn=conn)
            await conn.commit()
        assert [(await jd.wait_for_run(i, timeout=10)).result for i in ids] == [1, 2]
