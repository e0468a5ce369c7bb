"""Reading runs and instances for operators: listing chains, a chain's attempts, instances.

Used by the command line and the dashboard; not on any hot path.  A chain is listed by its
latest row, the one its status comes from (no later row of the same chain exists).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, func, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from .._runs import CANCELLED_TEXT, TIMED_OUT_TEXT, RunStatus
from ._resurrect import instance_gone
from ._rows import RunRow, Store


@dataclass(frozen=True, slots=True)
class RunFilter:
    """Which chains to list; every field that is set must match."""

    status: RunStatus | None = None
    job: str | None = None
    name: str | None = None
    queue: str | None = None  # of the chain's latest row
    args: str | None = None  # text the arguments contain (as stored: JSON)
    scheduled: bool = False  # only chains on a schedule
    since: datetime | None = None  # created at or after (the chain's first row)
    until: datetime | None = None  # created before
    before: int | None = None  # run ids below this one (the next page, newest first)


def status_condition(store: Store, status: RunStatus, row: Any = None) -> ColumnElement[bool]:
    """The rows whose status is ``status`` (see ``RunStatus.of_row``)."""
    c = (row if row is not None else store.runs).c
    started, completed, error = c.run_started_at, c.run_completed_at, c.run_completed_error
    conditions: dict[RunStatus, ColumnElement[bool]] = {
        RunStatus.PENDING: and_(started.is_(None), completed.is_(None)),
        RunStatus.RUNNING: and_(started.is_not(None), completed.is_(None)),
        RunStatus.SUCCEEDED: and_(completed.is_not(None), error.is_(None)),
        RunStatus.TIMED_OUT: and_(completed.is_not(None), error == TIMED_OUT_TEXT),
        RunStatus.CANCELLED: and_(completed.is_not(None), error == CANCELLED_TEXT),
        RunStatus.FAILED: and_(
            completed.is_not(None), error.is_not(None), error.not_in([TIMED_OUT_TEXT, CANCELLED_TEXT])
        ),
    }
    return conditions[status]


async def latest_rows(store: Store, conn: AsyncConnection, filters: RunFilter, *, limit: int) -> list[RunRow]:
    """The latest row of each chain that matches ``filters``, newest chain first.

    Pending and running chains are found through their (small) indexes.  Otherwise chains
    are walked newest first along the primary key, each one's latest row looked up through
    the follow-ups' index, until ``limit`` match: a page costs the same with a million
    finished rows (a filter that matches few of them walks further).
    """
    if filters.status in (RunStatus.PENDING, RunStatus.RUNNING):
        return await _open_latest_rows(store, conn, filters, limit=limit)
    runs = store.runs
    root, latest, follow = runs.alias("root"), runs.alias("r"), runs.alias("follow")
    last = select(func.max(follow.c.id)).where(follow.c.origin_id == root.c.id).scalar_subquery()
    stmt = (
        select(latest)
        .select_from(root.join(latest, latest.c.id == func.coalesce(last, root.c.id)))
        .where(root.c.origin_id.is_(None), *_chain_filters(root, filters))
        .order_by(root.c.id.desc())
        .limit(limit)
    )
    if filters.status is not None:
        stmt = stmt.where(status_condition(store, filters.status, latest))
    if filters.before is not None:
        stmt = stmt.where(root.c.id < filters.before)
    return [RunRow.of(m) for m in (await conn.execute(stmt)).mappings()]


def _chain_filters(row: Any, filters: RunFilter) -> list[ColumnElement[bool]]:
    """Conditions on what every row of a chain shares (its job, name, queue and arguments)
    and on its first row (its creation)."""
    conditions: list[ColumnElement[bool]] = []
    if filters.job is not None:
        conditions.append(row.c.job == filters.job)
    if filters.name is not None:
        conditions.append(row.c.name == filters.name)
    if filters.queue is not None:
        conditions.append(row.c.queue == filters.queue)
    if filters.args:
        conditions.append(or_(*(_contains(row, text) for text in _stored_forms(filters.args))))
    if filters.scheduled:
        conditions.append(row.c.schedule.is_not(None))
    if filters.since is not None:
        conditions.append(row.c.created_at >= filters.since)
    if filters.until is not None:
        conditions.append(row.c.created_at < filters.until)
    return conditions


async def _open_latest_rows(
    store: Store, conn: AsyncConnection, filters: RunFilter, *, limit: int
) -> list[RunRow]:
    """Pending or running chains (their latest row is the open one), newest chain first."""
    assert filters.status is not None
    runs = store.runs
    row, root = runs.alias("r"), runs.alias("root")
    chain = func.coalesce(row.c.origin_id, row.c.id)
    stmt = (
        select(row)
        .join(root, root.c.id == chain)
        .where(status_condition(store, filters.status, row), *_chain_filters(root, filters))
        .order_by(chain.desc())
        .limit(limit)
    )
    if filters.before is not None:
        stmt = stmt.where(chain < filters.before)
    return [RunRow.of(m) for m in (await conn.execute(stmt)).mappings()]


def _stored_forms(text: str) -> list[str]:
    """``text`` as it may appear in stored JSON: as typed, and with non-ASCII escaped."""
    escaped = json.dumps(text)[1:-1]
    return list(dict.fromkeys([text, escaped]))


def _contains(row: Any, text: str) -> ColumnElement[bool]:
    return or_(
        row.c.job_args.contains(text, autoescape=True), row.c.job_kwargs.contains(text, autoescape=True)
    )


async def upcoming_rows(store: Store, conn: AsyncConnection, *, limit: int) -> list[RunRow]:
    """Pending rows not due yet, soonest first (scheduled runs' next ticks, delayed runs)."""
    runs = store.runs
    stmt = (
        select(runs)
        .where(status_condition(store, RunStatus.PENDING), runs.c.run_at > store.dialect.now())
        .order_by(runs.c.run_at, runs.c.id)
        .limit(limit)
    )
    return [RunRow.of(m) for m in (await conn.execute(stmt)).mappings()]


async def chain_rows(store: Store, conn: AsyncConnection, run_id: int) -> list[RunRow]:
    """Every row of the chain whose first row is ``run_id``, oldest first."""
    runs = store.runs
    stmt = select(runs).where(or_(runs.c.id == run_id, runs.c.origin_id == run_id)).order_by(runs.c.id)
    return [RunRow.of(m) for m in (await conn.execute(stmt)).mappings()]


@dataclass(slots=True)
class JobBacklog:
    """Cluster-wide counts for one job (the metrics' gauges)."""

    pending: int = 0
    running: int = 0
    oldest_due_age: float = 0.0  # seconds since the oldest pending run was due (0: none)


@dataclass(frozen=True, slots=True)
class InstanceRecord:
    """A row of ``{prefix}instances``, with whether the timeout check takes it for alive."""

    id: int
    host: str | None
    pid: int | None
    workers: int
    supported_jobs: tuple[str, ...]
    supported_schedules: tuple[str, ...]
    heartbeat_interval: float
    alive: bool
    running: int  # rows it runs now
    runs_started: int
    runs_rescheduled: int
    runs_timed_out: int
    runs_timed_out_res: int
    runs_errors: int
    last_seen_at: datetime | None
    shutdown_at: datetime | None
    created_at: datetime
    queues: tuple[str, ...] | None = None  # the queues it takes runs from (None: all)


async def instance_records(
    store: Store, conn: AsyncConnection, *, include_gone: bool, ids: Sequence[int] = ()
) -> list[InstanceRecord]:
    """Instances, newest first: the live ones (and, with ``include_gone``, the rest)."""
    instances, runs = store.instances, store.runs
    gone = instance_gone(store)
    running = (
        select(func.count())
        .where(
            runs.c.run_started_by == instances.c.id,
            runs.c.run_started_at.is_not(None),
            runs.c.run_completed_at.is_(None),
        )
        .scalar_subquery()
    )
    stmt = select(instances, gone.label("gone"), running.label("running")).order_by(instances.c.id.desc())
    if not include_gone:
        stmt = stmt.where(~gone)
    if ids:
        stmt = stmt.where(instances.c.id.in_(list(ids)))
    records = []
    for r in (await conn.execute(stmt)).mappings():
        records.append(
            InstanceRecord(
                id=int(r["id"]),
                host=r["host"],
                pid=r["pid"],
                workers=int(r["workers"]),
                supported_jobs=_names(r["supported_jobs"]),
                supported_schedules=_names(r["supported_schedules"]),
                heartbeat_interval=float(r["heartbeat_interval"]),
                alive=not r["gone"],
                running=int(r["running"] or 0),
                runs_started=int(r["runs_started"]),
                runs_rescheduled=int(r["runs_rescheduled"]),
                runs_timed_out=int(r["runs_timed_out"]),
                runs_timed_out_res=int(r["runs_timed_out_res"]),
                runs_errors=int(r["runs_errors"]),
                last_seen_at=r["last_seen_at"],
                shutdown_at=r["shutdown_at"],
                created_at=r["created_at"],
                queues=_queues(r["queues"]),
            )
        )
    return records


def _queues(text: str | None) -> tuple[str, ...] | None:
    """The stored JSON list of queue names (None, or anything else written by hand: all)."""
    try:
        names = json.loads(text) if text else None
    except ValueError:
        return None
    if not isinstance(names, list):
        return None
    return tuple(str(n) for n in names)


def _names(text: str | None) -> tuple[str, ...]:
    return tuple(n for n in (text or "").split(",") if n)


async def database_now(store: Store, conn: AsyncConnection) -> datetime:
    value = (await conn.execute(select(store.dialect.now()))).scalar_one()
    assert isinstance(value, datetime)
    return value


async def backlog_by_job(store: Store, conn: AsyncConnection) -> dict[str, JobBacklog]:
    """Pending and running runs by job, and the age of each job's oldest due pending run.

    Two reads that follow the pending and the running partial indexes (PostgreSQL, SQLite):
    finished history is never scanned.
    """
    runs = store.runs
    now = await database_now(store, conn)
    pending = await conn.execute(
        select(runs.c.job, func.count(), func.min(runs.c.run_at))
        .where(status_condition(store, RunStatus.PENDING))
        .group_by(runs.c.job)
    )
    backlog: dict[str, JobBacklog] = {}
    for job, count, oldest in pending:
        due_for = 0.0 if oldest is None else max(0.0, (now - oldest).total_seconds())
        backlog[str(job)] = JobBacklog(pending=int(count), oldest_due_age=due_for)
    running = await conn.execute(
        select(runs.c.job, func.count())
        .where(status_condition(store, RunStatus.RUNNING))
        .group_by(runs.c.job)
    )
    for job, count in running:
        backlog.setdefault(str(job), JobBacklog()).running = int(count)
    return backlog
