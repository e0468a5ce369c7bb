"""SQLite's write transactions open with ``BEGIN IMMEDIATE`` sent straight to aiosqlite (one
call to its thread, not SQLAlchemy's three): the same transactions, the same errors as
through SQLAlchemy, and SQLAlchemy's own execution while somebody listens to its events."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from conftest import BACKENDS
from sqlalchemy import event
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from jobsd_async._store._dialect import Dialect

pytestmark = pytest.mark.parametrize("backend", [b for b in BACKENDS if b == "sqlite"])


@pytest.fixture
async def impatient(tmp_path: Path) -> AsyncIterator[tuple[AsyncEngine, Path]]:
    """An engine on a file of its own that waits 50 ms for a busy file, not 5 s."""
    path = tmp_path / "begin.db"
    engine = create_async_engine(f"sqlite+aiosqlite:///{path}", connect_args={"timeout": 0.05})
    async with engine.begin() as conn:
        await conn.exec_driver_sql("CREATE TABLE t (x INTEGER)")
    try:
        yield engine, path
    finally:
        await engine.dispose()


def _hold_write_lock(path: Path) -> sqlite3.Connection:
    other = sqlite3.connect(path, isolation_level=None, timeout=0)
    other.execute("BEGIN IMMEDIATE")
    return other


async def test_a_busy_file_refuses_the_begin_as_sqlalchemy_would(
    backend: str, impatient: tuple[AsyncEngine, Path]
) -> None:
    engine, path = impatient
    dialect = await Dialect.detect(engine)
    other = _hold_write_lock(path)
    try:
        with pytest.raises(OperationalError) as refused:
            async with dialect.transaction() as conn:
                await conn.exec_driver_sql("INSERT INTO t VALUES (1)")
        assert "database is locked" in str(refused.value.orig)
        assert dialect.is_transient(refused.value)  # so retrying() tries again
    finally:
        other.close()
    # Once the file is free the same work lands, and the write lock is let go after it.
    assert await dialect.retrying(lambda conn: conn.exec_driver_sql("INSERT INTO t VALUES (2)")) is not None
    _hold_write_lock(path).close()


async def test_a_transaction_commits_or_rolls_back_all_it_wrote(
    backend: str, impatient: tuple[AsyncEngine, Path]
) -> None:
    engine, path = impatient
    dialect = await Dialect.detect(engine)
    async with dialect.transaction() as conn:
        await conn.exec_driver_sql("INSERT INTO t VALUES (1)")

    async def write_then_fail() -> None:
        async with dialect.transaction() as conn:
            await conn.exec_driver_sql("INSERT INTO t VALUES (2)")
            raise RuntimeError("undo")

    with pytest.raises(RuntimeError):
        await write_then_fail()
    async with engine.connect() as conn:
        assert [x for (x,) in await conn.exec_driver_sql("SELECT x FROM t")] == [1]
    _hold_write_lock(path).close()  # neither left the file locked


async def test_a_listener_on_the_engine_sees_the_begin(
    backend: str, impatient: tuple[AsyncEngine, Path]
) -> None:
    engine, _ = impatient
    dialect = await Dialect.detect(engine)
    seen: list[str] = []

    def listening(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        seen.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", listening)
    try:
        async with dialect.transaction() as conn:
            await conn.exec_driver_sql("INSERT INTO t VALUES (1)")
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", listening)
    assert seen == ["BEGIN IMMEDIATE", "INSERT INTO t VALUES (1)"]


async def test_a_closed_connection_is_reported_lost_as_through_sqlalchemy(
    backend: str, impatient: tuple[AsyncEngine, Path]
) -> None:
    """A pooled connection whose aiosqlite connection was closed: the BEGIN fails as a lost
    connection (``connection_invalidated``, which ``retrying`` answers with a new one), not
    as an error of the data, and the connection is not used again."""
    engine, _ = impatient
    dialect = await Dialect.detect(engine)
    conn = await engine.connect()
    try:
        driver = (await conn.get_raw_connection()).driver_connection
        assert driver is not None
        await driver.close()
        with pytest.raises(DBAPIError) as lost:
            async with dialect.transaction_on(conn):
                pass
        assert lost.value.connection_invalidated
        assert not dialect.refuses(lost.value)
        assert conn.invalidated
    finally:
        await conn.close()
