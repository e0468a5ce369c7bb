"""The tables, ``{prefix}runs``, ``{prefix}instances`` and ``{prefix}migrations``, and their types.

Column names follow the Go original in snake_case.  Datetimes are stored in UTC (naive on
MySQL/MariaDB and SQLite, ``timestamptz`` on PostgreSQL) and always read back aware.
Durations are float seconds (double precision); arguments and results are JSON text.
Names compare exactly on every database: on MySQL/MariaDB their columns use a binary
collation that also keeps trailing spaces significant (``NO PAD``).

This is the schema at :data:`SCHEMA_VERSION`; ``_migrations`` brings older tables here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    literal_column,
    text,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.types import TypeDecorator

from .._config import DEFAULT_QUEUE, MAX_NAME_LENGTH

# SQLite only makes INTEGER PRIMARY KEY an alias of the rowid (and so auto-incrementing).
_ID = BigInteger().with_variant(Integer(), "sqlite")
_TEXT = Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")
# MySQL's FLOAT is single precision: durations there are DOUBLE, as they are elsewhere.
SECONDS = Float().with_variant(mysql.DOUBLE(asdecimal=False), "mysql", "mariadb")

# Binary, NO PAD collations: 'report' != 'Report' != 'report ' (MariaDB and MySQL 8 differ).
NAME_COLLATIONS = {"mariadb": "utf8mb4_nopad_bin", "mysql": "utf8mb4_0900_bin"}
MYSQL_CHARSET = "utf8mb4"


def name_type(flavor: str | None) -> Any:
    """The type of a name column; ``flavor`` is "mariadb" or "mysql" on that family."""
    collation = NAME_COLLATIONS.get(flavor or "mariadb", NAME_COLLATIONS["mariadb"])
    mysql_name = mysql.VARCHAR(MAX_NAME_LENGTH, charset=MYSQL_CHARSET, collation=collation)
    return String(MAX_NAME_LENGTH).with_variant(mysql_name, "mysql", "mariadb")


class UTCDateTime(TypeDecorator[datetime]):
    """An aware UTC datetime on every dialect."""

    impl = DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r} cannot be stored; use an aware one")
        value = value.astimezone(UTC)
        return value if dialect.name == "postgresql" else value.replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if type(value) is datetime and value.tzinfo is UTC:  # (asyncpg's: as is, no copy)
            return value
        if not isinstance(value, datetime):  # SQLite expressions may come back as text
            value = datetime.fromisoformat(str(value))
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


SCHEMA_VERSION = 6
"""The schema version these definitions build by default (see ``_migrations``)."""


def since(version: int, *added: tuple[int, Column[Any]]) -> list[Column[Any]]:
    """The columns added up to ``version``."""
    return [column for introduced, column in added if introduced <= version]


@dataclass(frozen=True, slots=True)
class Tables:
    metadata: MetaData
    runs: Table
    instances: Table
    migrations: Table
    queues: Table
    limits: Table

    @property
    def prefix(self) -> str:
        return self.runs.name.removesuffix("runs")


# ddl_if takes a tuple of dialect names, though its annotation says one.
_PARTIAL: Any = ("postgresql", "sqlite")
_COMPOSITE: Any = ("mysql", "mariadb")


def _run_indexes(table: str, at: int) -> list[Index]:
    """The indexes of the runs table, one per hot query.

    PostgreSQL and SQLite get partial indexes that hold only the rows their queries look
    for (pending, running, finished, follow-ups, active names): history never enters the
    pending, running and name indexes, so claims and scans cost the same with a million
    finished rows, and an update touches only the indexes of the states it leaves and enters.
    MySQL has no partial indexes: its indexes lead with a column tested for NULL instead
    (and InnoDB's secondary indexes end in the id, which orders ties).
    """

    def partial(suffix: str, *columns: Any, where: str, unique: bool = False) -> Index:
        return Index(
            f"ix_{table}_{suffix}",
            *columns,
            unique=unique,
            postgresql_where=text(where),
            sqlite_where=text(where),
        ).ddl_if(dialect=_PARTIAL)

    def composite(suffix: str, *columns: Any, unique: bool = False) -> Index:
        return Index(f"ix_{table}_{suffix}_c", *columns, unique=unique).ddl_if(dialect=_COMPOSITE)

    pending = "run_started_at IS NULL AND run_completed_at IS NULL"
    routing = (
        [
            # The claim: pending rows, highest priority first, then in due order.
            partial("claim", literal_column("priority").desc(), "run_at", "id", where=pending),
            composite("claim", "run_started_at", literal_column("priority").desc(), "run_at"),
            # Limited jobs: their running runs (all running runs, so that one started without a
            # key counts too), and their starts in a rate limit's window, per key.
            partial(
                "running_key",
                "job",
                "limit_key",
                where="run_started_at IS NOT NULL AND run_completed_at IS NULL",
            ),
            composite("running_key", "run_completed_at", "job", "limit_key", "run_started_at"),
            partial(
                "starts_key",
                "job",
                "limit_key",
                "run_started_at",
                where="limit_key IS NOT NULL AND run_started_at IS NOT NULL",
            ),
            composite("starts_key", "limit_key", "job", "run_started_at"),
        ]
        if at >= 6
        else []
    )
    return [
        # The poll (and, before version 6, the claim): pending rows in due order.
        partial("due", "run_at", "id", where=pending),
        # (Not led by run_completed_at: a completion then never moves an entry a claim's
        # range locks cover, which deadlocked them on InnoDB.)
        composite("due", "run_started_at", "run_at"),
        # The timeout check: running rows, oldest first (however many are pending).
        partial("running", "id", where="run_started_at IS NOT NULL AND run_completed_at IS NULL"),
        composite("owner", "run_completed_at", "run_started_by"),
        composite("timeout_at", "run_completed_at", "run_timeout_at"),
        # Retention: finished rows by age (the composite index above serves MySQL).
        partial("completed_at", "run_completed_at", where="run_completed_at IS NOT NULL"),
        # Chains: the follow-ups of a run id.
        partial("origin_id", "origin_id", where="origin_id IS NOT NULL"),
        composite("origin_id", "origin_id"),
        # At most one open row per unique name.
        partial("name_active", "name_active", where="name_active IS NOT NULL", unique=True),
        composite("name_active", "name_active", unique=True),
        *routing,
    ]


def build_tables(prefix: str, *, flavor: str | None = None, version: int | None = None) -> Tables:
    """The tables for one table prefix, in a MetaData of their own.

    ``flavor`` ("mariadb" or "mysql") picks the name columns' collation on that family.
    ``version`` builds them as they were at an earlier schema version (default: the
    current one): the columns a migration added are left out, and the types it changed are
    the old ones.  (Creating tables at an older version serves pinned Alembic revisions
    replayed on an empty database.)
    """
    at = SCHEMA_VERSION if version is None else version
    metadata = MetaData()
    runs_name = f"{prefix}runs"
    name: Any = name_type(flavor) if at >= 2 else String(MAX_NAME_LENGTH)
    seconds: Any = SECONDS if at >= 2 else Float
    options: dict[str, Any] = {"mysql_charset": MYSQL_CHARSET} if at >= 2 else {}
    runs = Table(
        runs_name,
        metadata,
        Column("id", _ID, primary_key=True, autoincrement=True),
        Column("origin_id", BigInteger, nullable=True),
        Column("parent_id", BigInteger, nullable=True),
        Column("name", name, nullable=False),
        Column("name_active", name, nullable=True),
        Column("job", name, nullable=False),
        Column("job_args", _TEXT, nullable=True),
        Column("job_kwargs", _TEXT, nullable=True),
        Column("delay", seconds, nullable=False, default=0.0),
        Column("run_at", UTCDateTime, nullable=False),
        Column("run_total_count", Integer, nullable=False, default=0),
        Column("run_success_count", Integer, nullable=False, default=0),
        Column("run_success_limit", Integer, nullable=True),
        Column("run_started_at", UTCDateTime, nullable=True),
        Column("run_started_by", BigInteger, nullable=True),
        Column("run_completed_at", UTCDateTime, nullable=True),
        Column("run_completed_error", _TEXT, nullable=True),
        Column("run_result", _TEXT, nullable=True),
        Column("run_timeout", seconds, nullable=True),
        Column("run_timeout_at", UTCDateTime, nullable=True),
        Column("retries_on_error_count", Integer, nullable=False, default=0),
        Column("retries_on_error_limit", Integer, nullable=True),
        Column("retries_on_timeout_count", Integer, nullable=False, default=0),
        Column("retries_on_timeout_limit", Integer, nullable=True),
        # Backoff before a retry (NULL: at once): base and cap in seconds.
        Column("retry_backoff", seconds, nullable=True),
        Column("retry_backoff_cap", seconds, nullable=True),
        Column("schedule", name, nullable=True),
        Column("cancel_requested_at", UTCDateTime, nullable=True),
        Column("created_at", UTCDateTime, nullable=False),
        Column("created_by", BigInteger, nullable=False),
        # Columns added by migrations go last, where ALTER TABLE ... ADD COLUMN puts them.
        *since(
            at,
            # The creator's trace context (W3C traceparent/tracestate as JSON), kept by the chain.
            (4, Column("trace_context", _TEXT, nullable=True)),
            # The traceback of a failed attempt (bounded).
            (4, Column("run_completed_traceback", _TEXT, nullable=True)),
            # Which exceptions are retried: JSON {"on": [names], "not_on": [names]} (NULL: all).
            (5, Column("retry_policy", _TEXT, nullable=True)),
            # What the job last reported with RunInfo.set_progress(), as JSON.
            (5, Column("run_progress", _TEXT, nullable=True)),
            # Routing: the run's queue and priority (higher first among due runs), and the key
            # its job's limits count it under ("" for job-wide limits; NULL: not limited).
            (6, Column("queue", name, nullable=False, server_default=DEFAULT_QUEUE)),
            (6, Column("priority", Integer, nullable=False, server_default="0")),
            (6, Column("limit_key", name, nullable=True)),
        ),
        *_run_indexes(runs_name, at),
        **options,
    )
    instances = Table(
        f"{prefix}instances",
        metadata,
        Column("id", _ID, primary_key=True, autoincrement=True),
        Column("workers", Integer, nullable=False),
        Column("auto_migrate", Boolean, nullable=False),
        Column("supported_jobs", _TEXT, nullable=False),
        Column("supported_schedules", _TEXT, nullable=False),
        Column("poll_interval", seconds, nullable=False),
        Column("poll_limit", Integer, nullable=False),
        Column("timeout_check", seconds, nullable=False),
        Column("heartbeat_interval", seconds, nullable=False),
        Column("run_timeout", seconds, nullable=True),
        Column("retries_on_timeout_limit", Integer, nullable=True),
        Column("retries_on_error_limit", Integer, nullable=True),
        Column("runs_started", BigInteger, nullable=False, default=0),
        Column("runs_rescheduled", BigInteger, nullable=False, default=0),
        Column("runs_timed_out", BigInteger, nullable=False, default=0),
        Column("runs_timed_out_res", BigInteger, nullable=False, default=0),
        Column("runs_errors", BigInteger, nullable=False, default=0),
        Column("last_seen_at", UTCDateTime, nullable=True),
        Column("shutdown_at", UTCDateTime, nullable=True),
        Column("created_at", UTCDateTime, nullable=False),
        # Columns added by migrations go last, where ALTER TABLE ... ADD COLUMN puts them.
        *since(
            at,
            # JSON {job: fingerprint of its signature}: tells versions of a job apart.
            (2, Column("job_signatures", _TEXT, nullable=True)),
            # Where the instance runs: for operators, `jobsd instances` and healthchecks.
            (3, Column("host", String(MAX_NAME_LENGTH), nullable=True)),
            (3, Column("pid", Integer, nullable=True)),
            # The queues it takes runs from, as a JSON list (NULL: all).
            (6, Column("queues", _TEXT, nullable=True)),
        ),
        **options,
    )
    migrations = Table(
        f"{prefix}migrations",
        metadata if at >= 2 else MetaData(),  # 0.1.0 recorded no version
        Column("version", Integer, primary_key=True, autoincrement=False),
        Column("description", String(MAX_NAME_LENGTH), nullable=False),
        Column("applied_at", UTCDateTime, nullable=False),
        mysql_charset=MYSQL_CHARSET,
    )
    routing = metadata if at >= 6 else MetaData()
    queues = Table(
        f"{prefix}queues",
        routing,
        Column("name", name, primary_key=True),
        # Set while the queue is paused: no instance starts its runs (it still takes new ones).
        Column("paused_at", UTCDateTime, nullable=True),
        Column("updated_at", UTCDateTime, nullable=False),
        **options,
    )
    limits = Table(
        f"{prefix}limits",
        routing,
        Column("job", name, primary_key=True),
        # As the instances that run the job declare them; a claim of its runs locks the row.
        Column("max_running", Integer, nullable=True),
        Column("rate_count", Integer, nullable=True),
        Column("rate_period", seconds, nullable=True),
        Column("per_key", Boolean, nullable=False),
        Column("declared_by", BigInteger, nullable=False),
        Column("declared_at", UTCDateTime, nullable=False),
        **options,
    )
    return Tables(
        metadata=metadata, runs=runs, instances=instances, migrations=migrations, queues=queues, limits=limits
    )
