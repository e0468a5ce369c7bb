"""Schema versions: which version a table prefix is at, and the migrations between versions.

Version 1 is the schema of jobsd_async 0.1.0, which recorded no version (its tables are
recognised by ``{prefix}runs`` existing without ``{prefix}migrations``).  Every later
version is one :class:`Migration`: steps per dialect, each checking first whether it is
still needed, so a migration interrupted half-way (MySQL commits each DDL statement on its
own) simply continues.  ``{prefix}migrations`` records each version applied.

Everything here works on a synchronous ``Connection`` (run through ``run_sync`` from the
async side), so the same code serves ``up()``, ``jobsd schema upgrade`` and an Alembic
revision.  The caller holds the upgrade lock (see :func:`locked`).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy import (
    Column,
    Connection,
    Dialect,
    Index,
    Integer,
    String,
    Table,
    func,
    insert,
    inspect,
    select,
    text,
)
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.schema import CreateColumn, CreateIndex, CreateTable

from .._config import MAX_NAME_LENGTH
from .._errors import SchemaError
from . import _schema
from ._dialect import flavor_of
from ._schema import _TEXT, MYSQL_CHARSET, NAME_COLLATIONS, SECONDS, Tables, build_tables, name_type

SCHEMA_VERSION = _schema.SCHEMA_VERSION
"""The schema version this jobsd_async creates and runs against."""

RELEASES = {1: "0.1.0", 2: "0.2.0", 3: "0.2.0", 4: "0.2.0", 5: "0.2.0", 6: "0.2.0"}
"""The jobsd_async release that introduced each schema version."""

_LOCK_WAIT = 300  # seconds an instance waits for another one's upgrade (MySQL GET_LOCK)


class Step(Protocol):
    def needed(self, conn: Connection) -> bool: ...

    def sql(self, dialect: Dialect) -> str: ...


def _quote(dialect: Dialect, name: str) -> str:
    return dialect.identifier_preparer.quote(name)


def _column_sql(dialect: Dialect, column: Column[Any]) -> str:
    return str(CreateColumn(column).compile(dialect=dialect))


@dataclass(frozen=True)
class AddColumn:
    """``ALTER TABLE ... ADD COLUMN``, unless the column is there."""

    table: str
    column: Column[Any]

    def needed(self, conn: Connection) -> bool:
        return self.column.name not in {c["name"] for c in inspect(conn).get_columns(self.table)}

    def sql(self, dialect: Dialect) -> str:
        return f"ALTER TABLE {_quote(dialect, self.table)} ADD COLUMN {_column_sql(dialect, self.column)}"


@dataclass(frozen=True)
class ModifyColumn:
    """MySQL/MariaDB ``ALTER TABLE ... MODIFY``, unless the column already has this type and collation."""

    table: str
    column: Column[Any]
    column_type: str  # as information_schema's COLUMN_TYPE shows it
    collation: str | None = None

    def needed(self, conn: Connection) -> bool:
        found = conn.execute(
            text(
                "SELECT COLUMN_TYPE, COLLATION_NAME FROM information_schema.COLUMNS "
                "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = :table AND COLUMN_NAME = :column"
            ),
            {"table": self.table, "column": self.column.name},
        ).first()
        if found is None:
            return True
        return (str(found[0]).lower(), found[1]) != (self.column_type, self.collation)

    def sql(self, dialect: Dialect) -> str:
        return f"ALTER TABLE {_quote(dialect, self.table)} MODIFY {_column_sql(dialect, self.column)}"


@dataclass(frozen=True)
class ConvertCharset:
    """MySQL/MariaDB: store a table's texts as utf8mb4, unless they already are."""

    table: str

    def needed(self, conn: Connection) -> bool:
        collation = conn.execute(
            text(
                "SELECT TABLE_COLLATION FROM information_schema.TABLES "
                "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = :table"
            ),
            {"table": self.table},
        ).scalar()
        return not str(collation or "").startswith(MYSQL_CHARSET + "_")

    def sql(self, dialect: Dialect) -> str:
        return f"ALTER TABLE {_quote(dialect, self.table)} CONVERT TO CHARACTER SET {MYSQL_CHARSET}"


@dataclass(frozen=True)
class AddTable:
    """``CREATE TABLE``, unless the table is there."""

    table: Table

    def needed(self, conn: Connection) -> bool:
        return self.table.name not in inspect(conn).get_table_names()

    def sql(self, dialect: Dialect) -> str:
        return str(CreateTable(self.table).compile(dialect=dialect)).strip()


@dataclass(frozen=True)
class AddIndex:
    """``CREATE INDEX``, unless the index is there (or it is not made on this dialect)."""

    index: Index

    def needed(self, conn: Connection) -> bool:
        if not _index_applies(self.index, conn.dialect):
            return False
        table = self.index.table
        assert table is not None
        return self.index.name not in {i["name"] for i in inspect(conn).get_indexes(table.name)}

    def sql(self, dialect: Dialect) -> str:
        if not _index_applies(self.index, dialect):
            return ""
        return str(CreateIndex(self.index).compile(dialect=dialect)).strip()


@dataclass(frozen=True)
class Migration:
    """One schema version: what it changes, and its steps for a dialect flavor."""

    version: int
    description: str
    steps: Callable[[Tables, str], Sequence[Step]]

    @property
    def release(self) -> str:
        return RELEASES[self.version]


def _to_2(tables: Tables, flavor: str) -> list[Step]:
    runs, instances = tables.runs.name, tables.instances.name
    steps: list[Step] = [AddColumn(instances, Column("job_signatures", _TEXT, nullable=True))]
    if flavor not in NAME_COLLATIONS:
        return steps
    collation = NAME_COLLATIONS[flavor]
    steps[:0] = [ConvertCharset(runs), ConvertCharset(instances)]
    for name, nullable in (("name", False), ("name_active", True), ("job", False), ("schedule", True)):
        column = Column(name, name_type(flavor), nullable=nullable)
        steps.append(ModifyColumn(runs, column, "varchar(255)", collation))
    for table, name, nullable in (
        (runs, "delay", False),
        (runs, "run_timeout", True),
        (runs, "retry_backoff", True),
        (runs, "retry_backoff_cap", True),
        (instances, "poll_interval", False),
        (instances, "timeout_check", False),
        (instances, "heartbeat_interval", False),
        (instances, "run_timeout", True),
    ):
        steps.append(ModifyColumn(table, Column(name, SECONDS, nullable=nullable), "double"))
    return steps


def _to_3(tables: Tables, flavor: str) -> list[Step]:
    instances = tables.instances.name
    return [
        AddColumn(instances, Column("host", String(MAX_NAME_LENGTH), nullable=True)),
        AddColumn(instances, Column("pid", Integer, nullable=True)),
    ]


def _to_4(tables: Tables, flavor: str) -> list[Step]:
    runs = tables.runs.name
    return [
        AddColumn(runs, Column("trace_context", _TEXT, nullable=True)),
        AddColumn(runs, Column("run_completed_traceback", _TEXT, nullable=True)),
    ]


def _to_5(tables: Tables, flavor: str) -> list[Step]:
    runs = tables.runs.name
    return [
        AddColumn(runs, Column("retry_policy", _TEXT, nullable=True)),
        AddColumn(runs, Column("run_progress", _TEXT, nullable=True)),
    ]


def _to_6(tables: Tables, flavor: str) -> list[Step]:
    runs = tables.runs
    added = ("queue", "priority", "limit_key")
    new_indexes = ("claim", "running_key", "starts_key")
    return [
        *(AddColumn(runs.name, runs.c[name]._copy()) for name in added),
        AddColumn(tables.instances.name, tables.instances.c.queues._copy()),
        AddTable(tables.queues),
        AddTable(tables.limits),
        *(
            AddIndex(index)
            for index in sorted(runs.indexes, key=lambda i: str(i.name))
            if str(index.name).removeprefix(f"ix_{runs.name}_").removesuffix("_c") in new_indexes
        ),
    ]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        2,
        "exact names on MySQL/MariaDB (binary NO PAD collation, utf8mb4), double-precision "
        "durations on MySQL/MariaDB, instances.job_signatures",
        _to_2,
    ),
    Migration(3, "instances.host and instances.pid", _to_3),
    Migration(4, "runs.trace_context and runs.run_completed_traceback", _to_4),
    Migration(5, "runs.retry_policy and runs.run_progress", _to_5),
    Migration(
        6,
        "routing: runs.queue, runs.priority, runs.limit_key, instances.queues, the queues and "
        "limits tables and their indexes",
        _to_6,
    ),
)


# ------------------------------------------------------------------------------ reading


def version_of(conn: Connection, tables: Tables, *, locking: bool = False) -> int:
    """The schema version of ``tables``' prefix: 0 if there are no tables.

    ``locking``: a locking read, which waits for an upgrade still being committed and sees
    its versions (MySQL releases the upgrade lock before the upgrader's COMMIT; under
    REPEATABLE READ a plain read would miss what it recorded).
    """
    names = set(inspect(conn).get_table_names())
    if tables.migrations.name in names:
        query = select(tables.migrations.c.version).order_by(tables.migrations.c.version.desc())
        if locking and conn.dialect.name != "sqlite":
            query = query.with_for_update(read=True)
        found = conn.execute(query)
        latest = found.scalar()
        if latest is not None:
            return int(latest)
    return 1 if tables.runs.name in names else 0


def require_known(version: int, tables: Tables) -> None:
    """Refuse to run against tables newer than this jobsd_async knows."""
    if version > SCHEMA_VERSION:
        raise SchemaError(
            f"the tables with prefix {tables.prefix!r} are at schema version {version}, newer than "
            f"version {SCHEMA_VERSION} that this jobsd_async knows: upgrade jobsd_async on this "
            "instance (an older release must not write to newer tables)"
        )


# ------------------------------------------------------------------------------ upgrading


@contextlib.contextmanager
def locked(conn: Connection, prefix: str) -> Iterator[None]:
    """Hold the cluster-wide upgrade lock of ``prefix`` (SQLite: the caller's write lock)."""
    name = f"jobsd_migrate:{prefix}"
    dialect = conn.dialect.name
    if dialect == "postgresql":
        key = int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big", signed=True)
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})  # until commit
        yield
    elif dialect in ("mysql", "mariadb"):
        got = conn.execute(text("SELECT GET_LOCK(:name, :wait)"), {"name": name, "wait": _LOCK_WAIT}).scalar()
        if got != 1:
            raise SchemaError(f"another instance has been upgrading prefix {prefix!r} for {_LOCK_WAIT}s")
        try:
            yield
        finally:
            conn.execute(text("SELECT RELEASE_LOCK(:name)"), {"name": name})
    else:
        yield


def upgrade(conn: Connection, prefix: str, *, to: int = SCHEMA_VERSION) -> list[int]:
    """Bring ``prefix``'s tables to version ``to`` (creating them if missing); the caller
    holds the upgrade lock.  Returns the versions applied ([``to``] for a fresh install)."""
    if not 1 <= to <= SCHEMA_VERSION:
        raise ValueError(f"schema version must be between 1 and {SCHEMA_VERSION}, got {to!r}")
    flavor = flavor_of(conn.dialect)
    tables = build_tables(prefix, flavor=flavor)
    current = version_of(conn, tables, locking=True)
    require_known(current, tables)
    if current == 0:
        build_tables(prefix, flavor=flavor, version=to).metadata.create_all(conn)
        tables.migrations.create(conn, checkfirst=True)
        _record(conn, tables, to, "tables created")
        return [to]
    tables.migrations.create(conn, checkfirst=True)
    applied = []
    for migration in MIGRATIONS:
        if current < migration.version <= to:
            for step in migration.steps(tables, flavor):
                if step.needed(conn):
                    conn.exec_driver_sql(step.sql(conn.dialect))
            _record(conn, tables, migration.version, migration.description)
            applied.append(migration.version)
    return applied


def _record(conn: Connection, tables: Tables, version: int, description: str) -> None:
    conn.execute(
        insert(tables.migrations).values(
            version=version, description=description[:255], applied_at=datetime.now(UTC)
        )
    )


def script(dialect: Dialect, flavor: str, prefix: str, *, from_version: int | None) -> list[str]:
    """The SQL statements that bring ``prefix``'s tables from ``from_version`` (None: no
    tables) to the current version, for teams that apply schema changes with their own tools."""
    tables = build_tables(prefix, flavor=flavor)
    now = datetime.now(UTC).replace(microsecond=0)

    def compiled(statement: Any) -> str:
        return str(statement.compile(dialect=dialect, compile_kwargs={"literal_binds": True})).strip()

    def recorded(version: int, description: str) -> str:
        values = {"version": version, "description": description[:255], "applied_at": now}
        return compiled(insert(tables.migrations).values(values))

    if not from_version:
        statements = []
        for table in tables.metadata.sorted_tables:
            statements.append(compiled(CreateTable(table)))
            for index in sorted(table.indexes, key=lambda i: str(i.name)):
                if _index_applies(index, dialect):
                    statements.append(compiled(CreateIndex(index)))
        return [*statements, recorded(SCHEMA_VERSION, "tables created")]
    if not 1 <= from_version <= SCHEMA_VERSION:
        raise ValueError(f"from_version must be between 1 and {SCHEMA_VERSION}, got {from_version!r}")
    statements = []
    if from_version == 1:
        statements.append(compiled(CreateTable(tables.migrations, if_not_exists=True)))
    for migration in MIGRATIONS:
        if migration.version > from_version:
            statements.extend(sql for step in migration.steps(tables, flavor) if (sql := step.sql(dialect)))
            statements.append(recorded(migration.version, migration.description))
    return statements


def _index_applies(index: Any, dialect: Dialect) -> bool:
    """Whether an index is created on ``dialect`` (indexes may be limited with ``ddl_if``)."""
    ddl_if = getattr(index, "_ddl_if", None)
    if ddl_if is None or ddl_if.dialect is None:
        return True
    names = ddl_if.dialect if isinstance(ddl_if.dialect, tuple | list) else (ddl_if.dialect,)
    return dialect.name in names


# ------------------------------------------------------------------------------ checking

_MIN_SERVER = {"mariadb": (10, 6), "mysql": (8, 0, 1)}  # FOR UPDATE SKIP LOCKED
_DATETIMES = (
    "run_at",
    "run_started_at",
    "run_completed_at",
    "run_timeout_at",
    "cancel_requested_at",
    "created_at",
)


def require_current(conn: Connection, tables: Tables) -> None:
    """Raise SchemaError unless ``tables`` are at :data:`SCHEMA_VERSION`, naming the fix."""
    version = version_of(conn, tables)
    require_known(version, tables)
    if version == SCHEMA_VERSION:
        return
    prefix = tables.prefix
    fix = (
        f"run `jobsd schema upgrade --url URL --table-prefix {prefix}`, or "
        f"`await jobsd_async.schema.upgrade(engine, table_prefix={prefix!r})`, "
        "or start with auto_migrate=True"
    )
    if version == 0:
        raise SchemaError(
            f"there are no jobsd tables with prefix {prefix!r} (schema version 0; version "
            f"{SCHEMA_VERSION} needed): {fix}"
        )
    raise SchemaError(
        f"the tables with prefix {prefix!r} are at schema version {version} (jobsd_async "
        f"{RELEASES.get(version, '?')}); this jobsd_async needs version {SCHEMA_VERSION}: {fix}"
    )


def verify(conn: Connection, tables: Tables) -> None:
    """Check what jobsd relies on beyond the version: the server, and on MySQL/MariaDB the
    precision of datetimes and the collation of names (tables made by other tools)."""
    flavor = flavor_of(conn.dialect)
    if flavor not in NAME_COLLATIONS:
        return
    server = tuple(conn.dialect.server_version_info or ())
    if server < _MIN_SERVER[flavor]:
        wanted = ".".join(map(str, _MIN_SERVER[flavor]))
        raise SchemaError(f"{flavor} {'.'.join(map(str, server))} is too old: jobsd needs {wanted} or later")
    columns = {
        str(name): (precision, collation)
        for name, precision, collation in conn.execute(
            text(
                "SELECT COLUMN_NAME, DATETIME_PRECISION, COLLATION_NAME FROM information_schema.COLUMNS "
                "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = :table"
            ),
            {"table": tables.runs.name},
        )
    }
    coarse = [name for name in _DATETIMES if name in columns and (columns[name][0] or 0) < 6]
    if coarse:
        raise SchemaError(
            f"{tables.runs.name}: {', '.join(coarse)} store no microseconds (DATETIME without (6)); "
            "due times would be rounded: recreate them as DATETIME(6)"
        )
    collation = NAME_COLLATIONS[flavor]
    loose = [
        n for n in ("name", "name_active", "job", "schedule") if n in columns and columns[n][1] != collation
    ]
    if loose:
        raise SchemaError(
            f"{tables.runs.name}: {', '.join(loose)} compare names loosely (collation is not "
            f"{collation}): run `jobsd schema upgrade`"
        )


async def latest_version(conn: AsyncConnection, tables: Tables) -> int:
    """The newest version recorded for ``tables`` (asked at every heartbeat: one small read)."""
    latest = (await conn.execute(select(func.max(tables.migrations.c.version)))).scalar()
    return int(latest or 0)
