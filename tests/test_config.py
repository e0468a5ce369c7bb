"""JobsD(...) validates every parameter at construction, naming the parameter and value."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from jobsd_async import JobsD


@pytest.fixture
def dummy_engine() -> Any:
    # Never connected: construction must not touch the database.
    return create_async_engine("sqlite+aiosqlite:///:memory:")


@pytest.mark.parametrize(
    ("option", "value", "error"),
    [
        ("workers", -1, ValueError),
        ("workers", 1.5, TypeError),
        ("workers", True, TypeError),
        ("poll_interval", -0.1, ValueError),
        ("poll_interval", 0, ValueError),
        ("poll_interval", "5", TypeError),
        ("poll_interval", float("nan"), ValueError),
        ("poll_limit", 0, ValueError),
        ("poll_limit", "10", TypeError),
        ("timeout_check", timedelta(seconds=-1), ValueError),
        ("run_timeout", -5, ValueError),
        ("run_timeout", "1", TypeError),
        ("retries_error_limit", -2, ValueError),
        ("retries_error_limit", 1.0, TypeError),
        ("retries_timeout_limit", -3, ValueError),
        ("auto_migrate", 1, TypeError),
        ("table_prefix", "1abc", ValueError),
        ("table_prefix", "bad-prefix", ValueError),
        ("table_prefix", "a; DROP TABLE x; --", ValueError),
        ("table_prefix", "", ValueError),
        ("table_prefix", "x" * 41, ValueError),
        ("table_prefix", 5, TypeError),
        ("heartbeat_interval", -1, ValueError),
        ("shutdown_timeout", -1, ValueError),
        ("cancel_grace", -0.5, ValueError),
        ("cancel_grace", None, TypeError),
        ("logger", "jobsd", TypeError),
        ("max_connections", 0, ValueError),
        ("max_connections", 2.0, TypeError),
        ("max_connections", None, TypeError),
    ],
)
def test_invalid_option_names_parameter_and_value(
    dummy_engine: Any, option: str, value: object, error: type[Exception]
) -> None:
    options: dict[str, Any] = {option: value}
    with pytest.raises(error) as info:
        JobsD(dummy_engine, **options)
    assert option in str(info.value)
    assert repr(value)[:20] in str(info.value) or str(value)[:20] in str(info.value)


def test_engine_must_be_async_engine() -> None:
    with pytest.raises(TypeError, match="AsyncEngine"):
        JobsD("sqlite:///x.db")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("option", "value", "stored"),
    [
        ("run_timeout", None, None),
        ("run_timeout", 0, None),
        ("run_timeout", timedelta(minutes=2), 120.0),
        ("retries_error_limit", -1, None),
        ("retries_error_limit", None, None),
        ("retries_timeout_limit", 0, 0),
    ],
)
def test_disabling_values_follow_go_conventions(
    dummy_engine: Any, option: str, value: object, stored: object
) -> None:
    options: dict[str, Any] = {option: value}
    jd = JobsD(dummy_engine, **options)
    job = jd.register_job("j", lambda: None)
    assert getattr(job, option) == stored


def test_defaults_match_the_go_original(dummy_engine: Any) -> None:
    jd = JobsD(dummy_engine)
    job = jd.register_job("j", lambda: None)
    assert (job.run_timeout, job.retries_error_limit, job.retries_timeout_limit) == (1800.0, 3, 3)
    assert jd.logger.name == "jobsd_async"
    assert sorted(jd.metadata.tables) == [
        "jobsd_instances",
        "jobsd_limits",
        "jobsd_migrations",
        "jobsd_queues",
        "jobsd_runs",
    ]


def test_precedence_instance_then_job(dummy_engine: Any) -> None:
    jd = JobsD(dummy_engine, run_timeout=10, retries_error_limit=5)
    job = jd.register_job("j", lambda: None, run_timeout=None, retries_timeout_limit=1)
    assert (job.run_timeout, job.retries_error_limit, job.retries_timeout_limit) == (None, 5, 1)
