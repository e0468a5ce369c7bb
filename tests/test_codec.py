"""Arguments and results round-trip by type: what a job declares is what it gets.

Each value travels as JSON through a real database and comes back as the type the job
function's annotations (or return annotation) declare.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import uuid
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any, NamedTuple, TypedDict

import msgspec
import pydantic
import pytest
from conftest import MakeJobsD, fetch_runs

from jobsd_async import Args, JobArgsMismatchError, JobArgsSerializationError, RunInfo, RunStatus


class Colour(enum.Enum):
    RED = "red"
    GREEN = "green"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


@dataclasses.dataclass(frozen=True)
class Point:
    x: int
    y: int
    at: datetime


class Totals(TypedDict):
    count: int
    amount: Decimal


class Pair(NamedTuple):
    left: uuid.UUID
    right: date


class Struct(msgspec.Struct, frozen=True):
    name: str
    when: time


class Customer(pydantic.BaseModel):
    id: uuid.UUID
    email: str
    since: date


SEEN: dict[str, Any] = {}

WHEN = datetime(2026, 12, 1, 12, 30, 15, 123456, tzinfo=UTC)
ID = uuid.UUID("12345678-1234-5678-1234-567812345678")


async def typed(
    ident: uuid.UUID,
    when: datetime,
    day: date,
    at: time,
    amount: Decimal,
    colour: Colour,
    level: Level,
    blob: bytes,
    point: Point,
    totals: Totals,
    pair: Pair,
    struct: Struct,
    customer: Customer,
    ids: list[uuid.UUID],
    by_id: dict[int, str],
    maybe: datetime | None = None,
    *rest: Decimal,
    **extra: date,
) -> dict[str, Any]:
    SEEN.update(locals())
    return {"ok": True}


async def returns_point(x: int) -> Point:
    return Point(x, x + 1, WHEN)


async def returns_customer() -> Customer:
    return Customer(id=ID, email="a@example.com", since=date(2020, 1, 2))


async def returns_list() -> list[tuple[Decimal, uuid.UUID]]:
    return [(Decimal("0.10"), ID)]


async def untyped(value, other):  # type: ignore[no-untyped-def]
    return [value, other]


def custom_annotation(value: Opaque) -> Any:
    return value


class Opaque:
    """A class of the user's own: no conversion; the JSON value passes as it is."""


ARGS = (
    ID,
    WHEN,
    date(2026, 2, 28),
    time(23, 59, 58, 1),
    Decimal("12345678901234567890.000000001"),
    Colour.GREEN,
    Level.HIGH,
    b"\x00\xffbinary\x80",
    Point(1, 2, WHEN),
    Totals(count=3, amount=Decimal("9.99")),
    Pair(ID, date(1999, 12, 31)),
    Struct("s", time(1, 2, 3)),
    Customer(id=ID, email="c@example.com", since=date(2001, 1, 1)),
    [ID, uuid.UUID(int=0)],
    {1: "one", 22: "twenty-two"},
    WHEN - timedelta(days=1),
    Decimal("1.5"),
    Decimal("-0"),
)


async def test_arguments_arrive_as_the_declared_types(make_jobsd: MakeJobsD) -> None:
    jd = make_jobsd()
    job = jd.register_job("typed", typed)
    SEEN.clear()
    async with jd:
        state = await job.wait_for_run(
            await job.create_run(*ARGS, birthday=date(1990, 5, 6)).run(), timeout=10
        )
    assert state.status is RunStatus.SUCCEEDED, state.run_completed_error
    expected = dict(
        zip(
            [
                "ident",
                "when",
                "day",
                "at",
                "amount",
                "colour",
                "level",
                "blob",
                "point",
                "totals",
                "pair",
                "struct",
                "customer",
                "ids",
                "by_id",
                "maybe",
            ],
            ARGS,
            strict=False,
        )
    )
    for name, value in expected.items():
        assert SEEN[name] == value, name
        assert type(SEEN[name]) is type(value), name
    assert SEEN["rest"] == (Decimal("1.5"), Decimal("-0"))
    assert all(type(v) is Decimal for v in SEEN["rest"])
    assert SEEN["extra"] == {"birthday": date(1990, 5, 6)}
    assert type(SEEN["totals"]["amount"]) is Decimal
    assert type(SEEN["pair"]) is Pair and type(SEEN["pair"].left) is uuid.UUID


async def test_the_stored_form_is_plain_ascii_json(make_jobsd: MakeJobsD) -> None:
    jd = make_jobsd()
    job = jd.register_job("typed", typed)
    async with jd:
        await job.create_run(*ARGS).run_after(3600)
        [row] = await fetch_runs(jd)
    stored = json.loads(row["job_args"])
    assert stored[0] == str(ID)
    assert stored[1] == "2026-12-01T12:30:15.123456Z"
    assert stored[4] == "12345678901234567890.000000001"  # exact: a string, never a float
    assert stored[12] == {"id": str(ID), "email": "c@example.com", "since": "2001-01-01"}
    assert row["job_args"].isascii()


@pytest.mark.parametrize(
    ("func", "args", "expected"),
    [
        (returns_point, (4,), Point(4, 5, WHEN)),
        (returns_customer, (), Customer(id=ID, email="a@example.com", since=date(2020, 1, 2))),
        (returns_list, (), [(Decimal("0.10"), ID)]),
    ],
)
async def test_results_arrive_as_the_return_type(
    make_jobsd: MakeJobsD, func: Any, args: tuple[Any, ...], expected: object
) -> None:
    jd = make_jobsd()
    job = jd.register_job("result", func)
    async with jd:
        run_id = await job.create_run(*args).run()
        state = await job.wait_for_run(run_id, timeout=10)
        assert state.result == expected
        assert type(state.result) is type(expected)
        # Also through the untyped entry points, and after a refresh.
        assert (await jd.get_run_state(run_id)).result == expected
        assert (await state.refresh()).result == expected


async def test_untyped_and_unknown_annotations_get_the_json_value(make_jobsd: MakeJobsD) -> None:
    jd = make_jobsd()
    loose = jd.register_job("untyped", untyped)
    custom = jd.register_job("custom", custom_annotation)
    async with jd:
        state = await loose.wait_for_run(await loose.create_run(ID, WHEN).run(), timeout=10)
        assert state.result == [str(ID), "2026-12-01T12:30:15.123456Z"]
        run_id = await custom.create_run({"k": [1, 2]}).run()  # type: ignore[arg-type]
        state = await custom.wait_for_run(run_id, timeout=10)
        assert state.result == {"k": [1, 2]}


async def test_a_value_that_does_not_fit_the_annotation_is_refused_before_writing(
    make_jobsd: MakeJobsD,
) -> None:
    jd = make_jobsd()
    job = jd.register_job("typed", typed)
    async with jd:
        bad = list(ARGS)
        bad[0] = "not-a-uuid"
        with pytest.raises(JobArgsMismatchError, match="argument 'ident' of job 'typed' does not fit"):
            await jd.create_run("typed", *bad).run()
        with pytest.raises(JobArgsMismatchError, match="argument 'birthday'"):
            await job.create_run(*ARGS, birthday="someday").run()  # type: ignore[arg-type]
        with pytest.raises(JobArgsMismatchError, match="argument 'customer'"):
            await jd.create_runs("typed", [ARGS, Args(*ARGS[:12], {"id": 1}, *ARGS[13:])])
        with pytest.raises(JobArgsSerializationError, match="argument 1"):
            await jd.create_run("typed", ID, Opaque(), *ARGS[2:]).run()  # by name: unchecked
        assert await fetch_runs(jd) == []


async def test_rows_that_no_longer_fit_run_with_their_json_values(
    make_jobsd: MakeJobsD, caplog: pytest.LogCaptureFixture
) -> None:
    """A row written before the annotation changed (or by 0.1.0, which did not check)."""
    jd = make_jobsd()
    seen: list[object] = []

    async def count(info: RunInfo, n: int) -> None:
        seen.append(n)

    job = jd.register_job("count", count)
    async with jd:
        run_id = await job.create_run(1).run_after(3600)
        runs = jd.metadata.tables[f"{jd._config.table_prefix}runs"]
        async with jd.engine.begin() as conn:
            await conn.execute(runs.update().values(job_args='["lots"]', run_at=WHEN - timedelta(days=365)))
        state = await job.wait_for_run(run_id, timeout=10)
    assert state.status is RunStatus.SUCCEEDED
    assert seen == ["lots"]
    assert any("does not fit its annotation int" in r.getMessage() for r in caplog.records)


async def test_registering_needs_no_resolvable_annotations(make_jobsd: MakeJobsD) -> None:
    jd = make_jobsd()

    async def unresolvable(value: DoesNotExist) -> Unknown:  # type: ignore[name-defined]  # noqa: F821
        return value

    job = jd.register_job("unresolvable", unresolvable)
    async with jd:
        state = await job.wait_for_run(await jd.create_run("unresolvable", {"a": 1}).run(), timeout=10)
    assert state.result == {"a": 1}


@pytest.mark.parametrize(
    "value",
    ["\x00nul", "lone \ud800 surrogate", "emoji \U0001f600", 'quote " and \\ backslash', "\u0149\u200b"],
)
async def test_hostile_strings_round_trip_exactly(make_jobsd: MakeJobsD, value: str) -> None:
    jd = make_jobsd()

    async def echo(text: str) -> str:
        return text

    job = jd.register_job("echo", echo)
    async with jd:
        state = await job.wait_for_run(await job.create_run(value).run(), timeout=10)
    assert state.result == value
