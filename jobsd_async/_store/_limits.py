"""``{prefix}limits``: the limits of jobs, as the instances running them declare them.

Each limited job has a row, and the row is what every instance enforces.  An instance with
workers declares its jobs' limits when it starts (and withdraws those of its jobs that have
none), so the last instance to start decides, as with the code of periodic jobs; the others
read the rows at every poll.  A claim of a limited job's runs locks its row, so claims of
one limited job take turns across the cluster.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Executable, bindparam, delete, select
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from .._config import JobLimits
from ._rows import Store


def _values(store: Store, job: str, limits: JobLimits, instance_id: int) -> dict[str, Any]:
    count, per = limits.rate if limits.rate is not None else (None, None)
    return {
        "job": job,
        "max_running": limits.max_running,
        "rate_count": count,
        "rate_period": per,
        "per_key": limits.per_key,
        "declared_by": instance_id,
        "declared_at": store.dialect.now(),
    }


def _upsert(store: Store, values: dict[str, Any]) -> Executable:
    """INSERT of a job's row, or UPDATE of it when it exists."""
    table, dialect = store.limits, store.dialect
    changed = {k: v for k, v in values.items() if k != "job"}
    if dialect.is_mysql:
        return mysql.insert(table).values(values).on_duplicate_key_update(**changed)
    upsert = postgresql.insert(table) if dialect.is_postgresql else sqlite.insert(table)
    return upsert.values(values).on_conflict_do_update(index_elements=[table.c.job], set_=changed)


async def declare(
    store: Store, conn: AsyncConnection, job: str, limits: JobLimits | None, *, instance_id: int
) -> None:
    """Record ``job``'s limits as this instance has them (None: it has none)."""
    if limits is None:
        await conn.execute(delete(store.limits).where(store.limits.c.job == job))
    else:
        await conn.execute(_upsert(store, _values(store, job, limits, instance_id)))


async def read(store: Store, conn: AsyncConnection, jobs: list[str] | None) -> dict[str, JobLimits]:
    """The limits in force for these jobs (None: every job), of those that have any."""
    if jobs is not None and not jobs:
        return {}
    table = store.limits
    stmt = select(table.c.job, table.c.max_running, table.c.rate_count, table.c.rate_period, table.c.per_key)
    if jobs is not None:
        stmt = stmt.where(table.c.job.in_(jobs))
    found = {}
    for job, max_running, rate_count, rate_period, per_key in await conn.execute(stmt.order_by(table.c.job)):
        limits = JobLimits.stored(max_running, rate_count, rate_period, per_key)
        if limits is not None and (jobs is None or job in jobs):
            found[str(job)] = limits
    return found


async def lock(store: Store, conn: AsyncConnection, job: str) -> bool:
    """Lock ``job``'s row until the transaction ends; False, without waiting, if another
    claimer holds it (or it is gone: the job's limits were withdrawn).

    Never waiting means an instance that stops while it holds the lock (a paused VM, a
    blocked event loop) holds back only this job's runs, not every claim of the others.
    """
    table = store.limits
    if store.dialect.is_sqlite:
        return True  # BEGIN IMMEDIATE: the transaction already holds the database's write lock
    stmt = store.statement(
        "lock limits",
        lambda: select(table.c.job).where(table.c.job == bindparam("job")).with_for_update(skip_locked=True),
    )
    return (await conn.execute(stmt, {"job": job})).first() is not None
