"""Cancelling a chain: close its pending row, or flag its running row for the owner.

Each step is an UPDATE conditioned on the row's state, which every database evaluates on
the latest committed row (MySQL's REPEATABLE READ included), so a cancel racing a claim or a
completion sees what that one did instead of a stale snapshot.
"""

from __future__ import annotations

import enum
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Select, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from .._errors import StoreError
from .._runs import CANCELLED_TEXT
from ._rows import Store

_ROUNDS = 5  # the chain moved on between two statements this many times: give up


class CancelOutcome(enum.Enum):
    NOT_FOUND = "not found"
    ALREADY_FINISHED = "already finished"
    CANCELLED_PENDING = "cancelled pending"
    FLAGGED_RUNNING = "flagged running"


@dataclass(frozen=True, slots=True)
class Flagged:
    """The running row a cancel flagged, and the instance running it."""

    row_id: int
    owner: int


async def request_cancel(
    store: Store, conn: AsyncConnection, run_id: int
) -> tuple[CancelOutcome, Flagged | None]:
    """Cancel the chain of ``run_id``; returns the outcome and, if running, the row flagged."""
    runs, dialect = store.runs, store.dialect
    now = dialect.now()
    chain = or_(runs.c.id == run_id, runs.c.origin_id == run_id)
    for _ in range(_ROUNDS):
        closed = await conn.execute(
            update(runs)
            .where(chain, runs.c.run_started_at.is_(None), runs.c.run_completed_at.is_(None))
            .values(
                run_completed_at=now,
                run_completed_error=CANCELLED_TEXT,
                cancel_requested_at=now,
                name_active=None,
            )
        )
        if closed.rowcount:
            return CancelOutcome.CANCELLED_PENDING, None
        running = (runs.c.run_started_at.is_not(None), runs.c.run_completed_at.is_(None))
        flagged = await conn.execute(update(runs).where(chain, *running).values(cancel_requested_at=now))
        if flagged.rowcount:
            found = await _flagged_row(store, conn, chain)
            if found is not None:
                if dialect.is_postgresql:  # delivered on commit, to the owner's listener
                    payload = f"{found.owner}:{found.row_id}"
                    await conn.execute(select(func.pg_notify(store.cancel_channel, payload)))
                return CancelOutcome.FLAGGED_RUNNING, found
        first = await conn.execute(select(runs.c.id).where(runs.c.id == run_id))
        if first.first() is None:
            return CancelOutcome.NOT_FOUND, None
        still_open = await conn.execute(
            _locking(store, select(runs.c.id).where(chain, runs.c.run_completed_at.is_(None)))
        )
        if still_open.first() is None:
            return CancelOutcome.ALREADY_FINISHED, None
        # A follow-up appeared (or a pending row was claimed) between two statements: again.
    raise StoreError(f"run {run_id} kept changing while being cancelled; try again")


async def _flagged_row(store: Store, conn: AsyncConnection, chain: ColumnElement[bool]) -> Flagged | None:
    """The running row this transaction just flagged (and holds locked)."""
    runs = store.runs
    row = (
        await conn.execute(
            _locking(
                store,
                select(runs.c.id, runs.c.run_started_by).where(
                    chain,
                    runs.c.run_completed_at.is_(None),
                    runs.c.run_started_at.is_not(None),
                    runs.c.cancel_requested_at.is_not(None),
                ),
            )
        )
    ).first()
    if row is None or row.run_started_by is None:
        return None
    return Flagged(row_id=int(row.id), owner=int(row.run_started_by))


def _locking(store: Store, stmt: Select[Any]) -> Select[Any]:
    """A read of the latest committed rows: under MySQL's REPEATABLE READ a plain SELECT
    would read the transaction's first snapshot."""
    return stmt if store.dialect.is_sqlite else stmt.with_for_update()


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
