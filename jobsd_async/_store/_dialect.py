"""Everything that differs between PostgreSQL, MySQL/MariaDB and SQLite, in one place.

- the database clock: ``now()``, ``UTC_TIMESTAMP(6)``, or SQLite's ``'now'`` (the host clock);
- adding seconds to a timestamp inside SQL;
- ``RETURNING`` support, detected from the connected server;
- how a write transaction starts (SQLite takes its write lock up front with
  ``BEGIN IMMEDIATE``, so two writers never deadlock upgrading read locks);
- which driver errors are transient lock conflicts worth retrying, and which say the
  connection was lost (a transaction that lost its connection before ``COMMIT`` was not
  committed, so it is safe to run again on a new one).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import BigInteger, ColumnElement, any_, cast, func, literal, literal_column, type_coerce
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from .._errors import JobsDError, StoreError
from ._connections import Connections
from ._schema import UTCDateTime

T = TypeVar("T")

DRIVER_ERRORS: tuple[type[BaseException], ...] = (SQLAlchemyError, OSError)
"""What a failed database call raises: SQLAlchemy-wrapped driver errors, or socket errors."""

_SQLITE_FORMAT = "%Y-%m-%d %H:%M:%f000"  # SQLAlchemy's text layout, millisecond precision
_WAL_ATTEMPTS = 12  # switching a SQLite file to WAL mode while others open it (~3 s in all)
_TRANSIENT_RETRIES = 8
# Data too long, out of range, incorrect value, NULL in a NOT NULL column, duplicate key.
_MYSQL_REFUSALS = frozenset({1048, 1062, 1264, 1265, 1292, 1366, 1406, 1690})


class Dialect:
    """SQL building blocks for one connected database; created by :meth:`detect`."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.name = _family(engine.dialect.name)
        self.update_returning = bool(engine.dialect.update_returning)
        self.insert_returning = bool(engine.dialect.insert_returning)
        # Inserting a run already claimed by its creator (see Submitter) saves a claim
        # transaction per run.  Measured (benchmarks/peers.py): PostgreSQL +35% one-at-a-time;
        # MariaDB create -> result p50 11.2 -> 7.0 ms, one-at-a-time +35%; SQLite p50
        # 8.9-9.5 -> 6.2 ms, one-at-a-time 107-110 -> 140-153 runs/s.  MySQL 8 has no INSERT ... RETURNING.
        self.direct_start = self.insert_returning
        self.flavor = flavor_of(engine.dialect)  # tells MariaDB from MySQL, once connected
        self._now: ColumnElement[datetime] | None = None
        # Reads and one-statement writes without BEGIN/COMMIT (PostgreSQL; see detect()).
        self.autocommit = False
        # A started instance's connection budget; without one, every use is a pool checkout.
        self.connections: Connections | None = None

    @classmethod
    async def detect(cls, engine: AsyncEngine) -> Dialect:
        """Connect once so server-dependent capabilities (MariaDB's RETURNING) are known."""
        async with engine.connect() as conn:
            await conn.exec_driver_sql("SELECT 1")
            # Behind PgBouncer in transaction mode a statement prepared outside a transaction
            # may be executed on another server connection.  The engines documented for it
            # have no prepared statement cache (asyncpg's adapter then holds None): they keep
            # BEGIN/COMMIT.
            adapted = (await conn.get_raw_connection()).dbapi_connection
            cached = getattr(adapted, "_prepared_statement_cache", None) is not None
        dialect = cls(engine)
        dialect.autocommit = dialect.is_postgresql and cached
        if dialect.name == "sqlite":
            await dialect._use_wal()
        return dialect

    @property
    def is_sqlite(self) -> bool:
        return self.name == "sqlite"

    async def _use_wal(self) -> None:
        """Put a SQLite file in WAL mode, which lets readers run beside the single writer
        (it persists in the file).

        Switching needs the file to itself, and even asking for the mode it is already in
        may be refused at once ("database is locked", without waiting on the busy timeout)
        while other connections open it, as when instances start together: try again a
        few times.
        """
        for attempt in range(_WAL_ATTEMPTS):
            try:
                async with self.engine.connect() as conn:
                    mode = (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar()
                    if str(mode).lower() != "wal":
                        await conn.exec_driver_sql("PRAGMA journal_mode=WAL")
                    return
            except DBAPIError as exc:
                if not self.is_transient(exc) or attempt == _WAL_ATTEMPTS - 1:
                    raise
            await asyncio.sleep(0.05 * (attempt + 1))

    @property
    def is_postgresql(self) -> bool:
        return self.name == "postgresql"

    @property
    def is_mysql(self) -> bool:
        return self.name == "mysql"

    def now(self) -> ColumnElement[datetime]:
        """The database clock as a SQL expression (the statement's start, not the transaction's)."""
        now = self._now
        if now is None:  # built once: hot statements render it per call
            now = self._now = self._build_now()
        return now

    def _build_now(self) -> ColumnElement[datetime]:
        if self.name == "postgresql":
            # now() is the transaction's start: in a caller's long transaction (transactional
            # enqueue) run_after(d) would count from its BEGIN.
            return type_coerce(func.statement_timestamp(), UTCDateTime)
        if self.name == "mysql":
            return type_coerce(func.utc_timestamp(6), UTCDateTime)
        return type_coerce(func.strftime(_SQLITE_FORMAT, "now"), UTCDateTime)

    def add_seconds(self, ts: ColumnElement[Any], seconds: ColumnElement[Any]) -> ColumnElement[datetime]:
        """``ts + seconds`` in SQL; ``seconds`` is a float expression."""
        if self.name == "postgresql":
            return type_coerce(ts + func.make_interval(0, 0, 0, 0, 0, 0, seconds), UTCDateTime)
        if self.name == "mysql":
            micros = cast(func.round(seconds * 1_000_000), BigInteger)
            return type_coerce(func.timestampadd(literal_column("MICROSECOND"), micros, ts), UTCDateTime)
        modifier = func.printf("%+.6f seconds", seconds)
        return type_coerce(func.strftime(_SQLITE_FORMAT, ts, modifier), UTCDateTime)

    def among(self, column: ColumnElement[Any], values: Collection[Any]) -> ColumnElement[bool]:
        """``column IN values``: on PostgreSQL ``column = ANY`` of one array parameter.

        The same test (PostgreSQL turns ``IN (...)`` into ``= ANY`` itself), but a statement
        with nothing to expand when it runs: one that can be compiled once for the driver's
        connection (see ``_driver``).
        """
        if self.is_postgresql:
            return column == any_(literal(list(values), postgresql.ARRAY(column.type)))
        return column.in_(list(values))

    def least(self, a: ColumnElement[Any], b: ColumnElement[Any]) -> ColumnElement[Any]:
        """The smaller of two numbers in SQL."""
        return func.min(a, b) if self.is_sqlite else func.least(a, b)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        """One write transaction on a pooled connection: committed on success, else rolled back."""
        async with self._transaction(_Progress()) as conn:
            yield conn

    @asynccontextmanager
    async def _connection(
        self, *, autocommit: bool, urgent: bool = False, patient: bool = False
    ) -> AsyncIterator[AsyncConnection]:
        """A connection of the instance's budget (see :meth:`Connections.lease`), or else one
        from the pool; in autocommit mode if ``autocommit`` and the engine allows it (see
        :meth:`transaction_on`)."""
        if self.connections is not None:
            async with self.connections.lease(urgent=urgent, patient=patient) as conn:
                yield conn
            return
        async with self.engine.connect() as conn:
            if autocommit and self.autocommit:
                await conn.execution_options(isolation_level="AUTOCOMMIT")
            yield conn

    @asynccontextmanager
    async def _transaction(
        self, progress: _Progress, *, one_statement: bool = False, urgent: bool = False, patient: bool = False
    ) -> AsyncIterator[AsyncConnection]:
        async with self._connection(autocommit=one_statement, urgent=urgent, patient=patient) as conn:
            if one_statement and autocommits(conn):
                # A single statement is atomic on its own: without BEGIN and COMMIT it costs
                # one round trip instead of three.
                yield conn
                return
            async with self.transaction_on(conn, progress) as same:
                yield same

    @asynccontextmanager
    async def transaction_on(
        self, conn: AsyncConnection, progress: _Progress | None = None
    ) -> AsyncIterator[AsyncConnection]:
        """One write transaction on ``conn``: committed on success, else rolled back.

        On a connection in autocommit mode (an instance's own, on PostgreSQL) the
        transaction is opened and ended with explicit statements.
        """
        explicit = autocommits(conn)
        try:
            if self.is_sqlite:
                # Inside the try: a cancel that lands while BEGIN runs must still roll back.
                await _begin_immediate(conn)
            elif explicit:
                await conn.exec_driver_sql("BEGIN")
            yield conn
        except BaseException:
            await _rollback(conn, explicit=explicit)
            raise
        if progress is not None:
            progress.committing = True
        if explicit:
            try:
                await conn.exec_driver_sql("COMMIT")
            except BaseException:
                # The server's transaction state is unknown: the connection is not used again.
                with contextlib.suppress(Exception):
                    await asyncio.shield(conn.invalidate())
                raise
        else:
            await conn.commit()

    @asynccontextmanager
    async def reading(self, *, patient: bool = False) -> AsyncIterator[AsyncConnection]:
        """A connection for reads; its implicit transaction ends with it.

        On PostgreSQL it reads in autocommit mode: each statement sees what was committed
        when it started (as under READ COMMITTED) and costs one round trip, not three.
        ``patient``: background work (see :meth:`Connections.lease`).
        """
        async with self._connection(autocommit=True, patient=patient) as conn:
            yield conn

    async def retrying(
        self,
        work: Callable[[AsyncConnection], Awaitable[T]],
        *,
        one_statement: bool = False,
        urgent: bool = False,
        patient: bool = False,
    ) -> T:
        """Run ``work`` in a transaction, again on deadlocks and lock timeouts, and once on a
        connection found dead before ``COMMIT`` (a stale pooled connection, a terminated
        backend): that transaction was not committed, so running it again is safe.

        ``one_statement``: ``work`` writes with one statement that may run again even if
        its first run landed (it is idempotent, or what it did is recovered anyway, like a
        claim or a direct-start insert whose answer was lost: the resurrector hands over a
        row claimed here that never started); PostgreSQL then runs it without BEGIN and COMMIT.
        ``urgent``: the heartbeat's, first in line for the instance's connections;
        ``patient``: background work (see :meth:`Connections.lease`).
        """
        reconnected = False
        for attempt in range(_TRANSIENT_RETRIES):
            progress = _Progress()
            try:
                async with self._transaction(
                    progress, one_statement=one_statement, urgent=urgent, patient=patient
                ) as conn:
                    return await work(conn)
            except DBAPIError as exc:
                if progress.committing or attempt == _TRANSIENT_RETRIES - 1:
                    raise  # a failed COMMIT may have landed: never run it again
                if exc.connection_invalidated and not reconnected:
                    reconnected = True
                    continue
                if not self.is_transient(exc):
                    raise
            await asyncio.sleep(random.uniform(0.005, 0.02) * (attempt + 1))
        raise AssertionError("unreachable")

    def is_transient(self, exc: DBAPIError) -> bool:
        """A lock conflict that a retry of the same transaction may get past."""
        text = str(exc.orig)
        if self.name == "mysql":
            code = exc.orig.args[0] if exc.orig is not None and exc.orig.args else None
            return code in (1205, 1213)
        if self.name == "postgresql":
            code = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
            return code in ("40P01", "40001", "55P03")
        return "database is locked" in text or "database is busy" in text

    def refuses(self, exc: BaseException) -> bool:
        """Whether the database (or the driver, before sending) refused this data: writing
        the same again cannot succeed, unlike after a lost connection, a lock timeout, a
        read-only standby or a full disk, which pass."""
        if isinstance(exc, DataError | IntegrityError):
            return True
        if isinstance(exc, DBAPIError):
            if exc.connection_invalidated or exc.orig is None:
                return False
            if self.name == "postgresql":
                state = str(getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None) or "")
                if "NOTIFY queue" in str(exc.orig):
                    # A full notification queue (a listener stopped reading) is not this data's
                    # fault: the write waits for it to drain, as for a full disk.
                    return False
                # data exception, integrity violation, program limit exceeded (e.g. index row size)
                return state[:2] in ("22", "23", "54")
            if self.name == "mysql":
                number = exc.orig.args[0] if exc.orig.args else None
                return number in _MYSQL_REFUSALS
            return "too big" in str(exc.orig) or "mismatch" in str(exc.orig)
        # Not from the database: the driver could not encode a value (UnicodeEncodeError,
        # OverflowError, ...).  Lost sockets are OSErrors, which pass.
        return not isinstance(exc, OSError | SQLAlchemyError)

    def is_unique_violation(self, exc: DBAPIError) -> bool:
        if self.name == "mysql":
            return bool(exc.orig is not None and exc.orig.args and exc.orig.args[0] == 1062)
        if self.name == "postgresql":
            code = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
            return code == "23505"
        return "UNIQUE constraint failed" in str(exc.orig)


class _Progress:
    """How far a transaction got: a failure at COMMIT leaves its outcome unknown."""

    __slots__ = ("committing",)

    def __init__(self) -> None:
        self.committing = False


async def _rollback(conn: AsyncConnection, *, explicit: bool = False) -> None:
    """Roll back; on a connection that is already broken there is nothing left to undo.

    ``explicit``: the transaction was opened with a ``BEGIN`` statement (autocommit mode).
    """
    try:
        if explicit:
            await asyncio.shield(conn.exec_driver_sql("ROLLBACK"))
        else:
            await asyncio.shield(conn.rollback())
    except Exception:
        with contextlib.suppress(Exception):
            await asyncio.shield(conn.invalidate())
    except BaseException:
        # Cancelled half-way: the connection's state is unknown, so it is not used again.
        with contextlib.suppress(Exception):
            await asyncio.shield(conn.invalidate())
        raise


async def _begin_immediate(conn: AsyncConnection) -> None:
    """SQLite's ``BEGIN IMMEDIATE``, as one call to aiosqlite's thread rather than
    SQLAlchemy's three (a cursor opened, the statement, the cursor closed): every write
    transaction starts with it, and each call there is a wake-up of two threads.

    SQLAlchemy's transaction is begun first (on SQLite that sends nothing), so that the
    ``COMMIT`` or ``ROLLBACK`` that ends it reaches the driver whatever follows.  While
    SQLAlchemy's execution is observed (see :func:`unobserved`), it runs through SQLAlchemy.
    """
    if not conn.in_transaction():
        await conn.begin()
    driver = (await conn.get_raw_connection()).driver_connection
    if driver is None or not unobserved(conn) or not hasattr(driver, "execute_fetchall"):
        await conn.exec_driver_sql("BEGIN IMMEDIATE")
        return
    try:
        await sqlite_execute(conn, driver, "BEGIN IMMEDIATE", ())
    except NotSent:
        # A closed connection (aiosqlite's, or SQLite's): SQLAlchemy's execution reports it
        # as lost and invalidates it, as it always did.
        await conn.exec_driver_sql("BEGIN IMMEDIATE")


class NotSent(Exception):
    """The driver refused a statement before it reached the database."""


async def sqlite_execute(conn: AsyncConnection, driver: Any, sql: str, parameters: Any) -> Any:
    """``sql`` sent to ``conn``'s aiosqlite connection ``driver`` in one call to its thread;
    its rows.

    SQLite's refusals (a busy file, a constraint) are raised as SQLAlchemy's execution
    raises them.  What is raised before the statement reaches SQLite (a closed connection,
    aiosqlite's or SQLite's; parameters it cannot bind or encode) becomes :class:`NotSent`,
    for the caller to run the statement through SQLAlchemy, which reports it as it always
    did.  Anything else is raised as is, as SQLAlchemy lets it through.
    """
    try:
        return await driver.execute_fetchall(sql, parameters)
    except (ValueError, sqlite3.ProgrammingError, sqlite3.InterfaceError) as exc:
        raise NotSent from exc
    except sqlite3.DatabaseError as exc:
        sync = conn.sync_connection
        error = DBAPIError.instance(
            sql,
            parameters,
            exc,
            sqlite3.Error,
            hide_parameters=sync is not None and sync.engine.hide_parameters,
            dialect=conn.dialect,
        )
        assert isinstance(error, DBAPIError)  # (SQLite's errors are the DB-API's)
        raise error from exc


def unobserved(conn: AsyncConnection) -> bool:
    """Whether nobody listens to SQLAlchemy's events for ``conn`` (statement events, as
    tracing does, or ``handle_error``, which may decide what counts as a lost connection),
    and its engine does not log them (``echo``): only then may a statement skip
    SQLAlchemy's execution."""
    sync = conn.sync_connection
    return sync is not None and not (
        sync._has_events or sync.engine._has_events or sync.dialect._has_events or sync._echo
    )


def autocommits(conn: AsyncConnection) -> bool:
    """Whether ``conn`` is in autocommit mode (its transactions say BEGIN and COMMIT)."""
    sync = conn.sync_connection
    return sync is not None and sync.get_execution_options().get("isolation_level") == "AUTOCOMMIT"


def flavor_of(dialect: Any) -> str:
    """ "postgresql", "sqlite", "mariadb" or "mysql" (for a SQLAlchemy dialect that has connected)."""
    if dialect.name in ("mysql", "mariadb"):
        return "mariadb" if getattr(dialect, "is_mariadb", False) else "mysql"
    return str(dialect.name)


def _family(name: str) -> str:
    if name in ("mysql", "mariadb"):
        return "mysql"
    if name in ("postgresql", "sqlite"):
        return name
    raise StoreError(f"unsupported database dialect {name!r}; use PostgreSQL, MySQL/MariaDB or SQLite")


async def wrap_errors(awaitable: Awaitable[T], what: str) -> T:
    """Await a database operation; anything it raises leaves the public API as a StoreError.

    (A driver's own exception, or any other unexpected one, never reaches the caller bare.)
    """
    try:
        return await awaitable
    except JobsDError:
        raise
    except Exception as exc:
        raise StoreError(f"{what} failed: {exc}") from exc
