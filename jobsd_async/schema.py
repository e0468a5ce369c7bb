"""Schema versions of jobsd's tables: read them, upgrade them, export their SQL.

The database records which schema version a table prefix is at (``{prefix}migrations``).
``JobsD(auto_migrate=True)`` (the default) upgrades at ``up()``; with
``auto_migrate=False``, ``up()`` raises :class:`~jobsd_async.SchemaError` unless the tables
are current, and they are upgraded with :func:`upgrade` (or ``jobsd schema upgrade``), with
the SQL of :func:`sql`, or inside an Alembic revision with :func:`alembic_upgrade`.

Upgrades hold a cluster-wide lock (a PostgreSQL advisory lock, MySQL ``GET_LOCK``, SQLite's
write lock), so many instances starting at once upgrade once.  Every migration keeps every
row: pending, running and scheduled runs survive and then run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from ._config import DEFAULT_TABLE_PREFIX, check_table_prefix
from ._store import _migrations
from ._store._dialect import Dialect, wrap_errors
from ._store._schema import build_tables

__all__ = (
    "CURRENT_VERSION",
    "RELEASES",
    "alembic_upgrade",
    "check",
    "current_version",
    "include_object",
    "sql",
    "upgrade",
)

CURRENT_VERSION = _migrations.SCHEMA_VERSION
"""The schema version this jobsd_async creates and needs."""

RELEASES = dict(_migrations.RELEASES)
"""Schema version -> the jobsd_async release that introduced it."""

DIALECTS = ("postgresql", "mysql", "mariadb", "sqlite")


async def current_version(engine: AsyncEngine, *, table_prefix: str = DEFAULT_TABLE_PREFIX) -> int:
    """The schema version of ``table_prefix``'s tables; 0 if there are none."""
    tables = build_tables(check_table_prefix(table_prefix))
    dialect = await wrap_errors(Dialect.detect(engine), "connecting")

    async def read() -> int:
        async with dialect.reading() as conn:
            return await conn.run_sync(_migrations.version_of, tables)

    return await wrap_errors(read(), "reading the schema version")


async def upgrade(
    engine: AsyncEngine, *, table_prefix: str = DEFAULT_TABLE_PREFIX, to: int | None = None
) -> list[int]:
    """Bring the tables to version ``to`` (default: current), creating them if missing.

    Holds the cluster-wide upgrade lock; returns the versions applied (empty if none were
    needed).  Raises SchemaError for tables newer than this jobsd_async knows.
    """
    prefix = check_table_prefix(table_prefix)
    target = CURRENT_VERSION if to is None else to
    dialect = await wrap_errors(Dialect.detect(engine), "connecting")

    async def run() -> list[int]:
        async with dialect.transaction() as conn:
            return await conn.run_sync(_upgrade_locked, prefix, target)

    return await wrap_errors(run(), "upgrading the schema")


def _upgrade_locked(conn: Connection, prefix: str, to: int) -> list[int]:
    with _migrations.locked(conn, prefix):
        applied = _migrations.upgrade(conn, prefix, to=to)
        if to == CURRENT_VERSION:
            _migrations.verify(conn, build_tables(prefix))
        return applied


async def check(engine: AsyncEngine, *, table_prefix: str = DEFAULT_TABLE_PREFIX) -> None:
    """Raise SchemaError unless the tables are current and as jobsd needs them."""
    tables = build_tables(check_table_prefix(table_prefix))
    dialect = await wrap_errors(Dialect.detect(engine), "connecting")

    async def run() -> None:
        async with dialect.reading() as conn:
            await conn.run_sync(_check, tables)

    await wrap_errors(run(), "checking the schema")


def _check(conn: Connection, tables: Any) -> None:
    _migrations.require_current(conn, tables)
    _migrations.verify(conn, tables)


def sql(dialect: str, *, table_prefix: str = DEFAULT_TABLE_PREFIX, from_version: int | None = None) -> str:
    """The SQL that brings the tables from ``from_version`` (None: none yet) to the current
    version on ``dialect`` ("postgresql", "mysql" (8), "mariadb" or "sqlite"), statements
    separated by ``;`` lines, for teams applying schema changes with their own tools."""
    engines: dict[str, Any] = {
        "postgresql": postgresql.dialect(),  # type: ignore[no-untyped-call]
        "mysql": mysql.dialect(),
        "mariadb": mysql.dialect(is_mariadb=True),
        "sqlite": sqlite.dialect(),
    }
    if dialect not in engines:
        raise ValueError(f"dialect must be one of {', '.join(DIALECTS)}, got {dialect!r}")
    statements = _migrations.script(
        engines[dialect], dialect, check_table_prefix(table_prefix), from_version=from_version
    )
    return "".join(f"{statement};\n\n" for statement in statements)


# ------------------------------------------------------------------------------ Alembic


def alembic_upgrade(op: Any, *, table_prefix: str = DEFAULT_TABLE_PREFIX, to: int = CURRENT_VERSION) -> None:
    """Run jobsd's own migrations to version ``to`` inside an Alembic revision.

    Use it in a revision's ``upgrade()`` (``from alembic import op``): the tables and the
    per-dialect indexes come out exactly as ``auto_migrate`` makes them.  Pin ``to`` to the
    version the revision was written for, and add a new revision when jobsd's
    ``CURRENT_VERSION`` grows.  Pair with :func:`include_object`.
    """
    conn: Connection = op.get_bind()
    _upgrade_locked(conn, check_table_prefix(table_prefix), to)


def include_object(table_prefix: str = DEFAULT_TABLE_PREFIX) -> Callable[..., bool]:
    """An Alembic ``include_object`` hook that keeps autogenerate away from jobsd's tables.

    In ``env.py``: ``context.configure(..., include_object=jobsd_async.schema.include_object())``
    (wrap it if you have a hook of your own).  jobsd's tables are managed by
    :func:`alembic_upgrade`, never by autogenerate.
    """
    tables = build_tables(check_table_prefix(table_prefix))
    names = {t.name for t in tables.metadata.sorted_tables}

    def include(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
        if type_ == "table":
            return name not in names
        table = getattr(obj, "table", None)
        return getattr(table, "name", None) not in names

    return include
