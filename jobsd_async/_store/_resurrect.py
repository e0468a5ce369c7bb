"""The timeout scan: running rows whose deadline passed or whose owner is gone."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, literal, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from .._config import MAX_DURATION
from ._rows import RunRow, Store, schedule_computable

# An owner not seen for this many of its own heartbeat intervals is taken for dead.
MISSED_BEATS = 3


def instance_gone(store: Store) -> ColumnElement[bool]:
    """Instances that shut down, or have not beaten for MISSED_BEATS of their own intervals."""
    instances, dialect = store.instances, store.dialect
    # Clamped: an absurd interval in a row written by hand must not make the scan fail.
    missed = dialect.least(instances.c.heartbeat_interval * literal(MISSED_BEATS), literal(MAX_DURATION))
    return or_(
        instances.c.shutdown_at.is_not(None),
        dialect.add_seconds(instances.c.last_seen_at, missed) < dialect.now(),
    )


async def find_orphans(
    store: Store,
    conn: AsyncConnection,
    *,
    schedules: Collection[str],
    limit: int,
    instance_id: int,
    own_grace: float,
) -> list[RunRow]:
    """Running rows past ``run_timeout_at``, or whose owner died or shut down, oldest first.

    Rows owned by ``instance_id`` itself are returned too: a claim whose answer was lost
    in a database fault leaves such a row, and the caller skips the ones it is running.
    Rows with a schedule this instance does not know are left for an instance that does.
    """
    stmt = orphans_statement(
        store, schedules=schedules, limit=limit, instance_id=instance_id, own_grace=own_grace
    )
    return [RunRow.of(m) for m in (await conn.execute(stmt)).mappings()]


def orphans_statement(
    store: Store, *, schedules: Collection[str], limit: int, instance_id: int, own_grace: float
) -> Select[Any]:
    runs, instances, dialect = store.runs, store.instances, store.dialect
    now = dialect.now()
    owner_gone = or_(instances.c.id.is_(None), instance_gone(store))
    return (
        select(runs)
        .select_from(runs.outerjoin(instances, instances.c.id == runs.c.run_started_by))
        .where(
            runs.c.run_completed_at.is_(None),
            runs.c.run_started_at.is_not(None),
            or_(
                runs.c.run_timeout_at <= now,
                owner_gone,
                # ours but untracked: a claim whose answer was lost (given time to be tracked)
                and_(
                    runs.c.run_started_by == instance_id,
                    runs.c.run_started_at < dialect.add_seconds(now, literal(-own_grace)),
                ),
            ),
            schedule_computable(store, schedules),
        )
        .order_by(runs.c.id)
        .limit(limit)
    )
