"""Hot statements on aiosqlite's connection (SQLite): one call to its thread instead of
SQLAlchemy's four, with the same rows, the same transactions and the same errors as
SQLAlchemy's execution."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from conftest import BACKENDS, MakeJobsD, fetch_runs, insert_row
from sqlalchemy import Integer, Text, bindparam, column, event, select, table, text
from sqlalchemy.exc import DBAPIError, IntegrityError, PendingRollbackError, StatementError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from jobsd_async import RunInfo, RunStatus
from jobsd_async._store import _complete, _create, _driver
from jobsd_async._store._complete import Closing, Completion
from jobsd_async._store._dialect import Dialect
from jobsd_async._store._rows import RunRow, Store
from jobsd_async._store._schema import UTCDateTime

pytestmark = pytest.mark.parametrize("backend", [b for b in BACKENDS if b == "sqlite"])

_T = table("t", column("id", Integer), column("note", Text))


@pytest.fixture
async def own(tmp_path: Path) -> AsyncIterator[tuple[AsyncEngine, Dialect]]:
    """An engine on a file of its own, with a table ``t`` (``id`` the primary key)."""
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'driver.db'}")
    async with engine.begin() as conn:
        await conn.exec_driver_sql("CREATE TABLE t (id INTEGER PRIMARY KEY, note TEXT)")
    try:
        yield engine, await Dialect.detect(engine)
    finally:
        await engine.dispose()


def insert_t(engine: AsyncEngine) -> _driver.DriverStatement:
    stmt = _T.insert().values(id=bindparam("id"), note=bindparam("note")).returning(_T.c.id, _T.c.note)
    return _driver.DriverStatement(stmt, [_T.c.id, _T.c.note], engine.dialect, ["id", "note"])


async def notes(engine: AsyncEngine) -> list[tuple[Any, ...]]:
    async with engine.connect() as conn:
        return [tuple(r) for r in await conn.execute(select(_T.c.id, _T.c.note).order_by(_T.c.id))]


async def test_a_run_started_here_and_its_completion_run_on_the_driver(
    backend: str, make_jobsd: MakeJobsD
) -> None:
    # The row the job is started with is the row a read through SQLAlchemy finds (every
    # column, types and time zones alike), and the completion closes it as SQLAlchemy would.
    jd = make_jobsd(workers=2)
    stored: list[RunRow] = []
    started: list[RunRow] = []
    insert_claimed = _create.insert_claimed

    async def recording(*args: Any, **kwargs: Any) -> Any:
        row, run_id = await insert_claimed(*args, **kwargs)
        assert row is not None
        started.append(row)
        return row, run_id

    @jd.job(name="look")
    async def look(info: RunInfo) -> str:
        stored.append(RunRow.of((await fetch_runs(jd))[0]))  # before its completion is written
        return "looked"

    driven: list[str] = []
    fetch = _driver.fetch

    async def fetching(conn: AsyncConnection, statement: Any, params: Any, **kw: Any) -> Any:
        driven.append(statement.sql.split()[0])
        return await fetch(conn, statement, params, **kw)

    async with jd:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(_create, "insert_claimed", recording)
            patch.setattr(_driver, "fetch", fetching)
            run_id = await look.create_run().run()
            state = await jd.wait_for_run(run_id, timeout=10)
    assert state.status is RunStatus.SUCCEEDED and state.result == "looked"
    assert driven == ["INSERT", "UPDATE"], "the insert and the completion did not run on the driver"
    assert len(started) == 1 and started == stored
    assert started[0].run_started_by == jd.instance_id and started[0].run_started_at is not None
    assert started[0].run_started_at.tzinfo is UTC
    closed = RunRow.of((await fetch_runs(jd))[0])
    assert closed.run_completed_at is not None and closed.run_completed_at.tzinfo is UTC
    assert closed.name_active is None and closed.run_success_count == 1


async def test_a_batch_closes_its_rows_and_no_other(backend: str, make_jobsd: MakeJobsD) -> None:
    # Three rows ending alike close in one statement of four placeholders (the last id
    # repeated); a fourth row held by the same owner is left open.
    jd = make_jobsd(workers=0)
    async with jd:
        pass  # the tables
    owner = 7
    started = datetime.now(UTC)
    ids = [await insert_row(jd, job="any", run_started_by=owner, run_started_at=started) for _ in range(4)]
    rows = {row["id"]: RunRow.of(row) for row in await fetch_runs(jd)}
    closing = Closing(error=None, result="1", success=True)
    items = [Completion(rows[row_id], closing, None, owner) for row_id in ids[:3]]
    store = Store(await Dialect.detect(jd.engine), jd._tables)
    statements: list[str] = []
    fetch = _driver.fetch

    async def fetching(conn: AsyncConnection, statement: Any, params: Any, **kw: Any) -> Any:
        statements.append(statement.sql)
        return await fetch(conn, statement, params, **kw)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_driver, "fetch", fetching)
        async with store.dialect.transaction() as conn:
            written = await _complete.complete_many(store, conn, items, instance_id=owner, finals=ids[:3])
    assert [w is not None and w.final is not None and w.final.id for w in written] == ids[:3]
    assert len(statements) == 1 and "IN (?, ?, ?, ?)" in statements[0], statements
    after = {row["id"]: row for row in await fetch_runs(jd)}
    assert [row_id for row_id in ids if after[row_id]["run_completed_at"] is not None] == ids[:3]
    assert [after[row_id]["run_result"] for row_id in ids] == ["1", "1", "1", None]


async def test_values_are_bound_and_read_through_the_column_types(
    backend: str, own: tuple[AsyncEngine, Dialect]
) -> None:
    # UTCDateTime: an aware time in another zone is stored as UTC, a naive one refused
    # before anything is sent (as SQLAlchemy refuses it); read back aware, in UTC.
    engine, dialect = own
    stmt = select(bindparam("at", type_=UTCDateTime), dialect.now())
    driven = _driver.DriverStatement(stmt, list(stmt.selected_columns), engine.dialect)
    at = datetime(2026, 12, 2, 6, 30, tzinfo=timezone(timedelta(hours=2)))
    async with dialect.transaction() as conn:
        assert _driver.drives(conn)
        through_sqlalchemy = tuple((await conn.execute(stmt, {"at": at})).one())
        through_driver = (await _driver.fetch(conn, driven, {"at": at}))[0]
        assert through_driver[0] == through_sqlalchemy[0] == at
        assert through_driver[0].tzinfo is through_sqlalchemy[0].tzinfo is UTC
        assert through_driver[1].tzinfo is UTC  # the database clock, as SQLAlchemy reads it
        assert abs(through_driver[1] - through_sqlalchemy[1]) < timedelta(minutes=1)
        with pytest.raises(StatementError) as refused_by_sqlalchemy:
            await conn.execute(stmt, {"at": at.replace(tzinfo=None)})
        with pytest.raises(StatementError) as refused_by_driver:
            await _driver.fetch(conn, driven, {"at": at.replace(tzinfo=None)})
    assert type(refused_by_driver.value.orig) is type(refused_by_sqlalchemy.value.orig) is ValueError


async def test_only_inside_a_transaction_and_while_nobody_listens(
    backend: str, own: tuple[AsyncEngine, Dialect]
) -> None:
    # Outside SQLAlchemy's transaction the statement would open one SQLAlchemy does not
    # know of; a listener on the engine must see every statement.
    engine, dialect = own
    async with engine.connect() as conn:
        await conn.exec_driver_sql("SELECT 1")
        await conn.rollback()
        assert not _driver.drives(conn)
    async with dialect.transaction() as conn:
        assert _driver.drives(conn)

        def listening(*_: object) -> None:
            pass

        event.listen(engine.sync_engine, "before_cursor_execute", listening)
        try:
            assert not _driver.drives(conn)
        finally:
            event.remove(engine.sync_engine, "before_cursor_execute", listening)


async def test_what_it_writes_commits_or_rolls_back_with_the_transaction(
    backend: str, own: tuple[AsyncEngine, Dialect]
) -> None:
    engine, dialect = own
    driven = insert_t(engine)
    async with dialect.transaction() as conn:
        assert await _driver.fetch(conn, driven, {"id": 1, "note": "kept"}) == [(1, "kept")]

    async def write_then_fail() -> None:
        async with dialect.transaction() as conn:
            await _driver.fetch(conn, driven, {"id": 2, "note": "undone"})
            raise RuntimeError("undo")

    with pytest.raises(RuntimeError):
        await write_then_fail()
    assert await notes(engine) == [(1, "kept")]


async def test_a_unique_violation_is_an_integrity_error_and_writes_nothing(
    backend: str, own: tuple[AsyncEngine, Dialect]
) -> None:
    engine, dialect = own
    driven = insert_t(engine)
    async with dialect.transaction() as conn:
        await _driver.fetch(conn, driven, {"id": 1, "note": "first"})
    with pytest.raises(IntegrityError) as through_driver:
        async with dialect.transaction() as conn:
            await _driver.fetch(conn, driven, {"id": 1, "note": "again"})
    with pytest.raises(IntegrityError) as through_sqlalchemy:
        async with dialect.transaction() as conn:
            await conn.execute(driven.statement, {"id": 1, "note": "again"})
    assert type(through_driver.value.orig) is type(through_sqlalchemy.value.orig)
    assert str(through_driver.value.orig) == str(through_sqlalchemy.value.orig)
    assert dialect.is_unique_violation(through_driver.value) and dialect.refuses(through_driver.value)
    assert await notes(engine) == [(1, "first")]


async def test_text_the_driver_cannot_bind_fails_as_through_sqlalchemy(
    backend: str, own: tuple[AsyncEngine, Dialect]
) -> None:
    # A lone surrogate cannot be encoded for SQLite: the same error either way (raised
    # before the statement reaches SQLite), which counts as refused data; nothing written.
    engine, dialect = own
    driven = insert_t(engine)
    raised: list[BaseException] = []
    for run in (
        lambda conn: _driver.fetch(conn, driven, {"id": 1, "note": "a\ud800b"}),
        lambda conn: conn.execute(driven.statement, {"id": 1, "note": "a\ud800b"}),
    ):
        with pytest.raises(UnicodeEncodeError) as failed:
            async with dialect.transaction() as conn:
                await run(conn)
        raised.append(failed.value)
    assert type(raised[0]) is type(raised[1])
    assert str(raised[0]) == str(raised[1])
    assert dialect.refuses(raised[0])
    assert await notes(engine) == []


async def test_a_closed_connection_is_reported_lost_as_through_sqlalchemy(
    backend: str, own: tuple[AsyncEngine, Dialect]
) -> None:
    """aiosqlite's connection closed under a transaction: the statement fails as a lost
    connection (``connection_invalidated``, which ``retrying`` answers with a new one), not
    as an error of the data, and the connection is not used again."""
    engine, dialect = own
    driven = insert_t(engine)
    conn = await engine.connect()
    try:
        await conn.begin()
        assert _driver.drives(conn)
        driver = (await conn.get_raw_connection()).driver_connection
        assert driver is not None
        await driver.close()
        with pytest.raises(DBAPIError) as lost:
            await _driver.fetch(conn, driven, {"id": 1, "note": "x"})
        assert lost.value.connection_invalidated
        assert not dialect.refuses(lost.value)
        assert conn.invalidated
    finally:
        await conn.close()
    assert await notes(engine) == []


async def test_a_statement_cancelled_midway_is_not_committed(
    backend: str, own: tuple[AsyncEngine, Dialect]
) -> None:
    """aiosqlite's thread runs a statement whose caller was cancelled: the connection is
    not used again (as SQLAlchemy's execution does), so whoever holds it cannot commit it."""
    engine, _ = own
    count = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 3000000)"
    slow = (
        text(f"INSERT INTO t (id, note) SELECT :id, ({count} SELECT count(*) FROM c) RETURNING id")
        .bindparams(bindparam("id", type_=Integer))
        .columns(_T.c.id)
    )
    driven = _driver.DriverStatement(slow, [_T.c.id], engine.dialect)
    conn = await engine.connect()
    try:
        await conn.begin()
        assert _driver.drives(conn)
        running = asyncio.create_task(_driver.fetch(conn, driven, {"id": 1}))
        await asyncio.sleep(0)  # (to the driver's call)
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
        assert conn.invalidated
        with pytest.raises(PendingRollbackError):
            await conn.commit()
    finally:
        await conn.close()
    assert await notes(engine) == []


async def test_a_connection_of_another_engine_runs_it_through_sqlalchemy(
    backend: str, own: tuple[AsyncEngine, Dialect]
) -> None:
    # Compiled for one engine's dialect; another engine (a caller's) may set it up
    # otherwise: SQLAlchemy's execution compiles it for that one.
    engine, _ = own
    driven = insert_t(engine)
    other = create_async_engine(engine.url)
    executed: list[Any] = []
    try:
        async with other.begin() as conn:
            assert _driver.drives(conn)
            execute = AsyncConnection.execute

            async def executing(self: AsyncConnection, statement: Any, *args: Any, **kwargs: Any) -> Any:
                executed.append(statement)
                return await execute(self, statement, *args, **kwargs)

            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(AsyncConnection, "execute", executing)
                assert await _driver.fetch(conn, driven, {"id": 1, "note": "other"}) == [(1, "other")]
    finally:
        await other.dispose()
    assert executed == [driven.statement]
    assert await notes(engine) == [(1, "other")]


async def test_without_returning_nothing_runs_on_the_driver(backend: str, make_jobsd: MakeJobsD) -> None:
    # SQLite before 3.35 has no RETURNING: its statements stay with SQLAlchemy (an insert
    # without RETURNING on the driver would report its row as not inserted).
    detect = Dialect.detect

    async def without_returning(engine: AsyncEngine) -> Dialect:
        dialect = await detect(engine)
        dialect.insert_returning = dialect.update_returning = dialect.direct_start = False
        return dialect

    driven: list[str] = []
    fetch = _driver.fetch

    async def fetching(conn: AsyncConnection, statement: Any, params: Any, **kw: Any) -> Any:
        driven.append(statement.sql)
        return await fetch(conn, statement, params, **kw)

    jd = make_jobsd(workers=2)
    gate = asyncio.Event()

    @jd.job(name="echo")
    async def echo(value: int) -> int:
        await gate.wait()  # the name stays taken until the second create
        return value

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Dialect, "detect", without_returning)
        patch.setattr(_driver, "fetch", fetching)
        async with jd:
            try:
                created = await echo.create_run(5).unique("only-one").run()
                again = await echo.create_run(6).unique("only-one").run()
            finally:
                gate.set()
            state = await jd.wait_for_run(created, timeout=10)
    assert again == created
    assert state.status is RunStatus.SUCCEEDED and state.result == 5
    assert driven == []
