"""Completing attempts: one transaction closes a batch of rows and inserts their follow-ups.

A row is closed only if it is still incomplete and still owned by its attempt's instance;
the unique name moves to the follow-up inside the same transaction, so no other chain can
take it in between, and a chain that ends frees it.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Executable,
    Integer,
    Select,
    Text,
    Update,
    bindparam,
    case,
    cast,
    column,
    distinct,
    func,
    literal,
    null,
    select,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect as SQLDialect
from sqlalchemy.ext.asyncio import AsyncConnection

from .._chain import FollowUp
from .._runs import CANCELLED_TEXT
from . import _driver, _read
from ._create import insert_many
from ._rows import RunRow, Store, row_columns


@dataclass(frozen=True, slots=True)
class Closing:
    """What to record on a completed row."""

    error: str | None
    result: str | None
    success: bool
    traceback: str | None = None


@dataclass(frozen=True, slots=True)
class Completed:
    """A row was closed; ``follow_up_id`` is the row that continues its chain, if any.

    ``final`` is the row as closed, when it was asked for and ended its chain.
    """

    follow_up_id: int | None
    cancelled: bool = False
    final: RunRow | None = None


@dataclass(frozen=True, slots=True)
class Completion:
    """One row to close: how, with which follow-up, if ``owner_id`` still holds it open."""

    row: RunRow
    closing: Closing
    follow_up: FollowUp | None
    owner_id: int


async def complete_many(
    store: Store,
    conn: AsyncConnection,
    items: Sequence[Completion],
    *,
    instance_id: int,
    finals: Collection[int] = (),
) -> list[Completed | None]:
    """Close many rows and insert their follow-ups, in the caller's one transaction.

    A row is closed only if it is still open and owned by its item's ``owner_id``; else
    its result is None and nothing is written for it.  A row whose chain ``cancel_run``
    flagged is closed as cancelled, whatever its closing says, with no follow-up.
    The rows whose ids are in ``finals`` (items without a follow-up) come back as closed,
    in ``Completed.final``: where an UPDATE returns what it changed, from the statement
    that closed them; elsewhere (MySQL) read in the same transaction.
    """
    final: dict[int, RunRow] = {}
    dialect = store.dialect
    returning = dialect.is_postgresql or (dialect.is_sqlite and dialect.update_returning)
    if dialect.is_postgresql:
        closed, cancelled = await _close_in_one_statement(store, conn, items, final if finals else None)
    elif returning:
        closed, cancelled = await _close_returning(store, conn, items, final if finals else None)
    else:
        closed, cancelled = await _lock_then_close(store, conn, items)
    closing = [i for i in items if i.row.id in closed and i.row.id not in cancelled]
    following = [i for i in closing if i.follow_up is not None]
    follow_up_ids: dict[int, int] = {}
    if following:
        now = store.dialect.now()
        rows = [follow_up_values(i.row, i.follow_up, instance_id=instance_id, now=now) for i in following]  # type: ignore[arg-type]
        new_ids = await insert_many(store, conn, rows)
        follow_up_ids = {i.row.id: new_id for i, new_id in zip(following, new_ids, strict=True)}
    ended = [row_id for row_id in finals if row_id in closed and row_id not in follow_up_ids]
    if ended and not returning:
        final = await _read.rows_by_id(store, conn, ended)
    results: list[Completed | None] = []
    for item in items:
        row_id = item.row.id
        if row_id in cancelled:
            results.append(Completed(follow_up_id=None, cancelled=True, final=final.get(row_id)))
        elif row_id in closed:
            follow_up_id = follow_up_ids.get(row_id)
            last = final.get(row_id) if follow_up_id is None else None
            results.append(Completed(follow_up_id=follow_up_id, final=last))
        else:
            results.append(None)
    return results


def in_one_statement(store: Store, items: Sequence[Completion]) -> bool:
    """Whether :func:`complete_many` writes ``items`` with one statement (PostgreSQL, no
    follow-ups)."""
    return store.dialect.is_postgresql and all(i.follow_up is None for i in items)


async def _close_in_one_statement(
    store: Store, conn: AsyncConnection, items: Sequence[Completion], rows: dict[int, RunRow] | None
) -> tuple[set[int], set[int]]:
    """PostgreSQL: one UPDATE over the arrays of the batch; returns (closed ids, cancelled ids).

    The statement text is the same for any batch, so it is prepared once per connection, and
    its WHERE is re-checked on the locked row, so a row another transaction closed first
    is skipped.  The same statement announces the closed rows' run ids on
    ``{prefix}done``, delivered when it commits, so a waiter on another instance wakes
    without a round trip of its own.  The payload is the ids, comma-separated: a batch of
    at most 200 fits the 8,000 bytes a notification may carry.

    With ``rows``, the statement returns the closed rows whole, into ``rows`` by id.
    """
    whole = rows is not None
    stmt = store.statement(("complete", whole), lambda: _close_statement(store, whole_rows=whole))
    params = {
        "ids": [i.row.id for i in items],
        "owners": [i.owner_id for i in items],
        "errors": [i.closing.error for i in items],
        "results": [i.closing.result for i in items],
        "tracebacks": [i.closing.traceback for i in items],
        "successes": [1 if i.closing.success else 0 for i in items],
    }
    result: Iterable[Sequence[Any]]
    if _driver.drives(conn):
        driven = store.statement(
            ("complete on the driver", whole),
            lambda: _driver.DriverStatement(stmt, list(stmt.selected_columns), conn.dialect),
        )
        result = await _driver.fetch(conn, driven, params)
    else:
        result = await conn.execute(stmt, params)
    closed: set[int] = set()
    cancelled: set[int] = set()
    width = len(RunRow._fields)
    for returned in result:
        row_id, was_cancelled = returned[0], returned[-2]
        closed.add(row_id)
        if was_cancelled:
            cancelled.add(row_id)
        if rows is not None:
            rows[row_id] = RunRow._make(returned[:width])
    return closed, cancelled


def _close_statement(store: Store, *, whole_rows: bool) -> Select[Any]:
    """The batch's UPDATE; returns each closed row's id (or, with ``whole_rows``, the whole
    row), whether it was closed as cancelled, and the announcement's (void) value."""
    runs = store.runs
    batch = (
        func.unnest(
            bindparam("ids", type_=postgresql.ARRAY(BigInteger)),
            bindparam("owners", type_=postgresql.ARRAY(BigInteger)),
            bindparam("errors", type_=postgresql.ARRAY(Text)),
            bindparam("results", type_=postgresql.ARRAY(Text)),
            bindparam("tracebacks", type_=postgresql.ARRAY(Text)),
            bindparam("successes", type_=postgresql.ARRAY(Integer)),
        )
        .table_valued(
            column("id", BigInteger),
            column("owner", BigInteger),
            column("error", Text),
            column("result", Text),
            column("traceback", Text),
            column("success", Integer),
            name="batch",
        )
        .render_derived()
    )
    flagged = _flagged(store)
    closed = (
        update(runs)
        .where(
            runs.c.id == batch.c.id,
            runs.c.run_completed_at.is_(None),
            runs.c.run_started_by == batch.c.owner,
        )
        .values(
            **_closing_values(
                store,
                error=batch.c.error,
                result=batch.c.result,
                traceback=batch.c.traceback,
                success=batch.c.success,
            )
        )
        .returning(
            *(row_columns(runs) if whole_rows else [runs.c.id]),
            flagged.label("cancelled"),
            func.coalesce(runs.c.origin_id, runs.c.id).label("chain_id"),
        )
        .cte("closed")
    )
    # An uncorrelated subquery: evaluated once, and only if a row was closed.
    run_ids = func.string_agg(distinct(cast(closed.c.chain_id, Text)), literal(","))
    announced = select(func.pg_notify(literal(store.done_channel), run_ids)).select_from(closed)
    returned = [closed.c[name] for name in RunRow._fields] if whole_rows else [closed.c.id]
    return select(*returned, closed.c.cancelled, announced.scalar_subquery())


async def _close_returning(
    store: Store, conn: AsyncConnection, items: Sequence[Completion], rows: dict[int, RunRow] | None
) -> tuple[set[int], set[int]]:
    """SQLite: one UPDATE ... RETURNING per distinct closing and owner (most runs of a batch
    end alike); returns (closed ids, cancelled ids), as :func:`_close_in_one_statement`.

    No lock read first: ``BEGIN IMMEDIATE`` already excludes other writers, and each
    UPDATE closes only the rows still open and held by the owner, saying which it closed.
    """
    alike: dict[tuple[Closing, int], list[int]] = {}
    for item in items:
        alike.setdefault((item.closing, item.owner_id), []).append(item.row.id)
    whole = rows is not None
    flag = RunRow._fields.index("cancel_requested_at") if whole else 1
    closed: set[int] = set()
    cancelled: set[int] = set()
    for (how, owner), ids in alike.items():
        params = {**_closing_params(how), "owner": owner}
        returned: Iterable[Sequence[Any]]
        if _driver.drives(conn):
            # Without SQLAlchemy's expansion of the ids: as many placeholders as the next
            # power of two, the last id repeated (a few statements, each compiled once).
            width = 1 << (len(ids) - 1).bit_length()
            driven = store.statement(
                ("close returning on the driver", whole, width),
                partial(_driver_close_statement, store, conn.dialect, whole, width),
            )
            params.update((f"id{i}", ids[min(i, len(ids) - 1)]) for i in range(width))
            returned = await _driver.fetch(conn, driven, params)
        else:
            build = partial(_close_returning_statement, store, whole)
            stmt = store.statement(("close returning", whole), build)
            returned = await conn.execute(stmt, {**params, "ids": ids})
        for values in returned:
            row_id = values[0]
            closed.add(row_id)
            if values[flag] is not None:
                cancelled.add(row_id)
            if rows is not None:
                rows[row_id] = RunRow._make(values)
    return closed, cancelled


def _driver_close_statement(
    store: Store, dialect: SQLDialect, whole_rows: bool, width: int
) -> _driver.DriverStatement:
    stmt = _close_returning_statement(store, whole_rows, width=width)
    return _driver.DriverStatement(stmt, list(stmt.exported_columns), dialect)


def _close_returning_statement(store: Store, whole_rows: bool, *, width: int | None = None) -> Update:
    """SQLite's UPDATE closing the rows ``ids`` alike (expanded by SQLAlchemy), or with
    ``width``, the rows ``id0`` … ``id{width-1}``."""
    runs = store.runs
    ids = (
        bindparam("ids", expanding=True)
        if width is None
        else [bindparam(f"id{i}", type_=BigInteger) for i in range(width)]
    )
    return (
        update(runs)
        .where(
            runs.c.id.in_(ids),
            runs.c.run_completed_at.is_(None),
            runs.c.run_started_by == bindparam("owner", type_=BigInteger),
        )
        .values(
            **_closing_values(
                store,
                error=bindparam("error", type_=Text),
                result=bindparam("result", type_=Text),
                traceback=bindparam("traceback", type_=Text),
                success=bindparam("success", type_=Integer),
            )
        )
        # The flag as stored, tested here: SQLite 3.40 evaluates "column IS NOT NULL" in
        # RETURNING as true on this table whatever the column holds.
        .returning(*(row_columns(runs) if whole_rows else [runs.c.id, runs.c.cancel_requested_at]))
    )


def _closing_params(how: Closing) -> dict[str, Any]:
    """The parameters of a statement closing rows alike, as ``how`` says (but the rows)."""
    return {
        "error": how.error,
        "result": how.result,
        "traceback": how.traceback,
        "success": int(how.success),
    }


def _flagged(store: Store) -> ColumnElement[bool]:
    """Rows whose chain ``cancel_run`` flagged."""
    return store.runs.c.cancel_requested_at.is_not(None)


def _closing_values(
    store: Store,
    *,
    error: ColumnElement[Any],
    result: ColumnElement[Any],
    traceback: ColumnElement[Any],
    success: ColumnElement[Any],
) -> dict[str, Any]:
    """What closing a row sets, given the closing's values: a row whose chain was flagged
    is closed as cancelled, whatever its closing says."""
    runs, flagged = store.runs, _flagged(store)
    return {
        "run_completed_at": store.dialect.now(),
        "run_completed_error": case((flagged, literal(CANCELLED_TEXT)), else_=error),
        "run_completed_traceback": case((flagged, null()), else_=traceback),
        "run_result": case((flagged, null()), else_=result),
        "name_active": None,
        "run_success_count": runs.c.run_success_count + case((flagged, 0), else_=success),
    }


async def _lock_then_close(
    store: Store, conn: AsyncConnection, items: Sequence[Completion]
) -> tuple[set[int], set[int]]:
    """Lock the batch's open rows, then close them; returns (closed ids, cancelled ids)."""
    runs = store.runs

    def build_lookup() -> Select[Any]:
        lookup = select(runs.c.id, runs.c.run_started_by, runs.c.cancel_requested_at).where(
            runs.c.id.in_(bindparam("ids", expanding=True)), runs.c.run_completed_at.is_(None)
        )
        # SQLite's BEGIN IMMEDIATE already excludes other writers.
        return lookup if store.dialect.is_sqlite else lookup.with_for_update()

    lookup = store.statement("lock open", build_lookup)
    open_rows = {r.id: r for r in await conn.execute(lookup, {"ids": [item.row.id for item in items]})}
    owned = [i for i in items if i.row.id in open_rows and open_rows[i.row.id].run_started_by == i.owner_id]
    closing = [i for i in owned if open_rows[i.row.id].cancel_requested_at is None]
    cancelled = {i.row.id for i in owned} - {i.row.id for i in closing}
    # The rows are locked: one UPDATE per distinct closing (most runs of a batch end alike).
    alike: dict[Closing, list[int]] = {}
    for item in closing:
        alike.setdefault(item.closing, []).append(item.row.id)
    if alike:
        stmt = store.statement("close alike", lambda: _close_alike_statement(store))
        for how, ids in alike.items():
            await conn.execute(stmt, {**_closing_params(how), "ids": ids})
    if cancelled:
        now = store.dialect.now()
        await conn.execute(
            update(runs)
            .where(runs.c.id.in_(list(cancelled)))
            .values(run_completed_at=now, run_completed_error=CANCELLED_TEXT, name_active=None)
        )
    return {i.row.id for i in owned}, cancelled


def _close_alike_statement(store: Store) -> Executable:
    runs = store.runs
    return (
        update(runs)
        .where(runs.c.id.in_(bindparam("ids", expanding=True)))
        .values(
            run_completed_at=store.dialect.now(),
            run_completed_error=bindparam("error", type_=Text),
            run_completed_traceback=bindparam("traceback", type_=Text),
            run_result=bindparam("result", type_=Text),
            name_active=None,
            run_success_count=runs.c.run_success_count + bindparam("success", type_=Integer),
        )
    )


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
        "trace_context": row.trace_context,  # the chain keeps its trace
        "retry_policy": row.retry_policy,
        "queue": row.queue,
        "priority": row.priority,
        "limit_key": row.limit_key,
    }
