"""Completing an attempt: one transaction that closes the row and inserts its follow-up.

The row is closed only if it is still incomplete and still owned by this instance; the
unique name moves to the follow-up inside the same transaction, so no other chain can take
it in between, and a chain that ends frees it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, insert, update
from sqlalchemy.ext.asyncio import AsyncConnection

from .._chain import FollowUp
from .._runs import CANCELLED_TEXT
from ._rows import RunRow, Store


@dataclass(frozen=True, slots=True)
class Closing:
    """What to record on a completed row."""

    error: str | None
    result: str | None
    success: bool


@dataclass(frozen=True, slots=True)
class Completed:
    """A row was closed; ``follow_up_id`` is the row that continues its chain, if any."""

    follow_up_id: int | None
    cancelled: bool = False


async def complete(
    store: Store,
    conn: AsyncConnection,
    *,
    row: RunRow,
    closing: Closing,
    follow_up: FollowUp | None,
    instance_id: int,
    owner_id: int,
) -> Completed | None:
    """Close ``row`` and insert ``follow_up``.

    Returns None when the row was no longer open or no longer ``owner_id``'s: nothing is
    written.  A row whose chain a ``cancel_run`` asked to stop is closed as cancelled,
    whatever ``closing`` says, and gets no follow-up.
    """
    runs = store.runs
    now = store.dialect.now()
    open_and_owned = (
        runs.c.id == row.id,
        runs.c.run_completed_at.is_(None),
        runs.c.run_started_by == owner_id,
    )
    result = await conn.execute(
        update(runs)
        .where(*open_and_owned, runs.c.cancel_requested_at.is_(None))
        .values(
            run_completed_at=now,
            run_completed_error=closing.error,
            run_result=closing.result,
            name_active=None,
            run_success_count=runs.c.run_success_count + (1 if closing.success else 0),
        )
    )
    if result.rowcount != 1:
        cancelled = await conn.execute(
            update(runs)
            .where(*open_and_owned, runs.c.cancel_requested_at.is_not(None))
            .values(run_completed_at=now, run_completed_error=CANCELLED_TEXT, name_active=None)
        )
        return Completed(follow_up_id=None, cancelled=True) if cancelled.rowcount == 1 else None
    if follow_up is None:
        return Completed(follow_up_id=None)
    values = follow_up_values(row, follow_up, instance_id=instance_id, now=now)
    inserted = await conn.execute(insert(runs).values(values))
    return Completed(follow_up_id=int(inserted.inserted_primary_key[0]))  # type: ignore[index]


def follow_up_values(
    row: RunRow, follow_up: FollowUp, *, instance_id: int, now: ColumnElement[datetime]
) -> dict[str, Any]:
    return {
        "origin_id": row.run_id,
        "parent_id": row.id,
        "name": row.name,
        "name_active": row.name,
        "job": row.job,
        "job_args": row.job_args,
        "job_kwargs": row.job_kwargs,
        "delay": 0.0,
        "run_at": now if follow_up.run_at is None else follow_up.run_at,
        "run_total_count": row.run_total_count,
        "run_success_count": follow_up.run_success_count,
        "run_success_limit": row.run_success_limit,
        "run_timeout": row.run_timeout,
        "retries_on_error_count": follow_up.retries_on_error_count,
        "retries_on_error_limit": row.retries_on_error_limit,
        "retries_on_timeout_count": follow_up.retries_on_timeout_count,
        "retries_on_timeout_limit": row.retries_on_timeout_limit,
        "retry_backoff": row.retry_backoff,
        "retry_backoff_cap": row.retry_backoff_cap,
        "schedule": row.schedule,
        "created_at": now,
        "created_by": instance_id,
    }
