"""Finding due work (the poll) and claiming it.

A claim is one conditional UPDATE: it takes a row only while it is still pending and due
by the database clock, so exactly one instance ever wins a given row.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, and_, case, literal, null, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from ._rows import RunRow, Store


@dataclass(frozen=True, slots=True)
class ClaimResult:
    won: list[RunRow]
    # Rows still pending but not yet due by the database clock: try again at run_at.
    early: list[tuple[int, datetime]]


async def poll_due(
    store: Store,
    conn: AsyncConnection,
    *,
    jobs: Collection[str],
    schedules: Collection[str],
    horizon: float,
    limit: int,
) -> list[RunRow]:
    """Pending rows this instance can run that are due within ``horizon`` seconds, soonest first."""
    if not jobs:
        return []
    runs = store.runs
    dialect = store.dialect
    schedule_ok: ColumnElement[bool] = runs.c.schedule.is_(None)
    if schedules:
        schedule_ok = or_(schedule_ok, runs.c.schedule.in_(list(schedules)))
    stmt = (
        select(runs)
        .where(
            runs.c.run_started_at.is_(None),
            runs.c.job.in_(list(jobs)),
            runs.c.run_completed_at.is_(None),
            schedule_ok,
            runs.c.run_at <= dialect.add_seconds(dialect.now(), literal(horizon)),
        )
        .order_by(runs.c.run_at, runs.c.id)
        .limit(limit)
    )
    return [RunRow.of(m) for m in (await conn.execute(stmt)).mappings()]


async def claim(store: Store, conn: AsyncConnection, *, ids: Sequence[int], instance_id: int) -> ClaimResult:
    """Claim the given pending rows for this instance; the caller must not already own any."""
    runs = store.runs
    dialect = store.dialect
    now = dialect.now()
    stmt = (
        update(runs)
        .where(
            runs.c.id.in_(list(ids)),
            runs.c.run_started_at.is_(None),
            runs.c.run_completed_at.is_(None),
            runs.c.run_at <= now,
        )
        .values(
            run_started_at=now,
            run_started_by=instance_id,
            run_total_count=runs.c.run_total_count + 1,
            run_timeout_at=case(
                (runs.c.run_timeout.is_(None), null()),
                else_=dialect.add_seconds(now, runs.c.run_timeout),
            ),
        )
    )
    if dialect.update_returning:
        won = [RunRow.of(m) for m in (await conn.execute(stmt.returning(runs))).mappings()]
    else:
        await conn.execute(stmt)
        won = [
            RunRow.of(m)
            for m in (
                await conn.execute(
                    select(runs).where(
                        runs.c.id.in_(list(ids)),
                        runs.c.run_started_by == instance_id,
                        runs.c.run_completed_at.is_(None),
                    )
                )
            ).mappings()
        ]
    won_ids = {r.id for r in won}
    lost = [i for i in ids if i not in won_ids]
    early: list[tuple[int, datetime]] = []
    if lost:
        rows = await conn.execute(
            select(runs.c.id, runs.c.run_at).where(
                and_(
                    runs.c.id.in_(lost),
                    runs.c.run_started_at.is_(None),
                    runs.c.run_completed_at.is_(None),
                )
            )
        )
        early = [(int(r.id), r.run_at) for r in rows]
    return ClaimResult(won=won, early=early)
