"""Built-in schedules every() and cron(): stored in the row, computable by any instance."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from conftest import MakeJobsD, fetch_runs

from jobsd_async import RunInfo, RunStatus, cron, every

NEW_YORK = ZoneInfo("America/New_York")


def local(year: int, month: int, day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=NEW_YORK)


def test_every_adds_its_interval() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert every(90)(now) == now + timedelta(seconds=90)
    assert every(timedelta(minutes=2))(now) == now + timedelta(minutes=2)
    assert every(1.5).spec == "every:1.5"


@pytest.mark.parametrize("interval", [0, -1, "5"])
def test_every_rejects_bad_intervals(interval: object) -> None:
    with pytest.raises((ValueError, TypeError), match="interval"):
        every(interval)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("expression", "tz"),
    [("61 * * * *", "UTC"), ("* * *", "UTC"), ("* * * * *", "Mars/Olympus"), ("* * * * * 99", "UTC")],
)
def test_cron_rejects_bad_input(expression: str, tz: str) -> None:
    with pytest.raises(ValueError, match=r"cron|time zone"):
        cron(expression, tz)


def test_cron_in_utc_with_seconds_field() -> None:
    schedule = cron("*/20 * * * * 15")
    assert schedule.spec == "cron:UTC:*/20 * * * * 15"
    start = datetime(2026, 1, 1, 0, 0, 0, tzinfo=UTC)
    first = schedule(start)
    assert first == datetime(2026, 1, 1, 0, 0, 15, tzinfo=UTC)
    assert schedule(first) == datetime(2026, 1, 1, 0, 20, 15, tzinfo=UTC)


def test_cron_skipped_hour_at_spring_forward_runs_once_after_the_gap() -> None:
    daily = cron("30 2 * * *", "America/New_York")  # 2026-03-08 02:00 local does not exist
    first = daily(local(2026, 3, 7, 23, 0))
    assert first.astimezone(NEW_YORK) == local(2026, 3, 8, 3, 0)
    assert daily(first).astimezone(NEW_YORK) == local(2026, 3, 9, 2, 30)


def test_cron_repeated_hour_at_fall_back_runs_a_daily_job_once() -> None:
    daily = cron("30 1 * * *", "America/New_York")  # 2026-11-01 01:00-02:00 happens twice
    first = daily(local(2026, 10, 31, 23, 0))
    second = daily(first)
    assert first.astimezone(NEW_YORK).replace(tzinfo=None) == datetime(2026, 11, 1, 1, 30)
    assert second - first == timedelta(hours=25)


def test_cron_interval_job_runs_in_both_repeated_hours() -> None:
    half_hourly = cron("*/30 1 * * *", "America/New_York")
    ticks = [half_hourly(local(2026, 10, 31, 23, 0))]
    for _ in range(3):
        ticks.append(half_hourly(ticks[-1]))
    assert [t - ticks[0] for t in ticks] == [timedelta(minutes=30 * i) for i in range(4)]


def test_builtin_prefix_is_reserved(make_jobsd: MakeJobsD) -> None:
    jd = make_jobsd()
    with pytest.raises(ValueError, match="every:"):
        jd.register_schedule("every:5", lambda now: now)


async def test_instance_without_registrations_runs_builtin_schedules(make_jobsd: MakeJobsD) -> None:
    creator = make_jobsd(workers=0)
    creator.register_job("tick", lambda: None)
    worker = make_jobsd(poll_interval=0.05)  # registers the job, but no schedule at all
    counts: list[int] = []

    @worker.job(name="tick")
    def tick(info: RunInfo) -> None:
        counts.append(info.run_success_count)

    async with creator, worker:
        by_interval = await creator.create_run("tick").schedule(every(0.1)).limit(3).run()
        by_cron = await creator.create_run("tick").schedule(cron("* * * * * *")).limit(2).run()
        states = [await worker.wait_for_run(i, timeout=15) for i in (by_interval, by_cron)]
        rows = await fetch_runs(worker)

    assert all(s.status is RunStatus.SUCCEEDED for s in states)
    assert [s.run_success_count for s in states] == [3, 2]
    assert sorted(counts) == [0, 0, 1, 1, 2]
    assert {r["schedule"] for r in rows} == {"every:0.1", "cron:UTC:* * * * * *"}
    assert all(r["run_started_by"] == worker.instance_id for r in rows)
