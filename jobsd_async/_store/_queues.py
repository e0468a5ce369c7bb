"""``{prefix}queues``: pausing and resuming queues, and what each queue holds.

A queue has a row once it has been paused; while ``paused_at`` is set, no instance starts
its runs (claims skip them, and a run created for a paused queue is inserted pending).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import case, func, select, update
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from ._rows import Store


@dataclass(frozen=True, slots=True)
class QueueInfo:
    """A queue: whether it is paused, and how many runs it holds that have not finished."""

    name: str
    paused: bool
    paused_at: datetime | None
    pending: int
    running: int


async def set_paused(store: Store, conn: AsyncConnection, name: str, *, paused: bool) -> bool:
    """Pause or resume queue ``name``; False if it already was so."""
    table, dialect = store.queues, store.dialect
    now = dialect.now()
    current = (
        await conn.execute(select(table.c.paused_at).where(table.c.name == name).with_for_update())
    ).first()
    if current is None:
        if not paused:
            return False
        values: dict[str, Any] = {"name": name, "paused_at": now, "updated_at": now}
        if dialect.is_mysql:
            stmt: Any = mysql.insert(table).values(values)
            stmt = stmt.on_duplicate_key_update(paused_at=now, updated_at=now)
        else:
            upsert = postgresql.insert(table) if dialect.is_postgresql else sqlite.insert(table)
            stmt = upsert.values(values).on_conflict_do_update(
                index_elements=[table.c.name], set_={"paused_at": now, "updated_at": now}
            )
        await conn.execute(stmt)
        return True
    if (current.paused_at is not None) == paused:
        return False
    await conn.execute(
        update(table).where(table.c.name == name).values(paused_at=now if paused else None, updated_at=now)
    )
    return True


async def list_queues(store: Store, conn: AsyncConnection) -> list[QueueInfo]:
    """Every queue that holds unfinished runs or has been paused, by name."""
    runs, table = store.runs, store.queues
    running = runs.c.run_started_at.is_not(None)
    counts = {
        str(name): (int(pending or 0), int(busy or 0))
        for name, pending, busy in await conn.execute(
            select(
                runs.c.queue,
                func.sum(case((running, 0), else_=1)),
                func.sum(case((running, 1), else_=0)),
            )
            .where(runs.c.run_completed_at.is_(None))
            .group_by(runs.c.queue)
        )
    }
    paused = {
        str(name): paused_at
        for name, paused_at in await conn.execute(select(table.c.name, table.c.paused_at))
    }
    return [
        QueueInfo(
            name=name,
            paused=paused.get(name) is not None,
            paused_at=paused.get(name),
            pending=counts.get(name, (0, 0))[0],
            running=counts.get(name, (0, 0))[1],
        )
        for name in sorted(counts.keys() | paused.keys())
    ]
