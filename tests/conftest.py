"""Test fixtures: every test runs on SQLite, PostgreSQL and MariaDB.

Server URLs come from ``JOBSD_TEST_POSTGRES_URL`` and ``JOBSD_TEST_MYSQL_URL`` (defaults: the
local servers).  ``JOBSD_TEST_BACKENDS`` (comma-separated: sqlite,postgresql,mariadb,
mariadb-asyncmy) narrows the set.  ``mariadb-asyncmy`` is the MariaDB server through the
asyncmy driver instead of aiomysql; it runs the modules in ``DRIVER_MODULES`` only, the ones
where a driver's errors, types and connection handling show.  A server that cannot be
reached skips its tests, except under ``CI=true``, where it fails them.  Each test gets its
own table prefix and drops its tables afterwards.
"""

from __future__ import annotations

import asyncio
import os
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Insert
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from jobsd_async import JobsD
from jobsd_async._store._dialect import Dialect

SERVER_URLS = {
    "postgresql": os.environ.get(
        "JOBSD_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
    ),
    "mariadb": os.environ.get("JOBSD_TEST_MYSQL_URL", "mysql+aiomysql://root@127.0.0.1:3306/test"),
}
SERVER_URLS["mariadb-asyncmy"] = "mysql+asyncmy:" + SERVER_URLS["mariadb"].partition(":")[2]
ALL_BACKENDS = ("sqlite", "postgresql", "mariadb", "mariadb-asyncmy")
BACKENDS = tuple(
    b.strip() for b in os.environ.get("JOBSD_TEST_BACKENDS", ",".join(ALL_BACKENDS)).split(",") if b.strip()
)
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

# The modules whose tests also run through asyncmy: everything a driver decides (error
# classes and codes, lost connections, value types, transactions, wake-ups).  The rest
# exercises jobsd's own logic, the same whichever driver carries the statements.
DRIVER_MODULES = frozenset(
    {
        "test_bad_rows",
        "test_cancel",
        "test_connection_loss",
        "test_create_runs",
        "test_db_faults",
        "test_direct_start",
        "test_go_runs",
        "test_hostile_outcomes",
        "test_isolation",
        "test_limits",
        "test_resurrection",
        "test_routing",
        "test_smoke",
        "test_transactional_enqueue",
        "test_validation",
        "test_waiting",
    }
)


def server(backend: str) -> str:
    """The database server a backend names: ``mariadb`` whichever driver reaches it."""
    return "mariadb" if backend.startswith("mariadb") else backend


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run the ``mariadb-asyncmy`` backend in the driver modules only."""
    kept: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    for item in items:
        callspec = getattr(item, "callspec", None)
        module = getattr(item, "module", None)
        on_asyncmy = callspec is not None and callspec.params.get("backend") == "mariadb-asyncmy"
        in_scope = module is not None and module.__name__.rpartition(".")[2] in DRIVER_MODULES
        (dropped if on_asyncmy and not in_scope else kept).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


# Fast settings for tests; each test may override them.
FAST: dict[str, Any] = {
    "poll_interval": 0.2,
    "heartbeat_interval": 0.5,
    "shutdown_timeout": 2.0,
    "cancel_grace": 0.5,
}

_reachable: dict[str, str | None] = {}


def backend_url(backend: str, tmp_path: Path) -> str:
    if backend == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'jobsd.db'}"
    return SERVER_URLS[backend]


async def _probe(backend: str, url: str) -> str | None:
    """None if the server answers, else why not."""
    engine = create_async_engine(url)
    try:
        async with asyncio.timeout(10), engine.connect() as conn:
            await conn.exec_driver_sql("SELECT 1")
    except Exception as exc:
        return f"{backend} at {url} is unreachable: {exc!r}"
    finally:
        await engine.dispose()
    return None


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def database_url(backend: str, tmp_path: Path) -> str:
    """The URL the test's engine uses, for worker processes that must share its database."""
    return backend_url(backend, tmp_path)


@pytest.fixture
async def engine(backend: str, database_url: str) -> AsyncIterator[AsyncEngine]:
    url = database_url
    if backend != "sqlite":
        if backend not in _reachable:
            _reachable[backend] = await _probe(backend, url)
        problem = _reachable[backend]
        if problem is not None:
            if IN_CI:
                pytest.fail(f"CI=true and {problem}")
            pytest.skip(problem)
    engine = (
        create_async_engine(url, pool_size=10, max_overflow=20)
        if backend != "sqlite"
        else (create_async_engine(url))
    )
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture
def table_prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}_"


MakeJobsD = Callable[..., JobsD]


@pytest.fixture
async def make_jobsd(engine: AsyncEngine, table_prefix: str) -> AsyncIterator[MakeJobsD]:
    """Build JobsD instances on the test's engine and prefix; all are downed and dropped after."""
    made: list[JobsD] = []

    def make(**options: Any) -> JobsD:
        settings = {**FAST, "table_prefix": table_prefix, **options}
        jd = JobsD(engine, **settings)
        made.append(jd)
        return jd

    try:
        yield make
    finally:
        await asyncio.gather(*(jd.down() for jd in made), return_exceptions=True)
        if made:
            await drop_tables(engine, made[0])


async def drop_tables(engine: AsyncEngine, jd: JobsD) -> None:
    """Drop the instance's tables (for tests that build a JobsD outside ``make_jobsd``)."""
    # SQLite refuses DDL for a moment while a connection just returned to the pool still
    # holds its read snapshot; try a few times before calling it a failure.
    for attempt in range(10):
        try:
            async with engine.begin() as conn:
                await conn.run_sync(jd.metadata.drop_all)
            return
        except OperationalError:
            if attempt == 9:
                raise
            await asyncio.sleep(0.2)


async def eventually(
    check: Callable[[], bool | Awaitable[bool]], timeout: float = 10.0, what: str = "condition"
) -> None:
    """Wait until ``check()`` holds, re-checking every few milliseconds; fail after ``timeout``."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                result = check()
                if not isinstance(result, bool):
                    result = await result
                if result:
                    return
                await asyncio.sleep(0.01)
    except TimeoutError:
        pytest.fail(f"{what} did not happen within {timeout}s")


async def fetch_runs(jd: JobsD) -> list[dict[str, Any]]:
    """Every row of the instance's runs table, oldest first, as dicts."""
    runs = jd.metadata.tables[f"{jd_prefix(jd)}runs"]
    async with jd.engine.connect() as conn:
        result = await conn.execute(runs.select().order_by(runs.c.id))
        return [dict(m) for m in result.mappings()]


def jd_prefix(jd: JobsD) -> str:
    name = next(n for n in jd.metadata.tables if n.endswith("runs"))
    return name[: -len("runs")]


async def read_word_after(stream: asyncio.StreamReader, prefix: str) -> str:
    """The first word after ``prefix`` on the first line of a worker process's output that
    starts with it (fails if the worker exits first)."""
    async with asyncio.timeout(30):
        while True:
            line = (await stream.readline()).decode()
            if not line:
                raise AssertionError(f"worker exited before printing {prefix!r}")
            if line.startswith(prefix):
                return line[len(prefix) :].split()[0] if line[len(prefix) :].split() else ""


async def insert_row(jd: JobsD, *, job: str, **values: Any) -> int:
    """A first row due now (pending unless ``values`` say otherwise), as anything other
    than jobsd_async might write it."""
    runs = jd.metadata.tables[f"{jd_prefix(jd)}runs"]
    now = datetime.now(UTC) - timedelta(seconds=1)
    name = f"hand-written-{now.timestamp()}-{id(values)}"
    row: dict[str, Any] = {
        "name": name,
        "name_active": name,
        "job": job,
        "job_args": "[]",
        "job_kwargs": "{}",
        "delay": 0.0,
        "run_at": now,
        "run_total_count": 0,
        "run_success_limit": 1,
        "run_timeout": 30.0,
        "retries_on_error_limit": 0,
        "retries_on_timeout_limit": 0,
        "created_at": now,
        "created_by": 1,
        **values,
    }
    return await insert_as_an_outsider(jd.engine, runs.insert().values(row))


async def insert_as_an_outsider(engine: AsyncEngine, statement: Insert) -> int:
    """Run ``statement`` in a transaction of its own and return the new row's id; again after
    a deadlock or a lock wait timeout, as any careful writer does (on InnoDB a plain insert
    can deadlock with a running instance's writes over gap locks): what jobsd's own
    transactions take for a passing lock conflict."""
    dialect = Dialect(engine)
    for attempt in range(10):
        try:
            async with engine.begin() as conn:
                result = await conn.execute(statement)
                return int(result.inserted_primary_key[0])  # type: ignore[index]
        except DBAPIError as exc:
            if not dialect.is_transient(exc) or attempt == 9:
                raise
        await asyncio.sleep(random.uniform(0.005, 0.02) * (attempt + 1))
    raise AssertionError("unreachable")
