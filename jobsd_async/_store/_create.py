"""Inserting a chain's first row, with the unique-name check."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    ClauseElement,
    ColumnElement,
    Executable,
    Float,
    Table,
    bindparam,
    case,
    exists,
    func,
    insert,
    literal,
    null,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.expression import ReturnsRows

from .._config import DEFAULT_PRIORITY, DEFAULT_QUEUE, Backoff
from .._errors import StoreError
from . import _driver
from ._rows import RunRow, Store
from ._schema import UTCDateTime

# A unique name can be freed between our failed insert and our look-up; then we insert again.
_MAX_INSERT_ATTEMPTS = 5

# Values for a row may be SQL expressions (the database clock), which the statement renders,
# while everything else is a bind parameter, so the statement is built once per shape.  An
# expression's own inputs travel as these extra, non-column parameters:
DELAY = "p_delay"  # seconds after the database clock: run_at
TIMEOUT = "p_timeout"  # seconds after the database clock: run_timeout_at
QUEUE = "p_queue"  # the run's queue, to check whether it is paused
STARTED_BY = "p_started_by"  # the instance that starts a run it inserts
LANDED_SINCE = (
    "p_landed_since"  # (an insert run again) when the lost first run's row was written, at the earliest
)


def clock_plus(store: Store, seconds_bind: str) -> ColumnElement[datetime]:
    """The database clock plus the seconds given by the parameter ``seconds_bind``."""
    dialect = store.dialect
    return store.statement(
        ("clock plus", seconds_bind),
        lambda: dialect.add_seconds(dialect.now(), bindparam(seconds_bind, type_=Float)),
    )


async def insert_unique(
    store: Store, conn: AsyncConnection, values: dict[str, Any], *, landed_since: datetime | None = None
) -> tuple[int, bool]:
    """Insert a first row unless its name is active; return (run id, inserted).

    When a pending or running row already holds ``name_active``, nothing is inserted and the
    run id of that row's chain is returned.  ``landed_since``: see :func:`insert_claimed`;
    a row the lost insert wrote is announced again (its announcement may have been lost too).
    """
    if landed_since is not None:
        values = {**values, LANDED_SINCE: landed_since}
    row, run_id = await _insert_first(store, conn, values, whole_row=False)
    if row is None and landed_since is not None:
        # Best effort: instances that miss it find the run when they poll.
        with contextlib.suppress(SQLAlchemyError):
            await notify_new(store, conn)
    return run_id, row is not None


async def insert_claimed(
    store: Store,
    conn: AsyncConnection,
    values: dict[str, Any],
    *,
    instance_id: int,
    landed_since: datetime | None = None,
) -> tuple[RunRow | None, int]:
    """Insert a first row already claimed by ``instance_id``: it starts here, without a claim.

    Returns (the row, its run id); when a pending or running row already holds its unique
    name, nothing is inserted and it returns (None, that row's run id).  A row whose queue
    is paused is inserted pending instead (``run_started_at`` is None).  Needs RETURNING.

    ``landed_since`` (PostgreSQL, a name made here, the insert run again after its answer
    was lost): nothing is inserted either when a first row of that name closed since then
    (the lost insert landed and its chain has already ended); its run id is returned.
    """
    timeout = values["run_timeout"]
    claimed = {
        **values,
        **_claimed_expressions(store, timed=timeout is not None),
        QUEUE: values["queue"],
        STARTED_BY: instance_id,
    }
    if timeout is not None:
        claimed[TIMEOUT] = timeout
    if landed_since is not None:
        claimed[LANDED_SINCE] = landed_since
    row, run_id = await _insert_first(store, conn, claimed, whole_row=True)
    return (None if row is None else RunRow.of(row)), run_id


def _claimed_expressions(store: Store, *, timed: bool) -> dict[str, Any]:
    """The columns that claim a row as it is inserted, unless its queue is paused (built
    once: building them per insert cost more than the rest of the statement's preparation)."""

    def build() -> dict[str, Any]:
        open_queue = _queue_open(store)

        def when_open(value: Any) -> Any:
            return case((open_queue, value), else_=null())

        return {
            "run_started_at": when_open(store.dialect.now()),
            "run_started_by": when_open(bindparam(STARTED_BY, type_=BigInteger)),
            "run_total_count": case((open_queue, 1), else_=0),
            "run_timeout_at": when_open(clock_plus(store, TIMEOUT)) if timed else None,
        }

    return store.statement(("claimed expressions", timed), build)


def _queue_open(store: Store) -> ColumnElement[bool]:
    """Whether the queue given by the parameter ``QUEUE`` is not paused."""
    queues = store.queues
    return store.statement(
        "queue open",
        lambda: ~exists().where(queues.c.name == bindparam(QUEUE), queues.c.paused_at.is_not(None)),
    )


async def _insert_first(
    store: Store, conn: AsyncConnection, values: dict[str, Any], *, whole_row: bool
) -> tuple[Mapping[Any, Any] | None, int]:
    """(The inserted row, its id), or (None, the active chain's run id) if the name is taken."""
    if LANDED_SINCE in values:
        return await _insert_first_again(store, conn, values, whole_row=whole_row)
    return await _insert_or_find(store, conn, values, whole_row=whole_row)


async def _insert_or_find(
    store: Store, conn: AsyncConnection, values: dict[str, Any], *, whole_row: bool
) -> tuple[Mapping[Any, Any] | None, int]:
    """One try of :func:`_insert_first`; with ``LANDED_SINCE``, a first row of its name
    closed since then is found too."""
    for _ in range(_MAX_INSERT_ATTEMPTS):
        row = await _insert_if_name_free(store, conn, values, whole_row=whole_row)
        if row is not None:
            return row, int(row["id"])
        existing = await active_run_id(store, conn, values["name_active"])
        if existing is not None:
            return None, existing
        if LANDED_SINCE in values:
            ended = await _landed_run_id(store, conn, values)
            if ended is not None:
                return None, ended
    raise StoreError(f"unique name {values['name_active']!r} kept changing hands; try again")


class _LandedMeanwhile(Exception):
    def __init__(self, run_id: int) -> None:
        self.run_id = run_id


async def _insert_first_again(
    store: Store, conn: AsyncConnection, values: dict[str, Any], *, whole_row: bool
) -> tuple[Mapping[Any, Any] | None, int]:
    """:func:`_insert_first` run again after a lost answer (PostgreSQL, autocommit), in a
    transaction of its own: a row it inserts is kept only if the lost insert's row is not
    found closed afterwards.

    The statement alone can miss that row when it closes while the statement runs: its
    ``NOT EXISTS`` reads the snapshot the statement started with (the row still open), and
    its ``ON CONFLICT`` waits for the closing transaction and then finds the name free.
    Once this row holds the name, the lost insert's row cannot take it any more: a check
    after the insert, on a snapshot of its own, sees that row closed, or it never lands.
    """
    try:
        async with store.dialect.transaction_on(conn):
            # The check after the insert needs a snapshot of its own, whatever isolation
            # the server's or the role's default is.
            await conn.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
            row, run_id = await _insert_or_find(store, conn, values, whole_row=whole_row)
            if row is not None and (ended := await _landed_run_id(store, conn, values)) is not None:
                raise _LandedMeanwhile(ended)  # (rolls the insert back)
            return row, run_id
    except _LandedMeanwhile as meanwhile:
        return None, meanwhile.run_id


async def _landed_run_id(store: Store, conn: AsyncConnection, values: dict[str, Any]) -> int | None:
    """The id of a first row of the name in ``values`` closed since ``LANDED_SINCE``."""
    landed = {LANDED_SINCE: values[LANDED_SINCE], "name": values["name"]}
    ended = (await conn.execute(_landed_statement(store), landed)).first()
    return None if ended is None else int(ended.id)


async def insert_many(store: Store, conn: AsyncConnection, rows: list[dict[str, Any]]) -> list[int]:
    """Insert rows without unique-name conflicts, one round trip per shape where possible.

    A value that is a SQL expression (the database clock) is rendered once per statement,
    so rows are grouped by which columns carry expressions; ids come back in row order.
    """
    groups: dict[tuple[tuple[str, ...], tuple[str, ...]], list[int]] = {}
    for index, row in enumerate(rows):
        groups.setdefault(_shape(store, row), []).append(index)
    ids = [0] * len(rows)
    await notify_new(store, conn)
    for (expression_keys, _), indexes in groups.items():
        expressions = {k: rows[indexes[0]][k] for k in expression_keys}
        params = [{k: v for k, v in rows[i].items() if k not in expressions} for i in indexes]
        for index, new_id in zip(indexes, await _insert_group(store, conn, expressions, params), strict=True):
            ids[index] = new_id
    return ids


async def _insert_group(
    store: Store, conn: AsyncConnection, expressions: dict[str, Any], params: list[dict[str, Any]]
) -> list[int]:
    runs = store.runs
    returning = store.dialect.insert_returning

    def build() -> Executable:
        stmt = insert(runs).values(**expressions)
        return stmt.returning(runs.c.id, sort_by_parameter_order=True) if returning else stmt

    stmt = store.statement(("insert", tuple(expressions), tuple(params[0])), build)
    if returning:
        result = await conn.execute(stmt, params)
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
    """The run id of the chain holding unique name ``name``, if any."""
    runs = store.runs
    stmt = select(runs.c.id, runs.c.origin_id).where(runs.c.name_active == name)
    row = (await conn.execute(stmt)).first()
    if row is None and store.dialect.is_mysql:
        # Under REPEATABLE READ (the caller's transaction may have read before) a plain SELECT
        # reads an old snapshot where the row that just refused our insert did not exist yet;
        # a locking read sees it.
        row = (await conn.execute(stmt.with_for_update(read=True))).first()
    if row is None:
        return None
    return int(row.origin_id if row.origin_id is not None else row.id)


def _named(runs: Table) -> ColumnElement[bool]:
    """The predicate of the partial unique index on ``name_active`` (ON CONFLICT names it)."""
    return runs.c.name_active.is_not(None)


async def _insert_if_name_free(
    store: Store, conn: AsyncConnection, values: dict[str, Any], *, whole_row: bool
) -> Mapping[Any, Any] | None:
    """Insert unless the name is active; the new row's id (or, with ``whole_row``, all of it).

    A row inserted pending is announced to listening instances; one inserted claimed is not.
    """
    dialect = store.dialect
    expressions = {k: v for k, v in values.items() if isinstance(v, ClauseElement)}
    params = {k: v for k, v in values.items() if k not in expressions}
    returning = dialect.insert_returning
    shape = _shape(store, values)
    keys = tuple(params)  # the columns it binds (the same for every call of a shape today)
    stmt = store.statement(
        ("insert first", shape, whole_row, keys),
        lambda: (
            _first_row_statement(store, expressions, params, whole_row=whole_row)
            if LANDED_SINCE not in values
            else _first_row_again_statement(store, expressions, params)
        ),
    )
    row: Mapping[Any, Any] | None
    if returning and LANDED_SINCE not in values and _driver.drives(conn):
        # A run's insert is one of the two statements of its life here (see _driver).
        driven = store.statement(
            ("insert first on the driver", shape, whole_row, keys),
            lambda: _driver.DriverStatement(stmt, _returned(stmt), conn.dialect, list(params)),
        )
        found = await _driver.fetch(conn, driven, params)
        row = dict(zip(driven.keys, found[0], strict=True)) if found else None
    elif dialect.is_postgresql or dialect.is_sqlite:
        if returning:
            row = (await conn.execute(stmt, params)).mappings().first()
        else:  # SQLite before 3.35
            result = await conn.execute(stmt, params)
            row = {"id": result.lastrowid} if result.rowcount == 1 else None
    else:
        # MySQL/MariaDB: a duplicate-key error only undoes the statement, not the transaction.
        try:
            if returning:  # MariaDB 10.5+
                row = (await conn.execute(stmt, params)).mappings().first()
            else:
                row = {"id": (await conn.execute(stmt, params)).lastrowid}
        except DBAPIError as exc:
            if dialect.is_unique_violation(exc):
                return None
            raise
    if row is not None and not whole_row and not _announces(store, values):
        await notify_new(store, conn)
    return row


def _announces(store: Store, values: Mapping[str, Any]) -> bool:
    """Whether the statement inserting a pending first row announces it itself."""
    return store.dialect.is_postgresql and LANDED_SINCE not in values


def _returned(stmt: Executable) -> list[ColumnElement[Any]]:
    """The columns a first row's statement returns."""
    assert isinstance(stmt, ReturnsRows)
    return list(stmt.exported_columns)


def _shape(store: Store, row: dict[str, Any]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """What a row's statement depends on: its columns given by expressions, and the
    expressions' own parameters (now() and now() + DELAY render differently)."""
    columns = store.runs.c
    expressions = tuple(sorted(k for k, v in row.items() if isinstance(v, ClauseElement)))
    return expressions, tuple(sorted(k for k in row if k not in columns))


def _first_row_statement(
    store: Store, expressions: dict[str, Any], params: dict[str, Any], *, whole_row: bool
) -> Executable:
    """INSERT of a first row that does nothing when its unique name is active (the row's
    other values are the parameters ``params`` names)."""
    runs = store.runs
    dialect = store.dialect
    stmt: Any
    if dialect.is_postgresql and dialect.insert_returning and not whole_row:
        # The row is announced by the same statement, delivered when it commits: a run
        # inserted pending for other instances costs one round trip, not two.  (Inside a
        # WITH, the values are bound by name: SQLAlchemy would bind them anonymously.)
        bound = {k: bindparam(k, type_=runs.c[k].type) for k in params if k in runs.c}
        inserted = (
            postgresql.insert(runs)
            .values(**expressions, **bound)
            .on_conflict_do_nothing(index_elements=[runs.c.name_active], index_where=_named(runs))
            .returning(runs.c.id)
            .cte("inserted")
        )
        announced = func.pg_notify(literal(store.new_channel), literal(""))
        return select(inserted.c.id, announced).select_from(inserted)
    if dialect.is_postgresql or dialect.is_sqlite:
        upsert = postgresql.insert(runs) if dialect.is_postgresql else sqlite.insert(runs)
        stmt = upsert.values(**expressions).on_conflict_do_nothing(
            index_elements=[runs.c.name_active], index_where=_named(runs)
        )
    else:
        stmt = insert(runs).values(**expressions)
    if dialect.insert_returning:
        stmt = stmt.returning(*(list(runs.c) if whole_row else [runs.c.id]))
    return stmt  # type: ignore[no-any-return]


def _landed(runs: Table) -> list[ColumnElement[bool]]:
    """A chain's first row named by the parameter ``name`` that closed since ``LANDED_SINCE``
    (found through the index of closed rows by age)."""
    return [
        runs.c.run_completed_at >= bindparam(LANDED_SINCE, type_=UTCDateTime),
        runs.c.name == bindparam("name", type_=runs.c.name.type),
        runs.c.origin_id.is_(None),
    ]


def _landed_statement(store: Store) -> Executable:
    runs = store.runs
    return store.statement("landed", lambda: select(runs.c.id).where(*_landed(runs)).limit(1))


def _first_row_again_statement(
    store: Store, expressions: dict[str, Any], params: dict[str, Any]
) -> Executable:
    """PostgreSQL's INSERT of a whole first row run again after its answer was lost: it does
    nothing when the name is active, nor when a first row of that name closed since
    ``LANDED_SINCE`` (the name is made here: such a row was written by the lost insert)."""
    runs = store.runs
    columns = [c for c in runs.c if c.key in expressions or c.key in params]
    source = select(
        *(expressions[c.key] if c.key in expressions else bindparam(c.key, type_=c.type) for c in columns)
    ).where(~exists().where(*_landed(runs)))
    stmt = (
        postgresql.insert(runs)
        .from_select(columns, source)
        .on_conflict_do_nothing(index_elements=[runs.c.name_active], index_where=_named(runs))
    )
    return stmt.returning(*runs.c)


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
    trace_context: str | None = None,
    retry_policy: str | None = None,
    queue: str = DEFAULT_QUEUE,
    priority: int = DEFAULT_PRIORITY,
    limit_key: str | None = None,
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
        "trace_context": trace_context,
        "retry_policy": retry_policy,
        "queue": queue,
        "priority": priority,
        "limit_key": limit_key,
    }
