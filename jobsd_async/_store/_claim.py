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

from .._config import MAX_COUNT, MAX_DURATION
from ._create import notify_new
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
    avoid: Collection[int] = (),
) -> list[RunRow]:
    """Claim up to ``limit`` pending rows of these jobs that are due by the database clock.

    Claims pick soonest first and skip rows another claimer has locked (``SKIP LOCKED``;
    SQLite has one writer at a time), and update only rows still pending and due, so a row
    is only ever claimed once.  Rows in ``avoid`` (handed back by this instance) are skipped.
    """
    dialect = store.dialect
    jobs, schedules, avoiding = tuple(jobs), tuple(schedules), bool(avoid)
    params: dict[str, Any] = {"instance_id": instance_id, "limit": limit}
    if avoiding:
        params["avoid"] = list(avoid)
    if not dialect.update_returning:
        return await _pick_then_claim(store, conn, jobs, schedules, params, avoiding=avoiding)
    stmt = store.statement(
        ("claim", jobs, schedules, avoiding), lambda: _claim_statement(store, jobs, schedules, avoiding)
    )
    result = await conn.execute(stmt, params)
    return [RunRow.of(m) for m in result.mappings()]


async def _pick_then_claim(
    store: Store,
    conn: AsyncConnection,
    jobs: tuple[str, ...],
    schedules: tuple[str, ...],
    params: dict[str, Any],
    *,
    avoiding: bool,
) -> list[RunRow]:
    """MySQL: lock the soonest claimable rows, skipping locked ones, then claim and read them.

    (MySQL cannot select from the table an UPDATE changes, nor return what it changed.)
    """
    runs = store.runs
    pick = store.statement(
        ("pick", jobs, schedules, avoiding),
        lambda: pick_statement(
            store, jobs, schedules, limit=bindparam("limit", type_=Integer), avoiding=avoiding
        ).with_for_update(skip_locked=True),
    )
    ids = [int(i) for i in (await conn.execute(pick, params)).scalars()]
    if not ids:
        return []
    claim = store.statement(
        ("claim", jobs, schedules, False), lambda: _claim_statement(store, jobs, schedules, False)
    )
    instance_id = params["instance_id"]
    await conn.execute(claim, {"instance_id": instance_id, "ids": ids})
    claimed = store.statement(
        "claimed",
        lambda: select(runs).where(
            runs.c.id.in_(bindparam("ids", expanding=True)), runs.c.run_started_by == bindparam("instance_id")
        ),
    )
    result = await conn.execute(claimed, {"instance_id": instance_id, "ids": ids})
    return [RunRow.of(m) for m in result.mappings()]


def pick_statement(
    store: Store,
    jobs: Collection[str],
    schedules: Collection[str],
    *,
    limit: int | BindParameter[int],
    avoiding: bool = False,
) -> Select[Any]:
    """The ids a claim takes: claimable rows, soonest first (without the ``avoid`` ids)."""
    runs = store.runs
    stmt = select(runs.c.id).where(*_claimable(store, jobs, schedules))
    if avoiding:
        stmt = stmt.where(runs.c.id.not_in(bindparam("avoid", expanding=True)))
    return stmt.order_by(runs.c.run_at, runs.c.id).limit(limit)


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
    store: Store, jobs: Collection[str], schedules: Collection[str], avoiding: bool
) -> Executable:
    runs = store.runs
    dialect = store.dialect
    now = dialect.now()
    stmt = update(runs)
    if dialect.is_mysql:
        # The rows this transaction locked; the conditions are checked again all the same.
        stmt = stmt.where(
            runs.c.id.in_(bindparam("ids", expanding=True)), *_claimable(store, jobs, schedules)
        )
    else:
        chosen = pick_statement(
            store, jobs, schedules, limit=bindparam("limit", type_=Integer), avoiding=avoiding
        )
        if dialect.is_postgresql:
            # Materialised, so the planner cannot re-run the SKIP LOCKED pick per outer row
            # (which could pick more than ``limit`` rows).
            picked = chosen.with_for_update(skip_locked=True).cte("picked").prefix_with("MATERIALIZED")
            stmt = stmt.where(runs.c.id.in_(select(picked.c.id)))
        else:
            stmt = stmt.where(runs.c.id.in_(chosen.scalar_subquery()))
    # Values in a row may have been written by anyone: a timeout that is not a positive
    # number, or too large to add to a timestamp, and a count at the column's maximum must
    # not make the statement fail, or no instance could claim anything again.
    timeout = runs.c.run_timeout
    stmt = stmt.values(
        run_started_at=now,
        run_started_by=bindparam("instance_id", type_=runs.c.run_started_by.type),
        run_total_count=case(
            (runs.c.run_total_count < MAX_COUNT, runs.c.run_total_count + 1), else_=runs.c.run_total_count
        ),
        run_timeout_at=case(
            (timeout > 0, dialect.add_seconds(now, dialect.least(timeout, literal(MAX_DURATION)))),
            else_=null(),
        ),
    )
    return stmt.returning(runs) if dialect.update_returning else stmt


async def hand_back(
    store: Store, conn: AsyncConnection, row_id: int, *, instance_id: int, delay: float
) -> bool:
    """Return a row ``instance_id`` claimed but cannot run to pending, due ``delay`` s from now.

    Undoes the claim (the attempt never started, so it counts for nothing); False if the
    row is no longer open and ours.
    """
    runs, dialect = store.runs, store.dialect
    result = await conn.execute(
        update(runs)
        .where(runs.c.id == row_id, runs.c.run_started_by == instance_id, runs.c.run_completed_at.is_(None))
        .values(
            run_started_at=None,
            run_started_by=None,
            run_timeout_at=None,
            run_total_count=case((runs.c.run_total_count > 0, runs.c.run_total_count - 1), else_=0),
            run_at=dialect.add_seconds(dialect.now(), literal(delay)),
        )
    )
    if result.rowcount != 1:
        return False
    await notify_new(store, conn)
    return True
