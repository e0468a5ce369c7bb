"""Schema versions (SPEC §6.3): upgrades from the real 0.1.0 release with runs in flight, the
guard against missing, older and newer tables, exact names on MySQL/MariaDB, and the SQL
export — on SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from conftest import BACKENDS, FAST, MakeJobsD, drop_tables, eventually
from schemadump import describe
from sqlalchemy import Connection, insert, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from jobsd_async import JobsD, RunInfo, RunStatus, SchemaError, schema
from jobsd_async._store import _migrations
from jobsd_async._store._schema import build_tables

HERE = Path(__file__).parent
RELEASE_0_1_0 = HERE / "releases" / "jobsd_async-0.1.0-py3-none-any.whl"
FINISHING = ("pending", "unique", "scheduled")  # runs old_release.py leaves pending
SINCE_0_1_0 = list(range(2, schema.CURRENT_VERSION + 1))  # the migrations after 0.1.0


async def old_release(
    database_url: str, prefix: str, mode: str, cwd: Path
) -> tuple[asyncio.subprocess.Process, dict[str, Any]]:
    """Run jobsd_async 0.1.0 (its wheel) in a subprocess; returns it and what it printed."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(HERE / "old_release.py"),
        database_url,
        prefix,
        mode,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(RELEASE_0_1_0)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 60)
    if not line:
        raise AssertionError(f"the 0.1.0 process printed nothing: {(await proc.stderr.read()).decode()}")
    info = json.loads(line)
    assert info["version"] == "0.1.0", info
    return proc, info


async def tables_of_0_1_0(database_url: str, prefix: str, cwd: Path) -> None:
    proc, _ = await old_release(database_url, prefix, "tables", cwd)
    assert await asyncio.wait_for(proc.wait(), 60) == 0


@pytest.fixture
async def cleanup(engine: AsyncEngine) -> AsyncIterator[list[str]]:
    """Prefixes whose tables the test made outside make_jobsd; dropped afterwards."""
    prefixes: list[str] = []
    yield prefixes
    for prefix in prefixes:
        await drop_tables(engine, JobsD(engine, table_prefix=prefix))


# ------------------------------------------------------------------------------ the guard


async def test_fresh_tables_are_created_at_the_current_version(make_jobsd: MakeJobsD) -> None:
    jd = make_jobsd()
    async with jd:
        assert await schema.current_version(jd.engine, table_prefix=jd_prefix(jd)) == schema.CURRENT_VERSION
        await schema.check(jd.engine, table_prefix=jd_prefix(jd))
        assert await schema.upgrade(jd.engine, table_prefix=jd_prefix(jd)) == []


async def test_without_auto_migrate_missing_tables_are_an_error_that_creates_nothing(
    engine: AsyncEngine, table_prefix: str
) -> None:
    jd = JobsD(engine, table_prefix=table_prefix, auto_migrate=False)
    with pytest.raises(SchemaError) as error:
        await jd.up()
    message = str(error.value)
    assert "version 0" in message and f"version {schema.CURRENT_VERSION}" in message
    assert "jobsd schema upgrade" in message
    assert await schema.current_version(engine, table_prefix=table_prefix) == 0


async def test_without_auto_migrate_0_1_0_tables_are_an_error_until_upgraded(
    engine: AsyncEngine, database_url: str, table_prefix: str, tmp_path: Path, cleanup: list[str]
) -> None:
    cleanup.append(table_prefix)
    await tables_of_0_1_0(database_url, table_prefix, tmp_path)
    assert await schema.current_version(engine, table_prefix=table_prefix) == 1
    jd = JobsD(engine, table_prefix=table_prefix, auto_migrate=False)
    with pytest.raises(
        SchemaError,
        match=rf"version 1 \(jobsd_async 0\.1\.0\).*needs version {schema.CURRENT_VERSION}.*upgrade",
    ):
        await jd.up()
    with pytest.raises(SchemaError):
        await schema.check(engine, table_prefix=table_prefix)
    assert await schema.upgrade(engine, table_prefix=table_prefix) == SINCE_0_1_0
    await schema.check(engine, table_prefix=table_prefix)
    again = JobsD(engine, table_prefix=table_prefix, auto_migrate=False)
    async with again:
        assert again.instance_id > 0


@pytest.mark.parametrize("auto_migrate", [True, False])
async def test_tables_newer_than_this_release_are_refused(
    make_jobsd: MakeJobsD, engine: AsyncEngine, auto_migrate: bool
) -> None:
    first = make_jobsd()
    async with first:
        await record_version(engine, first, 99)
    late = make_jobsd(auto_migrate=auto_migrate)
    with pytest.raises(SchemaError, match="version 99, newer than version"):
        await late.up()


async def test_a_running_instance_stops_claiming_when_the_tables_become_newer(
    make_jobsd: MakeJobsD, engine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    old = make_jobsd(heartbeat_interval=0.1, poll_interval=0.05)
    old.register_job("echo", lambda value: value)
    producer = make_jobsd(workers=0)
    producer.register_job("echo", lambda value: value)
    async with old, producer:
        before = await producer.wait_for_run(await producer.create_run("echo", 1).run(), timeout=10)
        await record_version(engine, old, 99)
        await eventually(
            lambda: any("newer than version" in r.getMessage() for r in caplog.records),
            what="the instance noticing the newer tables",
        )
        after = await producer.create_run("echo", 2).run()
        await asyncio.sleep(0.5)  # ten polls
        assert (await producer.get_run_state(after)).status is RunStatus.PENDING
        with pytest.raises(SchemaError):
            await old.create_run("echo", 3).run()
    assert before.result == 1


async def record_version(engine: AsyncEngine, jd: JobsD, version: int) -> None:
    migrations = build_tables(jd_prefix(jd)).migrations
    async with engine.begin() as conn:
        await conn.execute(
            insert(migrations).values(version=version, description="from the future", applied_at=_now())
        )


# ------------------------------------------------------------------------------ upgrading 0.1.0


@pytest.mark.parametrize("auto_migrate", [True, False])
async def test_runs_made_by_0_1_0_survive_the_upgrade_and_run(
    engine: AsyncEngine,
    database_url: str,
    table_prefix: str,
    tmp_path: Path,
    cleanup: list[str],
    auto_migrate: bool,
) -> None:
    cleanup.append(table_prefix)
    proc, ids = await old_release(database_url, table_prefix, "runs", tmp_path)
    proc.send_signal(signal.SIGKILL)  # its running run stays as a crashed instance leaves it
    await proc.wait()

    jd = JobsD(engine, table_prefix=table_prefix, auto_migrate=auto_migrate, **{**FAST, "timeout_check": 0.2})

    @jd.job(name="echo")
    async def echo(value: str) -> str:
        return value

    @jd.job(name="block")
    async def block(info: RunInfo, value: str) -> str:
        return f"{value}, then ran after the upgrade (attempt {info.run_total_count})"

    if not auto_migrate:
        with pytest.raises(SchemaError):
            await jd.up()
        assert await schema.upgrade(engine, table_prefix=table_prefix) == SINCE_0_1_0
        jd = rebuilt(jd, engine, table_prefix, echo.func, block.func)
    async with jd:
        states = {
            name: await jd.wait_for_run(ids[name], timeout=30) for name in ("pending", "unique", "scheduled")
        }
        running = await jd.wait_for_run(ids["running"], timeout=30)

    assert {name: s.status for name, s in states.items()} == dict.fromkeys(states, RunStatus.SUCCEEDED)
    assert states["pending"].result == "pending"
    # Routing came with version 6: runs made before it are in the default queue, at priority 0.
    assert {(s.queue, s.priority) for s in (*states.values(), running)} == {("default", 0)}
    assert states["unique"].result == "unique" and states["unique"].name == "user-Alice"
    assert states["scheduled"].run_success_count == 2
    assert running.status is RunStatus.SUCCEEDED
    assert running.result == "was running, then ran after the upgrade (attempt 2)"
    assert running.retries_on_timeout_count == 1  # its crashed attempt, taken over
    assert await schema.current_version(engine, table_prefix=table_prefix) == schema.CURRENT_VERSION


def rebuilt(jd: JobsD, engine: AsyncEngine, prefix: str, *funcs: Any) -> JobsD:
    fresh = JobsD(engine, table_prefix=prefix, auto_migrate=False, **{**FAST, "timeout_check": 0.2})
    for func in funcs:
        fresh.register_job(func.__name__, func)
    return fresh


@pytest.mark.cluster
async def test_eight_instances_starting_at_once_upgrade_0_1_0_tables_once(
    engine: AsyncEngine, database_url: str, table_prefix: str, tmp_path: Path, cleanup: list[str]
) -> None:
    cleanup.append(table_prefix)
    await tables_of_0_1_0(database_url, table_prefix, tmp_path)
    instances = [JobsD(engine, table_prefix=table_prefix, **FAST) for _ in range(8)]
    try:
        await asyncio.gather(*(jd.up() for jd in instances))
        assert len({jd.instance_id for jd in instances}) == 8
    finally:
        await asyncio.gather(*(jd.down() for jd in instances))
    migrations = build_tables(table_prefix).migrations
    async with engine.connect() as conn:
        rows = (await conn.execute(select(migrations.c.version))).scalars().all()
    assert rows == SINCE_0_1_0, "upgraded more than once"


async def test_the_upgraded_schema_equals_a_fresh_one(
    engine: AsyncEngine, database_url: str, table_prefix: str, tmp_path: Path, cleanup: list[str]
) -> None:
    upgraded, fresh = table_prefix, table_prefix[:-1] + "f_"
    cleanup.extend([upgraded, fresh])
    await tables_of_0_1_0(database_url, upgraded, tmp_path)
    await schema.upgrade(engine, table_prefix=upgraded)
    await schema.upgrade(engine, table_prefix=fresh)
    async with engine.connect() as conn:
        assert await conn.run_sync(describe, upgraded) == await conn.run_sync(describe, fresh)


async def test_tables_built_at_version_1_are_those_of_0_1_0(
    engine: AsyncEngine, database_url: str, table_prefix: str, tmp_path: Path, cleanup: list[str]
) -> None:
    # What pinned Alembic revisions replayed on an empty database start from.
    released, built = table_prefix, table_prefix[:-1] + "b_"
    cleanup.extend([released, built])
    await tables_of_0_1_0(database_url, released, tmp_path)
    assert await schema.upgrade(engine, table_prefix=built, to=1) == [1]
    async with engine.connect() as conn:
        assert await conn.run_sync(describe, released, ("runs", "instances")) == await conn.run_sync(
            describe, built, ("runs", "instances")
        )


async def test_the_exported_sql_makes_the_same_schema_as_auto_migrate(
    engine: AsyncEngine, database_url: str, table_prefix: str, tmp_path: Path, cleanup: list[str]
) -> None:
    from_0_1_0, from_nothing, auto = table_prefix, table_prefix[:-1] + "n_", table_prefix[:-1] + "a_"
    cleanup.extend([from_0_1_0, from_nothing, auto])
    await tables_of_0_1_0(database_url, from_0_1_0, tmp_path)
    await schema.upgrade(engine, table_prefix=auto)
    async with engine.connect() as conn:
        flavor = await conn.run_sync(lambda c: schema_flavor(c))
    for prefix, start in ((from_0_1_0, 1), (from_nothing, None)):
        script = schema.sql(flavor, table_prefix=prefix, from_version=start)
        async with engine.begin() as conn:
            for statement in script.split(";\n\n"):
                if statement.strip():
                    await conn.exec_driver_sql(statement)
        assert await schema.current_version(engine, table_prefix=prefix) == schema.CURRENT_VERSION
    async with engine.connect() as conn:
        expected = await conn.run_sync(describe, auto)
        assert await conn.run_sync(describe, from_0_1_0) == expected
        assert await conn.run_sync(describe, from_nothing) == expected


def test_the_sql_export_knows_every_dialect() -> None:
    for dialect in ("postgresql", "mysql", "mariadb", "sqlite"):
        assert "CREATE TABLE jobsd_runs" in schema.sql(dialect)
        assert "job_signatures" in schema.sql(dialect, from_version=1)
        assert schema.sql(dialect, from_version=schema.CURRENT_VERSION) == ""
    assert "utf8mb4_0900_bin" in schema.sql("mysql")
    assert "utf8mb4_nopad_bin" in schema.sql("mariadb")
    with pytest.raises(ValueError, match="dialect must be one of"):
        schema.sql("oracle")
    with pytest.raises(ValueError, match="table_prefix"):
        schema.sql("sqlite", table_prefix="x; DROP TABLE y")


# ------------------------------------------------------------------------------ exact names


async def test_names_compare_exactly(make_jobsd: MakeJobsD) -> None:
    jd = make_jobsd()
    ran: list[str] = []
    jd.register_job("report", lambda who: ran.append(f"report {who}"))
    jd.register_job("Report", lambda who: ran.append(f"Report {who}"))
    async with jd:
        names = ["user-Alice", "user-alice", "user-alice ", "user-álice"]
        run_ids = [await jd.create_run("report", name).unique(name).run_after(3600) for name in names]
        assert len(set(run_ids)) == 4, "distinct unique names shared a chain"
        for name, run_id in zip(names, run_ids, strict=True):
            assert (await jd.get_run_state(run_id)).name == name
        upper = await jd.create_run("Report", "upper").run()
        lower = await jd.create_run("report", "lower").run()
        await jd.wait_for_run(upper, timeout=10)
        await jd.wait_for_run(lower, timeout=10)
    assert sorted(ran) == ["Report upper", "report lower"]


@pytest.mark.parametrize("backend", ["mariadb"])
async def test_up_refuses_datetimes_without_microseconds(
    engine: AsyncEngine, table_prefix: str, cleanup: list[str]
) -> None:
    cleanup.append(table_prefix)
    await schema.upgrade(engine, table_prefix=table_prefix)
    async with engine.begin() as conn:
        await conn.exec_driver_sql(f"ALTER TABLE {table_prefix}runs MODIFY run_at DATETIME NOT NULL")
    jd = JobsD(engine, table_prefix=table_prefix)
    with pytest.raises(SchemaError, match="run_at store no microseconds"):
        await jd.up()


# ------------------------------------------------------------------------------ helpers


def jd_prefix(jd: JobsD) -> str:
    name = next(n for n in jd.metadata.tables if n.endswith("runs"))
    return name[: -len("runs")]


def _now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)


def schema_flavor(conn: Connection) -> str:
    from jobsd_async._store._dialect import flavor_of

    return flavor_of(conn.dialect)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b == "mariadb"])
async def test_an_upgrade_released_but_not_yet_committed_is_not_applied_again(
    engine: AsyncEngine, table_prefix: str, cleanup: list[str]
) -> None:
    """MySQL's upgrade lock (GET_LOCK) is released before the upgrader's COMMIT: the next
    instance to take it must wait for that COMMIT, not record the versions a second time.
    (Found by instances starting at once under load: ``Duplicate entry '5'``.)"""
    cleanup.append(table_prefix)
    migrations = build_tables(table_prefix).migrations
    async with engine.connect() as first:

        def upgrade_without_commit(conn: Connection) -> None:
            with _migrations.locked(conn, table_prefix):
                _migrations.upgrade(conn, table_prefix)

        await first.run_sync(upgrade_without_commit)  # lock released, version row uncommitted
        second = asyncio.create_task(schema.upgrade(engine, table_prefix=table_prefix))

        async def second_waits_on_a_lock() -> bool:
            # (PROCESSLIST, not INNODB_TRX: that one is a cache, not refreshed while polled often.)
            async with engine.connect() as conn:
                waiting = await conn.execute(
                    text(
                        "SELECT COUNT(*) FROM information_schema.PROCESSLIST"
                        " WHERE ID <> CONNECTION_ID() AND INFO LIKE :table"
                    ),
                    {"table": f"%{migrations.name}%"},
                )
                return bool(waiting.scalar_one())

        await eventually(second_waits_on_a_lock, timeout=10, what="the second upgrade waiting on a lock")
        await first.commit()
    assert await second == [], "the second upgrade applied versions again"
    async with engine.connect() as conn:
        rows = (await conn.execute(select(migrations.c.version))).scalars().all()
    assert rows == [schema.CURRENT_VERSION]
