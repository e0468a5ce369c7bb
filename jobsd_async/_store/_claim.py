"""Finding due work (the poll) and claiming it.

The poll only tells an instance *when* to try; the claim decides what it gets.  A claim
is one UPDATE that takes pending rows only while they are still pending and due by the
database clock, so exactly one instance ever wins a given row.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BindParameter,
    ColumnElement,
    Executable,
    Integer,
    Select,
    bindparam,
    case,
    literal,
    null,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from ._rows import RunRow, Store, schedule_computable


async def poll_due(
    store: Store,
    conn: AsyncConnection,
    *,
    jobs: Collection[str],
    schedules: Collection[str],
    horizon: float,
    limit: int,
) -> list[tuple[int, datetime]]:
    """Ids and due times of pending rows this instance can run, due within ``horizon`` s."""
    if not jobs:
        return []
    stmt = poll_statement(store, jobs, schedules, horizon=horizon, limit=limit)
    return [(int(r.id), r.run_at) for r in await conn.execute(stmt)]


def poll_statement(
    store: Store, jobs: Collection[str], schedules: Collection[str], *, horizon: float, limit: int
) -> Select[Any]:
    runs = store.runs
    dialect = store.dialect
    return (
        select(runs.c.id, runs.c.run_at)
        .where(
            runs.c.run_started_at.is_(None),
            runs.c.job.in_(list(jobs)),
            runs.c.run_completed_at.is_(None),
            schedule_computable(runs, schedules),
            runs.c.run_at <= dialect.add_seconds(dialect.now(), literal(horizon)),
        )
        .order_by(runs.c.run_at, runs.c.id)
        .limit(limit)
    )


async def claim_due(
    store: Store,
    conn: AsyncConnection,
    *,
    jobs: Collection[str],
    schedules: Collection[str],
    limit: int,
    instance_id: int,
    tracked: Collection[int],
) -> list[RunRow]:
    """Claim up to ``limit`` pending rows of these jobs that are due by the database clock.

    One statement picks and claims them, soonest first; concurrent claimers skip each
    other's rows (``SKIP LOCKED`` on PostgreSQL) or wait and re-check (MySQL, SQLite), so a
    row is only ever claimed once.  ``tracked`` are the rows this instance already runs.
    """
    dialect = store.dialect
    jobs, schedules = tuple(jobs), tuple(schedules)
    # MySQL renders UPDATE ... LIMIT literally; elsewhere the limit is a bind parameter.
    key = ("claim", jobs, schedules, limit if dialect.is_mysql else None)
    stmt = store.statement(key, lambda: _claim_statement(store, jobs, schedules, limit))
    params = {"instance_id": instance_id, "limit": limit}
    runs = store.runs
    if dialect.update_returning:
        result = await conn.execute(stmt, params)
        return [RunRow.of(m) for m in result.mappings()]
    await conn.execute(stmt, params)
    # Without RETURNING: ours, open, and not already running here.  This also picks up a row
    # whose earlier claim committed but whose answer was lost, which is what we want.
    won = store.statement(
        "claimed",
        lambda: select(runs).where(
            runs.c.run_started_by == bindparam("instance_id"),
            runs.c.run_completed_at.is_(None),
            runs.c.id.not_in(bindparam("tracked", expanding=True)),
        ),
    )
    result = await conn.execute(won, {"instance_id": instance_id, "tracked": list(tracked)})
    return [RunRow.of(m) for m in result.mappings()]


def pick_statement(
    store: Store, jobs: Collection[str], schedules: Collection[str], *, limit: int | BindParameter[int]
) -> Select[Any]:
    """The ids a claim takes: claimable rows, soonest first."""
    runs = store.runs
    return (
        select(runs.c.id)
        .where(*_claimable(store, jobs, schedules))
        .order_by(runs.c.run_at, runs.c.id)
        .limit(limit)
    )


def _claimable(
    store: Store, jobs: Collection[str], schedules: Collection[str]
) -> tuple[ColumnElement[bool], ...]:
    runs = store.runs
    return (
        runs.c.run_started_at.is_(None),
        runs.c.run_completed_at.is_(None),
        runs.c.run_at <= store.dialect.now(),
        runs.c.job.in_(list(jobs)),
        schedule_computable(runs, schedules),
    )


def _claim_statement(
    store: Store, jobs: Collection[str], schedules: Collection[str], limit: int
) -> Executable:
    runs = store.runs
    dialect = store.dialect
    now = dialect.now()
    stmt = update(runs)
    if dialect.is_mysql:
        # MySQL cannot select from the table it updates; it has UPDATE ... LIMIT instead.
        stmt = stmt.where(*_claimable(store, jobs, schedules)).with_dialect_options(mysql_limit=limit)
    else:
        chosen = pick_statement(store, jobs, schedules, limit=bindparam("limit", type_=Integer))
        if dialect.is_postgresql:
            # Materialised, so the planner cannot re-run the SKIP LOCKED pick per outer row
            # (which could pick more than ``limit`` rows).
            picked = chosen.with_for_update(skip_locked=True).cte("picked").prefix_with("MATERIALIZED")
            stmt = stmt.where(runs.c.id.in_(select(picked.c.id)))
        else:
            stmt = stmt.where(runs.c.id.in_(chosen.scalar_subquery()))
    stmt = stmt.values(
        run_started_at=now,
        run_started_by=bindparam("instance_id", type_=runs.c.run_started_by.type),
        run_total_count=runs.c.run_total_count + 1,
        run_timeout_at=case(
            (runs.c.run_timeout.is_(None), null()),
            else_=dialect.add_seconds(now, runs.c.run_timeout),
        ),
    )
    return stmt.returning(runs) if dialect.update_returning else stmt
