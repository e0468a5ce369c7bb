"""Hot statements on the driver's connection (PostgreSQL): the same rows and the same errors
as SQLAlchemy's execution, and a connection that died or was interrupted is invalidated."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from conftest import BACKENDS, MakeJobsD, eventually, fetch_runs
from sqlalchemy import Select, Text, bindparam, column, event, func, literal, select, table, text, type_coerce
from sqlalchemy.exc import DBAPIError, IntegrityError, StatementError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from jobsd_async import RunInfo, RunStatus
from jobsd_async._store import _claim, _create, _driver
from jobsd_async._store._dialect import Dialect
from jobsd_async._store._rows import RunRow
from jobsd_async._store._schema import UTCDateTime

pytestmark = pytest.mark.parametrize("backend", [b for b in BACKENDS if b == "postgresql"])


async def autocommit(engine: AsyncEngine) -> AsyncConnection:
    conn = await engine.connect()
    await conn.execution_options(isolation_level="AUTOCOMMIT")
    await conn.exec_driver_sql("SELECT 1")
    return conn


def echo(engine: AsyncEngine) -> tuple[Select[Any], _driver.DriverStatement]:
    """SELECT of a text parameter, the statement's literal, and the database clock."""
    stmt = select(bindparam("text", type_=Text), literal("fixed"), func.statement_timestamp())
    return stmt, _driver.DriverStatement(stmt, list(stmt.selected_columns), engine.dialect)


async def test_a_run_started_here_gets_the_row_as_stored(make_jobsd: MakeJobsD) -> None:
    # The direct start's insert runs on the driver: the row the job is started with is
    # the row a read through SQLAlchemy finds (every column, types and time zones alike).
    jd = make_jobsd(workers=2)
    started: list[RunRow] = []
    stored: list[RunRow] = []
    insert_claimed = _create.insert_claimed

    async def recording(*args: Any, **kwargs: Any) -> Any:
        row, run_id = await insert_claimed(*args, **kwargs)
        assert row is not None
        started.append(row)
        return row, run_id

    @jd.job(name="look")
    async def look(info: RunInfo) -> None:
        stored.append(RunRow.of((await fetch_runs(jd))[0]))  # before its completion is written

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
    assert state.status is RunStatus.SUCCEEDED
    assert driven == ["INSERT", "WITH"], "the insert and the completion did not run on the driver"
    assert len(started) == 1 and started == stored
    assert started[0].run_started_by == jd.instance_id


@pytest.mark.parametrize("queues", [None, ("default", "other")])
async def test_a_claimed_run_gets_the_row_as_stored(
    make_jobsd: MakeJobsD, queues: tuple[str, ...] | None
) -> None:
    # The claim runs on the driver (also when it names queues and jobs as array values):
    # the rows the claim returns are the rows a read through SQLAlchemy finds.
    jd = make_jobsd(workers=2, queues=queues)
    claimed: list[RunRow] = []
    stored: list[RunRow] = []
    claim_due = _claim.claim_due

    async def recording(*args: Any, **kwargs: Any) -> list[RunRow]:
        rows = await claim_due(*args, **kwargs)
        claimed.extend(rows)
        return rows

    @jd.job(name="look")
    async def look(info: RunInfo) -> None:
        stored.extend(RunRow.of(row) for row in await fetch_runs(jd) if row["id"] == info.run_id)

    driven: list[str] = []
    fetch = _driver.fetch

    async def fetching(conn: AsyncConnection, statement: Any, params: Any, **kw: Any) -> Any:
        driven.append(statement.sql)
        return await fetch(conn, statement, params, **kw)

    async with jd:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(_claim, "claim_due", recording)
            patch.setattr(_driver, "fetch", fetching)
            run_ids = [await look.create_run().run_after(0.05) for _ in range(3)]
            for run_id in run_ids:
                assert (await jd.wait_for_run(run_id, timeout=10)).status is RunStatus.SUCCEEDED
    assert any(sql.startswith("WITH picked") and "UPDATE" in sql for sql in driven), driven
    assert sorted(row.id for row in claimed) == sorted(run_ids)
    assert sorted(claimed) == sorted(stored)
    for row in claimed:
        assert row.run_started_by == jd.instance_id
        assert row.run_started_at is not None and row.run_started_at.tzinfo is UTC


async def test_rows_and_literals_come_back_as_sqlalchemy_gives_them(engine: AsyncEngine) -> None:
    stmt, driven = echo(engine)
    conn = await autocommit(engine)
    try:
        assert _driver.drives(conn)
        through_sqlalchemy = tuple((await conn.execute(stmt, {"text": "héllo"})).one())
        through_driver = (await _driver.fetch(conn, driven, {"text": "héllo"}))[0]
    finally:
        await conn.close()
    assert through_driver[:2] == through_sqlalchemy[:2] == ("héllo", "fixed")
    assert through_driver[2].tzinfo is not None and type(through_driver[2]) is type(through_sqlalchemy[2])


async def test_values_are_bound_and_read_through_the_column_types(engine: AsyncEngine) -> None:
    # UTCDateTime: an aware time in another zone is stored as UTC, a naive one refused
    # before anything is sent; what comes back is an aware UTC datetime, as SQLAlchemy's.
    stmt = select(
        bindparam("at", type_=UTCDateTime),
        type_coerce(func.statement_timestamp(), UTCDateTime),
    )
    driven = _driver.DriverStatement(stmt, list(stmt.selected_columns), engine.dialect)
    at = datetime(2026, 12, 2, 6, 30, tzinfo=timezone(timedelta(hours=2)))
    conn = await autocommit(engine)
    try:
        through_sqlalchemy = tuple((await conn.execute(stmt, {"at": at})).one())
        for _ in range(2):  # the first execution prepares; the next one runs as they all will
            through_driver = (await _driver.fetch(conn, driven, {"at": at}))[0]
            assert through_driver[0] == through_sqlalchemy[0] == at
            assert through_driver[0].tzinfo is through_sqlalchemy[0].tzinfo is UTC
            assert through_driver[1].tzinfo is UTC
        with pytest.raises(StatementError) as refused_by_sqlalchemy:
            await conn.execute(stmt, {"at": at.replace(tzinfo=None)})
        with pytest.raises(StatementError) as refused_by_driver:
            await _driver.fetch(conn, driven, {"at": at.replace(tzinfo=None)})
        assert not conn.invalidated
    finally:
        await conn.close()
    assert type(refused_by_driver.value.orig) is type(refused_by_sqlalchemy.value.orig) is ValueError


async def test_a_listener_on_the_engine_keeps_every_statement_with_sqlalchemy(engine: AsyncEngine) -> None:
    # Tracing built on statement events (or a handle_error hook) must see the statements.
    conn = await autocommit(engine)
    try:
        assert _driver.drives(conn)

        def listening(*_: object) -> None:
            pass

        event.listen(engine.sync_engine, "before_cursor_execute", listening)
        try:
            assert not _driver.drives(conn)
        finally:
            event.remove(engine.sync_engine, "before_cursor_execute", listening)
    finally:
        await conn.close()


async def test_refused_data_raises_what_sqlalchemy_raises(engine: AsyncEngine) -> None:
    # A NUL character PostgreSQL cannot store: the same error (SQLSTATE 22021), which the
    # completer treats as a refusal of this data (not a lost connection).
    stmt, driven = echo(engine)
    conn = await autocommit(engine)
    try:
        await _driver.fetch(conn, driven, {"text": "prepared"})  # the next ones run as they all will
        with pytest.raises(DBAPIError) as through_sqlalchemy:
            await conn.execute(stmt, {"text": "a\x00b"})
        with pytest.raises(DBAPIError) as through_driver:
            await _driver.fetch(conn, driven, {"text": "a\x00b"})
        assert not conn.invalidated
    finally:
        await conn.close()
    assert type(through_driver.value) is type(through_sqlalchemy.value)
    assert through_driver.value.orig.sqlstate == through_sqlalchemy.value.orig.sqlstate  # type: ignore[union-attr]
    dialect = Dialect(engine)
    assert dialect.refuses(through_driver.value) and not through_driver.value.connection_invalidated


async def test_a_unique_violation_is_an_integrity_error(engine: AsyncEngine) -> None:
    conn = await autocommit(engine)
    name = "tdriver_unique"
    try:
        await conn.exec_driver_sql(f"CREATE TEMPORARY TABLE {name} (id integer PRIMARY KEY)")
        target = table(name, column("id"))
        stmt = target.insert().values(id=bindparam("id")).returning(target.c.id)
        driven = _driver.DriverStatement(stmt, [target.c.id], engine.dialect, ["id"])
        assert await _driver.fetch(conn, driven, {"id": 1}) == [(1,)]
        with pytest.raises(IntegrityError) as raised:
            await _driver.fetch(conn, driven, {"id": 1})
    finally:
        await conn.close()
    assert Dialect(engine).is_unique_violation(raised.value)


async def test_a_terminated_backend_invalidates_the_connection(engine: AsyncEngine) -> None:
    # What Dialect.retrying looks for to run the work again on a new connection.
    _, driven = echo(engine)
    conn = await autocommit(engine)
    try:
        await _driver.fetch(conn, driven, {"text": "prepared"})  # the next ones run as they all will
        pid = (await conn.exec_driver_sql("SELECT pg_backend_pid()")).scalar_one()
        async with engine.connect() as killer:
            await killer.execute(select(func.pg_terminate_backend(pid)))
        with pytest.raises(DBAPIError) as raised:
            await _driver.fetch(conn, driven, {"text": "x"})
        assert raised.value.connection_invalidated
        assert conn.invalidated and not _driver.drives(conn)
    finally:
        await conn.close()


async def test_a_statement_cancelled_midway_invalidates_the_connection(engine: AsyncEngine) -> None:
    stmt = select(func.pg_sleep(bindparam("seconds")))
    driven = _driver.DriverStatement(stmt, list(stmt.selected_columns), engine.dialect)
    conn = await autocommit(engine)
    try:
        pid = (await conn.exec_driver_sql("SELECT pg_backend_pid()")).scalar_one()
        running = asyncio.create_task(_driver.fetch(conn, driven, {"seconds": 30}))

        async def sleeping() -> bool:
            async with engine.connect() as watcher:
                activity = (
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE pid = :pid AND state = 'active' AND query LIKE '%pg_sleep%'"
                )
                return bool((await watcher.execute(text(activity), {"pid": pid})).scalar_one())

        await eventually(sleeping, what="the statement reached the server")
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
        assert conn.invalidated
    finally:
        await conn.close()
