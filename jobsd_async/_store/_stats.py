"""What the cluster did lately, for the dashboard's overview.

Every read here follows the finished-rows index (``run_completed_at``) over a bounded
window, or the pending and running indexes: older history is never scanned.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, case, func, literal, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from .._runs import CANCELLED_TEXT, TIMED_OUT_TEXT, RunStatus
from ._browse import database_now, status_condition
from ._create import notify_new
from ._rows import Store

_DELAY_SAMPLE = 500  # latest finished attempts whose start delay the overview shows


@dataclass(slots=True)
class Activity:
    """Finished attempts since ``since``: by job and outcome, and per minute."""

    since: datetime
    now: datetime
    by_job: dict[str, dict[RunStatus, int]] = field(default_factory=dict)
    per_minute: list[tuple[datetime, int, int]] = field(default_factory=list)  # minute, finished, failed
    start_delay_p50: float | None = None  # seconds from due to started, latest attempts
    start_delay_p95: float | None = None

    @property
    def finished(self) -> int:
        return sum(sum(counts.values()) for counts in self.by_job.values())

    @property
    def failed(self) -> int:
        return sum(counts.get(RunStatus.FAILED, 0) for counts in self.by_job.values())


def _outcome(store: Store) -> ColumnElement[Any]:
    error = store.runs.c.run_completed_error
    return case(
        (error.is_(None), literal(RunStatus.SUCCEEDED.value)),
        (error == TIMED_OUT_TEXT, literal(RunStatus.TIMED_OUT.value)),
        (error == CANCELLED_TEXT, literal(RunStatus.CANCELLED.value)),
        else_=literal(RunStatus.FAILED.value),
    )


def _minute(store: Store) -> ColumnElement[Any]:
    column = store.runs.c.run_completed_at
    name = store.dialect.name
    if name == "postgresql":
        return func.date_trunc("minute", column)
    if name == "mysql":
        return func.date_format(column, "%Y-%m-%d %H:%i:00")
    return func.strftime("%Y-%m-%d %H:%M:00", column)


async def activity(store: Store, conn: AsyncConnection, *, window: timedelta) -> Activity:
    """Finished attempts within ``window`` before the database clock's now."""
    runs = store.runs
    now = await database_now(store, conn)
    since = now - window
    recent = runs.c.run_completed_at >= since
    result = Activity(since=since, now=now)
    outcome = _outcome(store)
    for job, status, count in await conn.execute(
        select(runs.c.job, outcome, func.count()).where(recent).group_by(runs.c.job, outcome)
    ):
        result.by_job.setdefault(str(job), {})[RunStatus(status)] = int(count)
    minute = _minute(store)
    failed = case((runs.c.run_completed_error.is_(None), 0), else_=1)
    for bucket, count, failures in await conn.execute(
        select(minute, func.count(), func.sum(failed)).where(recent).group_by(minute).order_by(minute)
    ):
        stamp = bucket if isinstance(bucket, datetime) else datetime.fromisoformat(str(bucket))
        if stamp.tzinfo is None:
            stamp = stamp.replace(tzinfo=now.tzinfo)
        result.per_minute.append((stamp, int(count), int(failures or 0)))
    delays = [
        (started - due).total_seconds()
        for due, started in await conn.execute(
            select(runs.c.run_at, runs.c.run_started_at)
            .where(recent, runs.c.run_started_at.is_not(None))
            .order_by(runs.c.run_completed_at.desc())
            .limit(_DELAY_SAMPLE)
        )
        if due is not None and started is not None
    ]
    if delays:
        delays = [max(0.0, d) for d in delays]
        result.start_delay_p50 = statistics.median(delays)
        result.start_delay_p95 = sorted(delays)[min(len(delays) - 1, int(len(delays) * 0.95))]
    return result


async def run_now(store: Store, conn: AsyncConnection, row_id: int) -> bool:
    """Make a pending row due now; False if it is not pending (or already due)."""
    runs, dialect = store.runs, store.dialect
    result = await conn.execute(
        update(runs)
        .where(runs.c.id == row_id, status_condition(store, RunStatus.PENDING), runs.c.run_at > dialect.now())
        .values(run_at=dialect.now())
    )
    if result.rowcount != 1:
        return False
    await notify_new(store, conn)
    return True
