"""Inserting a chain's first row, with the unique-name check."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ClauseElement, ColumnElement, func, insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from .._config import Backoff
from ._rows import Store

# A unique name can be freed between our failed insert and our look-up; then we insert again.
_MAX_INSERT_ATTEMPTS = 5


async def insert_unique(store: Store, conn: AsyncConnection, values: dict[str, Any]) -> tuple[int, bool]:
    """Insert a first row unless its name is active; return (run id, inserted).

    When a pending or running row already holds ``name_active``, nothing is inserted and the
    run id of that row's chain is returned.
    """
    for _ in range(_MAX_INSERT_ATTEMPTS):
        new_id = await _insert_if_name_free(store, conn, values)
        if new_id is not None:
            return new_id, True
        existing = await active_run_id(store, conn, values["name_active"])
        if existing is not None:
            return existing, False
    raise RuntimeError(f"unique name {values['name_active']!r} kept changing hands; giving up")


async def insert_many(store: Store, conn: AsyncConnection, rows: list[dict[str, Any]]) -> list[int]:
    """Insert rows without unique-name conflicts, one round trip per shape where possible.

    A value that is a SQL expression (the database clock) is rendered once per statement,
    so rows are grouped by which columns carry expressions; ids come back in row order.
    """
    groups: dict[tuple[str, ...], list[int]] = {}
    for index, row in enumerate(rows):
        shape = tuple(sorted(k for k, v in row.items() if isinstance(v, ClauseElement)))
        groups.setdefault(shape, []).append(index)
    ids = [0] * len(rows)
    await notify_new(store, conn)
    for shape, indexes in groups.items():
        shared = {k: rows[indexes[0]][k] for k in shape}
        params = [{k: v for k, v in rows[i].items() if k not in shared} for i in indexes]
        for index, new_id in zip(indexes, await _insert_group(store, conn, shared, params), strict=True):
            ids[index] = new_id
    return ids


async def _insert_group(
    store: Store, conn: AsyncConnection, shared: dict[str, Any], params: list[dict[str, Any]]
) -> list[int]:
    runs = store.runs
    stmt = insert(runs).values(**shared)
    if store.dialect.insert_returning:
        result = await conn.execute(stmt.returning(runs.c.id, sort_by_parameter_order=True), params)
        return [int(i) for i in result.scalars()]
    ids = []  # MySQL 8 has no RETURNING: one insert per row, still one transaction
    for row in params:
        ids.append(int((await conn.execute(stmt, row)).inserted_primary_key[0]))  # type: ignore[index]
    return ids


async def notify_new(store: Store, conn: AsyncConnection) -> None:
    """On PostgreSQL, wake listening instances when this transaction commits."""
    if store.dialect.is_postgresql:
        await conn.execute(select(func.pg_notify(store.new_channel, "")))


async def active_run_id(store: Store, conn: AsyncConnection, name: str) -> int | None:
    runs = store.runs
    row = (await conn.execute(select(runs.c.id, runs.c.origin_id).where(runs.c.name_active == name))).first()
    if row is None:
        return None
    return int(row.origin_id if row.origin_id is not None else row.id)


async def _insert_if_name_free(store: Store, conn: AsyncConnection, values: dict[str, Any]) -> int | None:
    runs = store.runs
    dialect = store.dialect
    if dialect.is_postgresql:
        stmt = (
            postgresql.insert(runs)
            .values(values)
            .on_conflict_do_nothing(index_elements=[runs.c.name_active])
            .returning(runs.c.id)
        )
        new_id = (await conn.execute(stmt)).scalar_one_or_none()
        if new_id is None:
            return None
        await notify_new(store, conn)
        return int(new_id)
    if dialect.is_sqlite:
        result = await conn.execute(
            sqlite.insert(runs).values(values).on_conflict_do_nothing(index_elements=[runs.c.name_active])
        )
        return int(result.lastrowid) if result.rowcount == 1 else None
    # MySQL/MariaDB: a duplicate-key error only undoes the statement, not the transaction.
    try:
        result = await conn.execute(insert(runs).values(values))
    except DBAPIError as exc:
        if dialect.is_unique_violation(exc):
            return None
        raise
    return int(result.lastrowid)


def first_row_values(
    *,
    instance_id: int,
    name: str,
    job: str,
    job_args: str,
    job_kwargs: str,
    delay: float,
    run_at: datetime | ColumnElement[datetime],
    created_at: ColumnElement[datetime],
    run_success_limit: int | None,
    run_timeout: float | None,
    retries_on_error_limit: int | None,
    retries_on_timeout_limit: int | None,
    retry_backoff: Backoff | None,
    schedule: str | None,
) -> dict[str, Any]:
    return {
        "origin_id": None,
        "parent_id": None,
        "name": name,
        "name_active": name,
        "job": job,
        "job_args": job_args,
        "job_kwargs": job_kwargs,
        "delay": delay,
        "run_at": run_at,
        "run_total_count": 0,
        "run_success_count": 0,
        "run_success_limit": run_success_limit,
        "run_timeout": run_timeout,
        "retries_on_error_count": 0,
        "retries_on_error_limit": retries_on_error_limit,
        "retries_on_timeout_count": 0,
        "retries_on_timeout_limit": retries_on_timeout_limit,
        "retry_backoff": retry_backoff.base if retry_backoff else None,
        "retry_backoff_cap": retry_backoff.cap if retry_backoff else None,
        "schedule": schedule,
        "created_at": created_at,
        "created_by": instance_id,
    }
