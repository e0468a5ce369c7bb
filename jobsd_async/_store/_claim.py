"""Finding due work (the poll) and claiming it.

A claim is one conditional UPDATE: it takes a row only while it is still pending and due
by the database clock, so exactly one instance ever wins a given row.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, case, literal, null, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from ._rows import RunRow, Store, schedule_computable


@dataclass(frozen=True, slots=True)
class ClaimResult:
    won: list[RunRow]
    # Candidates still pending: beyond the limit, not yet due by the database clock, or
    # locked by another claimer.  Worth trying again; the rest were taken or closed.
    pending: list[tuple[int, datetime]]


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
    stmt = (
        select(runs)
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
    return [RunRow.of(m) for m in (await conn.execute(stmt)).mappings()]


async def claim(
    store: Store, conn: AsyncConnection, *, ids: Sequence[int], limit: int, instance_id: int
) -> ClaimResult:
    """Claim up to ``limit`` of the given rows that are still pending and due, soonest first.

    The candidates may be stale (taken by others since they were polled); one statement
    skips those, so a crowd of instances does not pay a round trip per stale row.  The
    caller must not already own any of them.
    """
    runs = store.runs
    dialect = store.dialect
    now = dialect.now()
    claimable = (
        runs.c.id.in_(list(ids)),
        runs.c.run_started_at.is_(None),
        runs.c.run_completed_at.is_(None),
        runs.c.run_at <= now,
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
            stmt = stmt.where(*claimable, runs.c.id.in_(select(picked.c.id)))
        else:
            stmt = stmt.where(*claimable, runs.c.id.in_(chosen.scalar_subquery()))
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
    pending: list[tuple[int, datetime]] = []
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
        pending = [(int(r.id), r.run_at) for r in rows]
    return ClaimResult(won=won, pending=pending)
