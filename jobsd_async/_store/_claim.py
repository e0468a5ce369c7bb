"""Finding due work (the poll) and claiming it.

The poll only tells an instance *when* to try; the claim decides what it gets.  A claim
is one UPDATE that takes pending rows only while they are still pending and due by the
database clock, so exactly one instance ever wins a given row.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime

from sqlalchemy import case, literal, null, select, update
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
    runs = store.runs
    dialect = store.dialect
    stmt = (
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
    return [(int(r.id), r.run_at) for r in await conn.execute(stmt)]


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
    runs = store.runs
    dialect = store.dialect
    now = dialect.now()
    claimable = (
        runs.c.run_started_at.is_(None),
        runs.c.run_completed_at.is_(None),
        runs.c.run_at <= now,
        runs.c.job.in_(list(jobs)),
        schedule_computable(runs, schedules),
    )
    stmt = update(runs)
    if dialect.is_mysql:
        # MySQL cannot select from the table it updates; it has UPDATE ... LIMIT instead.
        stmt = stmt.where(*claimable).with_dialect_options(mysql_limit=limit)
    else:
        chosen = select(runs.c.id).where(*claimable).order_by(runs.c.run_at, runs.c.id).limit(limit)
        if dialect.is_postgresql:
            # Materialised, so the planner cannot re-run the SKIP LOCKED pick per outer row
            # (which could pick more than ``limit`` rows).
            picked = chosen.with_for_update(skip_locked=True).cte("picked").prefix_with("MATERIALIZED")
            stmt = stmt.where(runs.c.id.in_(select(picked.c.id)))
        else:
            stmt = stmt.where(runs.c.id.in_(chosen.scalar_subquery()))
    stmt = stmt.values(
        run_started_at=now,
        run_started_by=instance_id,
        run_total_count=runs.c.run_total_count + 1,
        run_timeout_at=case(
            (runs.c.run_timeout.is_(None), null()),
            else_=dialect.add_seconds(now, runs.c.run_timeout),
        ),
    )
    if dialect.update_returning:
        return [RunRow.of(m) for m in (await conn.execute(stmt.returning(runs))).mappings()]
    await conn.execute(stmt)
    # Without RETURNING: ours, open, and not already running here.  This also picks up a row
    # whose earlier claim committed but whose answer was lost, which is what we want.
    won = select(runs).where(runs.c.run_started_by == instance_id, runs.c.run_completed_at.is_(None))
    if tracked:
        won = won.where(runs.c.id.not_in(list(tracked)))
    return [RunRow.of(m) for m in (await conn.execute(won)).mappings()]
