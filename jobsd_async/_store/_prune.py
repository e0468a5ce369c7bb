"""Retention: delete finished chains and long-dead instances, in bounded batches."""

from __future__ import annotations

from sqlalchemy import delete, exists, func, literal, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from ._resurrect import instance_gone
from ._rows import Store

BATCH = 500  # rows per delete statement: short transactions, short locks


async def prune_runs_batch(store: Store, conn: AsyncConnection, *, older_than: float) -> int:
    """Delete up to BATCH rows of chains whose every row finished more than ``older_than`` ago.

    A chain with any pending or running row, or any row finished more recently, is kept
    whole; a pending or running row is never deleted.
    """
    runs = store.runs
    row = runs.alias("r")
    other = runs.alias("x")
    cutoff = store.dialect.add_seconds(store.dialect.now(), literal(-older_than))
    root = func.coalesce(row.c.origin_id, row.c.id)
    live_or_recent = exists().where(
        or_(other.c.id == root, other.c.origin_id == root),
        or_(other.c.run_completed_at.is_(None), other.c.run_completed_at >= cutoff),
    )
    ids = (
        (
            await conn.execute(
                select(row.c.id)
                .where(row.c.run_completed_at < cutoff, ~live_or_recent)
                .order_by(row.c.id)
                .limit(BATCH)
            )
        )
        .scalars()
        .all()
    )
    if not ids:
        return 0
    # MySQL cannot delete from a table it selects from in the same statement: ids in hand.
    result = await conn.execute(
        delete(runs).where(runs.c.id.in_(list(ids)), runs.c.run_completed_at.is_not(None))
    )
    return int(result.rowcount)


async def prune_instances(store: Store, conn: AsyncConnection, *, older_than: float) -> int:
    """Delete rows of dead instances last seen more than ``older_than`` ago.

    Only instances the resurrector already takes for gone qualify, so a live instance's
    row is never deleted however small ``older_than`` is.
    """
    instances = store.instances
    cutoff = store.dialect.add_seconds(store.dialect.now(), literal(-older_than))
    result = await conn.execute(
        delete(instances).where(instance_gone(store), instances.c.last_seen_at < cutoff)
    )
    return int(result.rowcount)


async def prune(store: Store, *, older_than: float) -> int:
    """Delete finished chains and dead instances older than ``older_than`` seconds.

    Each batch is its own short transaction; returns the number of run rows deleted.
    """
    total = 0
    while True:
        deleted = await store.dialect.retrying(
            lambda conn: prune_runs_batch(store, conn, older_than=older_than), patient=True
        )
        total += deleted
        if deleted < BATCH:
            break
    await store.dialect.retrying(
        lambda conn: prune_instances(store, conn, older_than=older_than), patient=True
    )
    return total
