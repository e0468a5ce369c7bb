"""Reading runs back: rows by id and the latest row of a chain."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BindParameter, Select, bindparam, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from .._clock import DbClock
from ._rows import RunRow, Store, row_columns


async def latest_of_chain(store: Store, conn: AsyncConnection, run_id: int) -> RunRow | None:
    """The newest row of the chain whose first row is ``run_id`` (or that row itself)."""
    stmt = store.statement("latest of chain", lambda: latest_statement(store, bindparam("run_id")))
    row = (await conn.execute(stmt, {"run_id": run_id})).mappings().first()
    return None if row is None else RunRow.of(row)


async def rows_by_id(store: Store, conn: AsyncConnection, ids: list[int]) -> dict[int, RunRow]:
    """The rows with these ids (those that exist), by id."""
    runs = store.runs
    stmt = store.statement(
        "rows by id",
        lambda: select(*row_columns(runs)).where(runs.c.id.in_(bindparam("ids", expanding=True))),
    )
    return {row.id: row for row in map(RunRow._make, await conn.execute(stmt, {"ids": ids}))}


def latest_statement(store: Store, run_id: int | BindParameter[Any]) -> Select[Any]:
    runs = store.runs
    return (
        select(runs)
        .where(or_(runs.c.id == run_id, runs.c.origin_id == run_id))
        .order_by(runs.c.id.desc())
        .limit(1)
    )


async def sample_clock(store: Store, conn: AsyncConnection, clock: DbClock) -> None:
    """Read the database clock and record its offset from the local one."""
    sent = clock.monotonic()
    value = (await conn.execute(select(store.dialect.now()))).scalar_one()
    assert isinstance(value, datetime)
    clock.sample(value, sent, clock.monotonic())
