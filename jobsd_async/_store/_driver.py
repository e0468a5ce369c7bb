"""Hot statements run on the driver's own connection (PostgreSQL's asyncpg, SQLite's aiosqlite).

SQLAlchemy's execution of a statement costs this process about twice the driver's own
(``benchmarks/`` and docs/performance.md), and a run created and awaited on one instance
is two statements: the insert that starts it here and its completion.  Those statements
are compiled once by SQLAlchemy; their SQL then runs on the driver's connection, with the
values bound and read back through the same type processors SQLAlchemy applies.  On
SQLite each call to aiosqlite is a hop to its thread and back: SQLAlchemy's execution
makes four of a statement (a cursor opened, the statement, its rows, the cursor closed),
the driver's ``execute_fetchall`` one.

A failure leaves as SQLAlchemy's would: the driver's error translated by SQLAlchemy's
adapter and wrapped in a ``DBAPIError``, and the connection invalidated when it died (or
when the statement was interrupted), so that ``Dialect.retrying`` and ``Dialect.refuses``
see what they always saw.  On SQLite, what fails before the statement reaches SQLite (a
closed connection, a value that cannot be bound) runs through SQLAlchemy's execution,
which reports it as it always did.

On PostgreSQL only on connections in autocommit mode: there the server's transaction, if
any, is the one an explicit ``BEGIN`` opened, which the driver's statements share.
Elsewhere SQLAlchemy's adapter opens transactions of its own, which these statements would
bypass.  On SQLite only inside SQLAlchemy's transaction (which ``BEGIN IMMEDIATE`` opened
on the file), whose ``COMMIT`` or ``ROLLBACK`` ends what the statement wrote.  And only
while nobody listens to the engine's events (tracing built on statement events, a
``handle_error`` hook deciding what counts as a lost connection): then SQLAlchemy runs
them, as it runs every other statement.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar, cast, overload

from sqlalchemy.engine import Dialect as SQLDialect
from sqlalchemy.exc import DBAPIError, StatementError
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql import ClauseElement, ColumnElement, Executable
from sqlalchemy.sql.compiler import SQLCompiler

from ._dialect import NotSent, autocommits, sqlite_execute, unobserved

Processor = Callable[[Any], Any]
R = TypeVar("R")


class DriverStatement:
    """A statement compiled once, to run on the driver's connection (see :func:`fetch`)."""

    __slots__ = ("_binds", "_compiled", "_dialect", "_results", "_returning", "keys", "sql", "statement")

    def __init__(
        self,
        statement: Executable,
        returning: Sequence[ColumnElement[Any]],
        dialect: SQLDialect,
        column_keys: Sequence[str] | None = None,
    ) -> None:
        """``column_keys``: for an INSERT or UPDATE, the names of its parameters (which
        columns it sets, as SQLAlchemy tells from an execution's parameters)."""
        clause = cast(ClauseElement, statement)
        compiled = cast(SQLCompiler, clause.compile(dialect=dialect, column_keys=column_keys))
        # What SQLAlchemy's execution would add to the statement and its values, which
        # this one does not: such a statement stays with SQLAlchemy.
        assert not (
            compiled.post_compile_params
            or compiled.literal_execute_params
            or compiled.insert_prefetch
            or compiled.update_prefetch
        ), "a statement for the driver's connection must be complete as compiled"
        self.statement = statement
        self._compiled = compiled
        self.sql = compiled.string
        binds = compiled.binds
        names = compiled.positiontup or []
        self._binds: list[tuple[str, Processor | None]] = [
            (name, binds[name].type.dialect_impl(dialect).bind_processor(dialect)) for name in names
        ]
        self.keys = [column.key for column in returning]
        self._returning = list(returning)
        self._dialect = dialect
        # The result processors depend on the types the server reports (as SQLAlchemy's
        # do): known after the first execution.
        self._results: list[tuple[int, Processor]] | None = None

    def learn(self, type_oids: Sequence[int | None]) -> None:
        """Settle the result processors, given the returned columns' type oids (None
        where the driver reports none, as SQLite's)."""
        dialect = self._dialect
        self._results = [
            (index, processor)
            for index, (column, oid) in enumerate(zip(self._returning, type_oids, strict=True))
            if (processor := column.type.dialect_impl(dialect).result_processor(dialect, oid)) is not None
        ]

    def arguments(self, params: Mapping[str, Any]) -> list[Any]:
        """The positional values of one execution (defaults of bound literals included)."""
        values = self._compiled.construct_params(params, escape_names=False)
        return [
            value if processor is None else processor(value)
            for name, processor in self._binds
            for value in (values[name],)
        ]

    def row(self, record: Any, make: Callable[[Iterable[Any]], R]) -> R:
        """A returned row as SQLAlchemy would give it (by position, processed), made by
        ``make`` from its values."""
        assert self._results is not None
        if not self._results:
            return make(record)
        values = list(record)
        for index, processor in self._results:
            values[index] = processor(values[index])
        return make(values)


def drives(conn: AsyncConnection) -> bool:
    """Whether ``conn`` can run a :class:`DriverStatement` (asyncpg in autocommit mode, or
    aiosqlite in a transaction; alive), and nobody listens to SQLAlchemy's events for it
    (statement events, as tracing does, or ``handle_error``, which may decide what counts
    as a lost connection)."""
    sync = conn.sync_connection
    if sync is None or not unobserved(conn) or sync.invalidated or sync.closed:
        return False
    driver = sync.dialect.driver
    if driver == "asyncpg":
        return autocommits(conn)
    return driver == "aiosqlite" and sync.in_transaction()


@overload
async def fetch(
    conn: AsyncConnection, statement: DriverStatement, params: Mapping[str, Any]
) -> list[tuple[Any, ...]]: ...


@overload
async def fetch(
    conn: AsyncConnection,
    statement: DriverStatement,
    params: Mapping[str, Any],
    *,
    make: Callable[[Iterable[Any]], R],
) -> list[R]: ...


async def fetch(
    conn: AsyncConnection,
    statement: DriverStatement,
    params: Mapping[str, Any],
    *,
    make: Callable[[Iterable[Any]], Any] = tuple,
) -> list[Any]:
    """Run ``statement`` on ``conn``'s driver connection (see :func:`drives`); its rows, as
    tuples or made by ``make`` (such as a named tuple's ``_make``)."""
    sync = conn.sync_connection
    assert sync is not None
    pooled = sync.connection
    try:
        arguments = statement.arguments(params)
    except Exception as exc:  # as SQLAlchemy reports a value its types cannot bind
        hidden = sync.engine.hide_parameters
        message = f"({type(exc).__module__}.{type(exc).__name__}) {exc}"
        raise StatementError(message, statement.sql, params, exc, hide_parameters=hidden) from exc
    if sync.dialect is not statement._dialect:
        # Compiled for another engine's dialect (a caller's connection): SQLAlchemy's
        # execution compiles it for this one.
        return await _through_sqlalchemy(conn, statement, params, make)
    driver: Any = pooled.driver_connection
    try:
        if sync.dialect.driver == "aiosqlite":
            if statement._results is None:
                statement.learn([None] * len(statement.keys))  # (SQLite reports no column types)
            records = await sqlite_execute(conn, driver, statement.sql, arguments)
        else:
            records = await _asyncpg_records(conn, pooled.dbapi_connection, driver, statement, arguments)
    except NotSent:
        # (A closed connection is then reported lost, and invalidated.)
        return await _through_sqlalchemy(conn, statement, params, make)
    except Exception:
        raise
    except BaseException:
        # Interrupted (cancelled) mid-statement: the connection's state is unknown, and on
        # SQLite aiosqlite's thread still runs the statement, which nobody may commit: the
        # connection is not used again (closing it, after the statement, rolls it back).
        with contextlib.suppress(Exception):
            await asyncio.shield(conn.invalidate())
        raise
    row = statement.row
    return [row(record, make) for record in records]


async def _through_sqlalchemy(
    conn: AsyncConnection,
    statement: DriverStatement,
    params: Mapping[str, Any],
    make: Callable[[Iterable[Any]], Any],
) -> list[Any]:
    return [make(row) for row in await conn.execute(statement.statement, params)]


async def _asyncpg_records(
    conn: AsyncConnection, adapted: Any, driver: Any, statement: DriverStatement, arguments: list[Any]
) -> Any:
    try:
        if statement._results is None:
            prepared = await driver.prepare(statement.sql)
            statement.learn([attribute.type.oid for attribute in prepared.get_attributes()])
            return await prepared.fetch(*arguments)
        return await driver.fetch(statement.sql, *arguments)
    except Exception as exc:
        failure = await _failure(conn, adapted, statement.sql, arguments, exc)
        if failure is exc:
            raise
        raise failure from getattr(failure, "orig", exc)


async def _failure(
    conn: AsyncConnection, adapted: Any, sql: str, arguments: list[Any], exc: Exception
) -> Exception:
    """``exc`` as SQLAlchemy's execution would raise it, the connection invalidated if it died."""
    try:
        adapted._handle_exception(exc)  # raises the adapter's DB-API translation
    except Exception as translated:
        error: Exception = translated
    else:  # pragma: no cover - the adapter always raises
        error = exc
    dialect = conn.dialect
    dbapi_error = dialect.loaded_dbapi.Error
    if not isinstance(error, dbapi_error):
        return error  # not the database's: SQLAlchemy lets it through as it is
    gone = bool(dialect.is_disconnect(error, adapted, None))
    if gone:
        with contextlib.suppress(Exception):
            await asyncio.shield(conn.invalidate())
    sync = conn.sync_connection
    return DBAPIError.instance(
        sql,
        arguments,
        error,
        dbapi_error,
        hide_parameters=sync is not None and sync.engine.hide_parameters,
        connection_invalidated=gone,
        dialect=dialect,
    )
