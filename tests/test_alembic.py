"""The documented Alembic path, end to end with a real Alembic (docs/databases.md#alembic):

a revision calls ``jobsd_async.schema.alembic_upgrade(op)``, ``env.py`` passes
``jobsd_async.schema.include_object()`` to autogenerate.  The tables come out exactly as
``auto_migrate`` makes them, an instance with ``auto_migrate=False`` starts on them, and
``alembic check`` (autogenerate) finds nothing to change.
"""

from __future__ import annotations

import asyncio
import os
import sys
import textwrap
from pathlib import Path

from conftest import drop_tables
from schemadump import describe
from sqlalchemy.ext.asyncio import AsyncEngine

from jobsd_async import JobsD, schema

ENV_PY = """
import asyncio
import os

from alembic import context
from sqlalchemy import Column, Integer, MetaData, String, Table
from sqlalchemy.ext.asyncio import create_async_engine

import jobsd_async.schema

PREFIX = os.environ["JOBSD_PREFIX"]

# The application's own tables, managed by autogenerate as usual.
target_metadata = MetaData()
Table(
    f"{PREFIX}app_orders",
    target_metadata,
    Column("id", Integer, primary_key=True),
    Column("item", String(50)),
)


jobsd_tables = jobsd_async.schema.include_object(PREFIX)


def include_object(obj, name, type_, reflected, compare_to):
    # Only this test's tables (the database is shared), and never jobsd's.
    table = name if type_ == "table" else getattr(getattr(obj, "table", None), "name", "")
    return table.startswith(PREFIX) and jobsd_tables(obj, name, type_, reflected, compare_to)


def include_name(name, type_, parent_names):
    # Reflect only this test's tables: others' may be dropped while autogenerate reads them.
    return name.startswith(PREFIX) if type_ == "table" else True


def run(connection):
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        include_name=include_name,
        include_object=include_object,
        version_table=f"{PREFIX}alembic_version",
    )
    with context.begin_transaction():
        context.run_migrations()


async def main():
    engine = create_async_engine(os.environ["JOBSD_URL"])
    async with engine.connect() as connection:
        await connection.run_sync(run)
        await connection.commit()
    await engine.dispose()


asyncio.run(main())
"""

REVISION = '''
"""jobsd's tables at version {version}"""
import os

import sqlalchemy as sa
from alembic import op

from jobsd_async.schema import alembic_upgrade

revision = "{version:04d}"
down_revision = {down!r}
PREFIX = os.environ["JOBSD_PREFIX"]


def upgrade():
    if revision == "0002":  # the first revision also makes the application's own table
        op.create_table(
            f"{{PREFIX}}app_orders",
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("item", sa.String(50)),
        )
    alembic_upgrade(op, table_prefix=PREFIX, to={version})


def downgrade():
    pass
'''


async def alembic(project: Path, url: str, prefix: str, *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "alembic",
        "-c",
        str(project / "alembic.ini"),
        *args,
        cwd=project,
        env={**os.environ, "JOBSD_URL": url, "JOBSD_PREFIX": prefix},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(proc.communicate(), 120)
    return await proc.wait(), output.decode()


def alembic_project(root: Path) -> Path:
    project = root / "migrations"
    (project / "versions").mkdir(parents=True)
    (project / "alembic.ini").write_text(f"[alembic]\nscript_location = {project}\n")
    (project / "env.py").write_text(textwrap.dedent(ENV_PY))
    (project / "script.py.mako").write_text(
        '"""${message}"""\nrevision = ${repr(up_revision)}\ndown_revision = ${repr(down_revision)}\n'
        "def upgrade():\n    ${upgrades if upgrades else 'pass'}\n"
        "def downgrade():\n    ${downgrades if downgrades else 'pass'}\n"
    )
    # One revision per jobsd schema version, each pinned to it, as the docs advise.
    for version in range(2, schema.CURRENT_VERSION + 1):
        down = None if version == 2 else f"{version - 1:04d}"
        text = REVISION.format(version=version, down=down)
        (project / "versions" / f"{version:04d}_jobsd.py").write_text(textwrap.dedent(text))
    return project


async def test_alembic_makes_the_schema_auto_migrate_makes(
    engine: AsyncEngine, database_url: str, table_prefix: str, tmp_path: Path
) -> None:
    project = alembic_project(tmp_path)
    through_alembic, by_auto_migrate = table_prefix, table_prefix[:-1] + "a_"
    try:
        code, output = await alembic(project, database_url, through_alembic, "upgrade", "head")
        assert code == 0, output
        assert await schema.current_version(engine, table_prefix=through_alembic) == schema.CURRENT_VERSION
        await schema.upgrade(engine, table_prefix=by_auto_migrate)
        async with engine.connect() as conn:
            assert await conn.run_sync(describe, through_alembic) == await conn.run_sync(
                describe, by_auto_migrate
            )

        # Autogenerate leaves jobsd's tables alone: nothing to change.
        code, output = await alembic(project, database_url, through_alembic, "check")
        assert code == 0, output
        assert "No new upgrade operations detected" in output

        # An instance that does not migrate starts on them.
        jd = JobsD(engine, table_prefix=through_alembic, auto_migrate=False)
        jd.register_job("echo", lambda value: value)
        async with jd:
            state = await jd.wait_for_run(await jd.create_run("echo", "ok").run(), timeout=10)
        assert state.result == "ok"
    finally:
        for prefix in (through_alembic, by_auto_migrate):
            await drop_tables(engine, JobsD(engine, table_prefix=prefix))
        async with engine.begin() as conn:
            for table in (f"{through_alembic}app_orders", f"{through_alembic}alembic_version"):
                await conn.exec_driver_sql(f"DROP TABLE IF EXISTS {table}")
