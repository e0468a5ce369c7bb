"""Configuration of a JobsD instance: defaults, durations and validation."""

from __future__ import annotations

import logging
import math
import random
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from typing import TypeAlias

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from ._text import is_storable

Duration: TypeAlias = float | int | timedelta
"""Seconds as a number, or a :class:`datetime.timedelta`."""

DEFAULT_WORKERS = 10
DEFAULT_POLL_INTERVAL = 5.0  # seconds
DEFAULT_POLL_LIMIT = 1000  # rows per poll
DEFAULT_TIMEOUT_CHECK = 30.0  # seconds
DEFAULT_RUN_TIMEOUT = 1800.0  # seconds
DEFAULT_RETRIES_ERROR_LIMIT = 3
DEFAULT_RETRIES_TIMEOUT_LIMIT = 3
DEFAULT_TABLE_PREFIX = "jobsd_"
DEFAULT_HEARTBEAT_INTERVAL = 10.0  # seconds
DEFAULT_SHUTDOWN_TIMEOUT = 30.0  # seconds
DEFAULT_CANCEL_GRACE = 5.0  # seconds
DEFAULT_MAX_CONNECTIONS = 3  # an instance's own connections (plus the process's LISTEN one)
DEFAULT_BACKOFF_CAP = 3600.0  # seconds, the longest wait before a retry
MAX_NAME_LENGTH = 255
# Upper bounds checked at input, so that every stored value stays within what the three
# databases' timestamp and integer types can compute with (see docs/api.md, "Limits").
MAX_DURATION = 100 * 365.25 * 86400  # seconds: a hundred years
MAX_COUNT = 2**31 - 1  # retry limits and counts: the INTEGER columns' range
MAX_WORKERS = 10_000
MAX_POLL_LIMIT = 100_000
MAX_CONNECTIONS = 1_000
MAX_PRIORITY = 2**31 - 1  # priorities span the INTEGER column's range
DEFAULT_QUEUE = "default"
DEFAULT_PRIORITY = 0
# Index names are "ix_{prefix}runs_pending" and the like; PostgreSQL truncates identifiers at 63.
MAX_TABLE_PREFIX_LENGTH = 40

_PREFIX_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class _Unset:
    """Marker for "not given, inherit from the level above"."""

    _instance: _Unset | None = None

    def __new__(cls) -> _Unset:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNSET"

    def __bool__(self) -> bool:
        return False


UNSET = _Unset()


def to_seconds(name: str, value: object, *, allow_none: bool = False) -> float | None:
    """Convert a :data:`Duration` to float seconds, rejecting negatives and wrong types."""
    if value is None:
        if allow_none:
            return None
        raise TypeError(f"{name} must be a number of seconds or a timedelta, got None")
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise TypeError(
            f"{name} must be a number of seconds or a timedelta, got {value!r} ({type(value).__name__})"
        )
    if math.isnan(seconds) or math.isinf(seconds):
        raise ValueError(f"{name} must be a finite duration, got {value!r}")
    if seconds < 0:
        raise ValueError(f"{name} must not be negative, got {value!r}")
    if seconds > MAX_DURATION:
        raise ValueError(f"{name} must be at most {MAX_DURATION:.0f} seconds (100 years), got {value!r}")
    return seconds


def to_run_timeout(name: str, value: object) -> float | None:
    """A run timeout: a duration, where None or 0 means "no timeout"."""
    seconds = to_seconds(name, value, allow_none=True)
    return seconds if seconds else None


def to_retry_limit(name: str, value: object) -> int | None:
    """A retry limit: a non-negative int, where None or -1 means unlimited."""
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int or None, got {value!r} ({type(value).__name__})")
    if value == -1:
        return None
    if value < 0:
        raise ValueError(f"{name} must be >= 0, or None/-1 for unlimited, got {value!r}")
    if value > MAX_COUNT:
        raise ValueError(f"{name} must be at most {MAX_COUNT}, got {value!r}")
    return value


def to_count(name: str, value: object, *, minimum: int, maximum: int = MAX_COUNT) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    if value > maximum:
        raise ValueError(f"{name} must be at most {maximum}, got {value!r}")
    return value


def check_name(kind: str, name: object) -> str:
    """Validate a job, schedule or unique-run name."""
    if not isinstance(name, str):
        raise TypeError(f"{kind} name must be a str, got {name!r} ({type(name).__name__})")
    if not name:
        raise ValueError(f"{kind} name must not be empty")
    if len(name) > MAX_NAME_LENGTH:
        raise ValueError(f"{kind} name must be at most {MAX_NAME_LENGTH} characters, got {len(name)}")
    if "," in name:
        raise ValueError(f"{kind} name must not contain a comma, got {name!r}")
    if not is_storable(name):
        raise ValueError(f"{kind} name must not contain NUL characters or lone surrogates, got {name!r}")
    return name


def check_listen(listen: object) -> bool | str:
    """``listen``: True, False, or the URL of a PostgreSQL server to LISTEN on directly."""
    if isinstance(listen, bool):
        return listen
    if not isinstance(listen, str):
        raise TypeError(f"listen must be a bool or a database URL, got {listen!r} ({type(listen).__name__})")
    try:
        url = make_url(listen)
    except ArgumentError as exc:
        raise ValueError(f"listen must be a bool or a database URL, got {listen!r}") from exc
    if not url.drivername.startswith("postgresql+asyncpg"):
        raise ValueError(f"listen must be a postgresql+asyncpg:// URL, got {url.drivername!r}")
    return listen


_EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)


def check_due_time(name: str, when: datetime) -> datetime:
    """A due time every database stores and computes with: from 1970 to 100 years from now."""
    latest = datetime.now(UTC) + timedelta(seconds=MAX_DURATION)
    if not _EARLIEST <= when <= latest:
        raise ValueError(f"{name} must be between 1970-01-01 and 100 years from now, got {when!r}")
    return when


def check_table_prefix(prefix: object) -> str:
    if not isinstance(prefix, str):
        raise TypeError(f"table_prefix must be a str, got {prefix!r} ({type(prefix).__name__})")
    if not _PREFIX_RE.fullmatch(prefix):
        raise ValueError(f"table_prefix must match [A-Za-z_][A-Za-z0-9_]*, got {prefix!r}")
    if len(prefix) > MAX_TABLE_PREFIX_LENGTH:
        raise ValueError(f"table_prefix must be at most {MAX_TABLE_PREFIX_LENGTH} characters, got {prefix!r}")
    return prefix


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential retry backoff with jitter.

    The n-th retry of a run waits a random time between half and all of
    ``min(cap, base * 2 ** (n - 1))`` seconds.  Without a backoff, retries are due at once.
    """

    base: float
    cap: float = DEFAULT_BACKOFF_CAP

    def __init__(self, base: Duration, cap: Duration = DEFAULT_BACKOFF_CAP) -> None:
        base_s = to_seconds("retry_backoff base", base)
        cap_s = to_seconds("retry_backoff cap", cap)
        assert base_s is not None and cap_s is not None
        if base_s == 0 or cap_s < base_s:
            raise ValueError(f"retry_backoff needs 0 < base <= cap, got base={base!r}, cap={cap!r}")
        object.__setattr__(self, "base", base_s)
        object.__setattr__(self, "cap", cap_s)

    def delay(self, retry: int, rand: Callable[[], float] = random.random) -> float:
        """Seconds before the ``retry``-th retry (1 for the first)."""
        return backoff_delay(self.base, self.cap, retry, rand)


def backoff_delay(base: float, cap: float, retry: int, rand: Callable[[], float] = random.random) -> float:
    """Seconds before the ``retry``-th retry, for any stored base and cap (clamped to sane values).

    Rows may be written by anything: a base or cap that is not a finite positive number of at
    most MAX_DURATION seconds is clamped, so computing a retry never fails.
    """
    base = _clamp_seconds(base)
    cap = max(base, _clamp_seconds(cap))
    ceiling = min(cap, base * 2.0 ** min(max(retry, 1) - 1, 64))
    return ceiling * (0.5 + rand() / 2)


def _clamp_seconds(value: float) -> float:
    if not isinstance(value, int | float) or math.isnan(value) or value <= 0:
        return 0.0
    return min(float(value), MAX_DURATION)


def to_backoff(name: str, value: object) -> Backoff | None:
    """A retry backoff: a Backoff, or a base duration; None or 0 means immediate retries."""
    if value is None or isinstance(value, Backoff):
        return value
    seconds = to_seconds(name, value)
    return Backoff(seconds) if seconds else None


def exception_name(cls: type) -> str:
    """How a retry policy names an exception class: ``module.qualname``."""
    return f"{cls.__module__}.{cls.__qualname__}"


def to_exception_names(name: str, value: object) -> tuple[str, ...] | None:
    """The names of an exception class, or of a tuple/list of them; None stays None."""
    if value is None:
        return None
    items = value if isinstance(value, list | tuple | set | frozenset) else (value,)
    names = []
    for item in items:
        if not (isinstance(item, type) and issubclass(item, BaseException)):
            raise TypeError(f"{name} takes exception classes, got {item!r}")
        names.append(exception_name(item))
    if not names:
        raise ValueError(f"{name} needs at least one exception class, got {value!r}")
    return tuple(dict.fromkeys(names))


def to_priority(name: str, value: object) -> int:
    """A run's priority: an int; higher runs first among due runs."""
    return to_count(name, value, minimum=-MAX_PRIORITY, maximum=MAX_PRIORITY)


def to_queue(name: str, value: object) -> str:
    """A queue name (like a job name)."""
    return check_name(name, value)


def to_queues(value: object) -> tuple[str, ...] | None:
    """The queues an instance takes runs from: None for all, else a non-empty list of names."""
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise TypeError(f"queues must be a list of queue names or None, got {value!r}")
    names = tuple(dict.fromkeys(check_name("queue", q) for q in value))
    if not names:
        raise ValueError("queues must name at least one queue (None: all queues)")
    return names


@dataclass(frozen=True, slots=True)
class JobLimits:
    """The limits claims of a job enforce: as ``{prefix}limits`` holds them for the cluster."""

    max_running: int | None
    rate: tuple[int, float] | None
    per_key: bool

    @classmethod
    def stored(
        cls, max_running: object, rate_count: object, rate_period: object, per_key: object
    ) -> JobLimits | None:
        """The limits of a stored row, made sane whoever wrote it (a count below 1 counts
        as 1, a period that is not a positive number of seconds drops the rate limit)."""
        running = None if not isinstance(max_running, int) else min(max(max_running, 1), MAX_COUNT)
        rate = None
        if isinstance(rate_count, int) and isinstance(rate_period, int | float):
            period = float(rate_period)
            if not math.isnan(period) and period > 0:
                rate = (min(max(rate_count, 1), MAX_COUNT), min(period, MAX_DURATION))
        if running is None and rate is None:
            return None
        return cls(running, rate, bool(per_key))


@dataclass(frozen=True, slots=True)
class Limits:
    """A job's cluster-wide limits, enforced by the database when runs are claimed.

    ``max_running``: at most this many runs of the job running at once; ``rate``: at most
    ``count`` starts per ``per`` seconds.  With a ``key`` function (called with a run's
    arguments when it is created), each limit applies per key instead of per job.
    """

    max_running: int | None = None
    rate: tuple[int, float] | None = None
    key: Callable[..., object] | None = None

    @classmethod
    def parse(cls, job: str, max_running: object, rate_limit: object, limit_key: object) -> Limits | None:
        """Validated limits of job ``job``; None when it has none."""
        running = (
            None if max_running is None else to_count(f"max_running of job {job!r}", max_running, minimum=1)
        )
        rate = None if rate_limit is None else _to_rate(f"rate_limit of job {job!r}", rate_limit)
        if limit_key is not None and not callable(limit_key):
            raise TypeError(
                f"limit_key of job {job!r} must be a function of the run's arguments, got {limit_key!r}"
            )
        if running is None and rate is None:
            if limit_key is not None:
                raise ValueError(f"job {job!r}: limit_key needs max_running or rate_limit")
            return None
        return cls(running, rate, limit_key)

    @property
    def spec(self) -> JobLimits:
        """What claims enforce."""
        return JobLimits(self.max_running, self.rate, self.key is not None)

    def key_of(self, job: str, args: tuple[object, ...], kwargs: dict[str, object]) -> str:
        """The limit key of a run with these arguments ("" when the limits are job-wide)."""
        if self.key is None:
            return ""
        try:
            key = self.key(*args, **kwargs)
        except Exception as exc:
            raise ValueError(f"limit_key of job {job!r} failed for these arguments: {exc!r}") from exc
        if isinstance(key, int) and not isinstance(key, bool):
            key = str(key)
        if not isinstance(key, str):
            raise TypeError(f"limit_key of job {job!r} must return a str or an int, got {key!r}")
        if not key or len(key) > MAX_NAME_LENGTH or not is_storable(key):
            raise ValueError(
                f"limit_key of job {job!r} must return 1 to {MAX_NAME_LENGTH} characters without NUL "
                f"characters or lone surrogates, got {key!r}"
            )
        return key


def _to_rate(name: str, value: object) -> tuple[int, float]:
    if not isinstance(value, tuple) or len(value) != 2:
        raise TypeError(f"{name} must be a tuple (count, per_seconds), got {value!r}")
    count = to_count(f"{name}: count", value[0], minimum=1)
    per = to_seconds(f"{name}: period", value[1])
    assert per is not None
    if per == 0:
        raise ValueError(f"{name}: the period must be greater than 0, got {value[1]!r}")
    return count, per


_OPTION_PARSERS: dict[str, Callable[[str, object], object]] = {
    "queue": to_queue,
    "priority": to_priority,
    "run_timeout": to_run_timeout,
    "retries_error_limit": to_retry_limit,
    "retries_timeout_limit": to_retry_limit,
    "retry_backoff": to_backoff,
    "retry_on": to_exception_names,
    "no_retry_on": to_exception_names,
}


@dataclass(frozen=True, slots=True)
class RunOptions:
    """Per-run settings that travel in the row; each level may leave a value UNSET."""

    run_timeout: float | _Unset | None = UNSET
    retries_error_limit: int | _Unset | None = UNSET
    retries_timeout_limit: int | _Unset | None = UNSET
    retry_backoff: Backoff | _Unset | None = UNSET
    retry_on: tuple[str, ...] | _Unset | None = UNSET  # exception names; None: any
    no_retry_on: tuple[str, ...] | _Unset | None = UNSET
    queue: str | _Unset = UNSET
    priority: int | _Unset = UNSET

    @classmethod
    def parse(cls, **values: object) -> RunOptions:
        """Validate the given options (by name); UNSET ones stay UNSET."""
        return cls(**{k: v if v is UNSET else _OPTION_PARSERS[k](k, v) for k, v in values.items()})  # type: ignore[arg-type]

    def over(self, base: RunOptions) -> RunOptions:
        """These options, with anything UNSET taken from ``base``."""
        return RunOptions(
            **{
                f.name: getattr(base if getattr(self, f.name) is UNSET else self, f.name)
                for f in fields(self)
            }
        )


@dataclass(frozen=True, slots=True)
class Config:
    """Validated settings of one JobsD instance; durations in float seconds."""

    workers: int
    poll_interval: float
    poll_limit: int
    timeout_check: float
    run_timeout: float | None
    retries_error_limit: int | None
    retries_timeout_limit: int | None
    retry_backoff: Backoff | None
    retention: float | None
    auto_migrate: bool
    table_prefix: str
    heartbeat_interval: float
    shutdown_timeout: float | None
    cancel_grace: float
    listen: bool | str
    max_connections: int
    queues: tuple[str, ...] | None
    logger: logging.Logger

    @property
    def run_defaults(self) -> RunOptions:
        return RunOptions(
            self.run_timeout,
            self.retries_error_limit,
            self.retries_timeout_limit,
            self.retry_backoff,
            retry_on=None,
            no_retry_on=None,
            queue=DEFAULT_QUEUE,
            priority=DEFAULT_PRIORITY,
        )


def build_config(
    *,
    workers: object,
    poll_interval: object,
    poll_limit: object,
    timeout_check: object,
    run_timeout: object,
    retries_error_limit: object,
    retries_timeout_limit: object,
    retry_backoff: object,
    retention: object,
    auto_migrate: object,
    table_prefix: object,
    heartbeat_interval: object,
    shutdown_timeout: object,
    cancel_grace: object,
    listen: object,
    max_connections: object,
    queues: object,
    logger: object,
) -> Config:
    if not isinstance(auto_migrate, bool):
        raise TypeError(f"auto_migrate must be a bool, got {auto_migrate!r}")
    if logger is not None and not isinstance(logger, logging.Logger):
        raise TypeError(f"logger must be a logging.Logger or None, got {logger!r}")
    poll = to_seconds("poll_interval", poll_interval)
    check = to_seconds("timeout_check", timeout_check)
    beat = to_seconds("heartbeat_interval", heartbeat_interval)
    assert poll is not None and check is not None and beat is not None
    for name, value in (("poll_interval", poll), ("timeout_check", check), ("heartbeat_interval", beat)):
        if value == 0:
            raise ValueError(f"{name} must be greater than 0, got {value!r}")
    grace = to_seconds("cancel_grace", cancel_grace)
    assert grace is not None
    return Config(
        workers=to_count("workers", workers, minimum=0, maximum=MAX_WORKERS),
        poll_interval=poll,
        poll_limit=to_count("poll_limit", poll_limit, minimum=1, maximum=MAX_POLL_LIMIT),
        timeout_check=check,
        run_timeout=to_run_timeout("run_timeout", run_timeout),
        retries_error_limit=to_retry_limit("retries_error_limit", retries_error_limit),
        retries_timeout_limit=to_retry_limit("retries_timeout_limit", retries_timeout_limit),
        retry_backoff=to_backoff("retry_backoff", retry_backoff),
        retention=to_seconds("retention", retention, allow_none=True),
        auto_migrate=auto_migrate,
        table_prefix=check_table_prefix(table_prefix),
        heartbeat_interval=beat,
        shutdown_timeout=to_seconds("shutdown_timeout", shutdown_timeout, allow_none=True),
        cancel_grace=grace,
        listen=check_listen(listen),
        max_connections=to_count("max_connections", max_connections, minimum=1, maximum=MAX_CONNECTIONS),
        queues=to_queues(queues),
        logger=logger if logger is not None else logging.getLogger("jobsd_async"),
    )
