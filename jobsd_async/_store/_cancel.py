"""Cancelling a chain: close its pending row, or flag its running row for the owner."""

from __future__ import annotations

import enum
from collections.abc import Collection

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from .._runs import CANCELLED_TEXT
from ._read import latest_of_chain
from ._rows import RunRow, Store


class CancelOutcome(enum.Enum):
    NOT_FOUND = "not found"
    ALREADY_FINISHED = "already finished"
    CANCELLED_PENDING = "cancelled pending"
    FLAGGED_RUNNING = "flagged running"


async def request_cancel(
    store: Store, conn: AsyncConnection, run_id: int
) -> tuple[CancelOutcome, RunRow | None]:
    """Cancel the chain of ``run_id``; returns the outcome and the row it closed or flagged."""
    runs = store.runs
    now = store.dialect.now()
    # A pending row may be claimed between our read and our update: then flag it instead.
    for _ in range(3):
        row = await latest_of_chain(store, conn, run_id)
        if row is None:
            return CancelOutcome.NOT_FOUND, None
        if row.run_completed_at is not None:
            return CancelOutcome.ALREADY_FINISHED, None
        if row.run_started_at is None:
            closed = await conn.execute(
                update(runs)
                .where(
                    runs.c.id == row.id, runs.c.run_started_at.is_(None), runs.c.run_completed_at.is_(None)
                )
                .values(
                    run_completed_at=now,
                    run_completed_error=CANCELLED_TEXT,
                    cancel_requested_at=now,
                    name_active=None,
                )
            )
            if closed.rowcount == 1:
                return CancelOutcome.CANCELLED_PENDING, row
            continue
        flagged = await conn.execute(
            update(runs)
            .where(runs.c.id == row.id, runs.c.run_completed_at.is_(None))
            .values(cancel_requested_at=now)
        )
        if flagged.rowcount == 1:
            if store.dialect.is_postgresql:  # delivered on commit, to the owner's listener
                payload = f"{row.run_started_by}:{row.id}"
                await conn.execute(select(func.pg_notify(store.cancel_channel, payload)))
            return CancelOutcome.FLAGGED_RUNNING, row
    raise RuntimeError(f"run {run_id} kept changing while being cancelled")


async def cancel_requested(store: Store, conn: AsyncConnection, row_ids: Collection[int]) -> list[int]:
    """Which of these running rows a ``cancel_run`` has flagged."""
    if not row_ids:
        return []
    runs = store.runs
    rows = await conn.execute(
        select(runs.c.id).where(
            runs.c.id.in_(list(row_ids)),
            runs.c.run_completed_at.is_(None),
            runs.c.cancel_requested_at.is_not(None),
        )
    )
    return [int(r.id) for r in rows]
