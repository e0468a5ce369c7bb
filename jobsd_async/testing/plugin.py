"""pytest fixtures for code that uses jobsd_async: an isolated database for every test.

Enable them in a ``conftest.py``::

    pytest_plugins = ["jobsd_async.testing.plugin"]

- ``jobsd_database_url``: a SQLite database file of the test's own (in ``tmp_path``).
  Override this fixture to test against another server; the tables then get a prefix of
  the test's own instead (``jobsd_table_prefix``), and are dropped afterwards.
- ``jobsd_table_prefix``: a fresh table prefix, for tests that share one database.
- ``jobsd_engine``: an ``AsyncEngine`` on ``jobsd_database_url`` for async tests (with
  pytest-asyncio: ``pip install 'jobsd-async[testing]'``); the tables of
  ``jobsd_table_prefix`` are dropped and the engine disposed after the test.

A web app tested through its own lifespan (FastAPI's ``TestClient``) should build its
engine from ``jobsd_database_url``: the lifespan runs on the client's event loop, not the
test's.  See docs/testing.md.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from sqlalchemy import Connection, MetaData, inspect
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

__all__ = ("jobsd_database_url", "jobsd_engine", "jobsd_table_prefix")


@pytest.fixture
def jobsd_database_url(tmp_path: Path) -> str:
    """The database the test's instances use: a SQLite file of the test's own."""
    return f"sqlite+aiosqlite:///{tmp_path / 'jobsd.db'}"


@pytest.fixture
def jobsd_table_prefix() -> str:
    """A table prefix of the test's own (``t<random>_``)."""
    return f"t{uuid.uuid4().hex[:12]}_"


@pytest_asyncio.fixture
async def jobsd_engine(jobsd_database_url: str, jobsd_table_prefix: str) -> AsyncIterator[AsyncEngine]:
    """An engine on ``jobsd_database_url``; the test prefix's tables are dropped afterwards."""
    engine = create_async_engine(jobsd_database_url)
    try:
        yield engine
        async with engine.begin() as conn:
            await conn.run_sync(_drop_prefixed, jobsd_table_prefix)
    finally:
        await engine.dispose()


def _drop_prefixed(conn: Connection, prefix: str) -> None:
    inspector = inspect(conn)
    mine = [name for name in inspector.get_table_names() if name.startswith(prefix)]
    if mine:
        metadata = MetaData()
        metadata.reflect(conn, only=mine)
        metadata.drop_all(conn)
