"""Registering jobs and schedules: the part of the JobsD facade used before ``up()``."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, Concatenate, ParamSpec, Protocol, TypeAlias, TypeVar, overload

from ._config import UNSET, Backoff, Config, Duration, Limits, RunOptions, check_name
from ._errors import InvalidJobFuncError
from ._jobs import Args, Job, JobOwner
from ._periodic import declare
from ._retry import RetryIf
from ._runs import RunInfo
from ._schedules import BUILTIN_PREFIXES, BuiltinSchedule, ScheduleFunc

P = ParamSpec("P")
R = TypeVar("R")
F = TypeVar("F", bound=Callable[..., Any])

Exceptions: TypeAlias = type[BaseException] | tuple[type[BaseException], ...]
"""An exception class, or a tuple of them (as ``except`` takes)."""


class _JobDecorator(Protocol):
    @overload
    def __call__(self, func: Callable[Concatenate[RunInfo, P], Coroutine[Any, Any, R]], /) -> Job[P, R]: ...

    @overload
    def __call__(self, func: Callable[P, Coroutine[Any, Any, R]], /) -> Job[P, R]: ...

    @overload
    def __call__(self, func: Callable[Concatenate[RunInfo, P], R], /) -> Job[P, R]: ...

    @overload
    def __call__(self, func: Callable[P, R], /) -> Job[P, R]: ...


class Registrations:
    """``register_job``/``@job`` and ``register_schedule``/``@schedule``, mixed into JobsD."""

    _config: Config
    _jobs: dict[str, Job[Any]]
    _schedules: dict[str, ScheduleFunc]
    _require_registering: Callable[[str], None]

    @overload
    def register_job(
        self,
        name: str,
        func: Callable[Concatenate[RunInfo, P], Coroutine[Any, Any, R]],
        *,
        run_timeout: Duration | None = ...,
        retries_error_limit: int | None = ...,
        retries_timeout_limit: int | None = ...,
        retry_backoff: Duration | Backoff | None = ...,
        retry_on: Exceptions | None = ...,
        no_retry_on: Exceptions | None = ...,
        retry_if: RetryIf | None = ...,
        periodic: BuiltinSchedule | None = ...,
        periodic_args: Args | tuple[Any, ...] | None = ...,
        queue: str = ...,
        priority: int = ...,
        max_running: int | None = ...,
        rate_limit: tuple[int, Duration] | None = ...,
        limit_key: Callable[..., str | int] | None = ...,
    ) -> Job[P, R]: ...

    @overload
    def register_job(
        self,
        name: str,
        func: Callable[P, Coroutine[Any, Any, R]],
        *,
        run_timeout: Duration | None = ...,
        retries_error_limit: int | None = ...,
        retries_timeout_limit: int | None = ...,
        retry_backoff: Duration | Backoff | None = ...,
        retry_on: Exceptions | None = ...,
        no_retry_on: Exceptions | None = ...,
        retry_if: RetryIf | None = ...,
        periodic: BuiltinSchedule | None = ...,
        periodic_args: Args | tuple[Any, ...] | None = ...,
        queue: str = ...,
        priority: int = ...,
        max_running: int | None = ...,
        rate_limit: tuple[int, Duration] | None = ...,
        limit_key: Callable[..., str | int] | None = ...,
    ) -> Job[P, R]: ...

    @overload
    def register_job(
        self,
        name: str,
        func: Callable[Concatenate[RunInfo, P], R],
        *,
        run_timeout: Duration | None = ...,
        retries_error_limit: int | None = ...,
        retries_timeout_limit: int | None = ...,
        retry_backoff: Duration | Backoff | None = ...,
        retry_on: Exceptions | None = ...,
        no_retry_on: Exceptions | None = ...,
        retry_if: RetryIf | None = ...,
        periodic: BuiltinSchedule | None = ...,
        periodic_args: Args | tuple[Any, ...] | None = ...,
        queue: str = ...,
        priority: int = ...,
        max_running: int | None = ...,
        rate_limit: tuple[int, Duration] | None = ...,
        limit_key: Callable[..., str | int] | None = ...,
    ) -> Job[P, R]: ...

    @overload
    def register_job(
        self,
        name: str,
        func: Callable[P, R],
        *,
        run_timeout: Duration | None = ...,
        retries_error_limit: int | None = ...,
        retries_timeout_limit: int | None = ...,
        retry_backoff: Duration | Backoff | None = ...,
        retry_on: Exceptions | None = ...,
        no_retry_on: Exceptions | None = ...,
        retry_if: RetryIf | None = ...,
        periodic: BuiltinSchedule | None = ...,
        periodic_args: Args | tuple[Any, ...] | None = ...,
        queue: str = ...,
        priority: int = ...,
        max_running: int | None = ...,
        rate_limit: tuple[int, Duration] | None = ...,
        limit_key: Callable[..., str | int] | None = ...,
    ) -> Job[P, R]: ...

    def register_job(
        self,
        name: str,
        func: Callable[..., Any],
        *,
        run_timeout: Duration | None = UNSET,  # type: ignore[assignment]
        retries_error_limit: int | None = UNSET,  # type: ignore[assignment]
        retries_timeout_limit: int | None = UNSET,  # type: ignore[assignment]
        retry_backoff: Duration | Backoff | None = UNSET,  # type: ignore[assignment]
        retry_on: Exceptions | None = UNSET,  # type: ignore[assignment]
        no_retry_on: Exceptions | None = UNSET,  # type: ignore[assignment]
        retry_if: RetryIf | None = None,
        periodic: BuiltinSchedule | None = None,
        periodic_args: Args | tuple[Any, ...] | None = None,
        queue: str = UNSET,  # type: ignore[assignment]
        priority: int = UNSET,  # type: ignore[assignment]
        max_running: int | None = None,
        rate_limit: tuple[int, Duration] | None = None,
        limit_key: Callable[..., str | int] | None = None,
    ) -> Job[Any, Any]:
        """Register ``func`` as job ``name``; options override the instance defaults.

        A first parameter annotated ``RunInfo`` receives the attempt's RunInfo; the
        returned Job's ``create_run`` takes the remaining parameters.  ``retry_on`` /
        ``no_retry_on`` name the exceptions a failed attempt is (not) retried for; or
        ``retry_if(exc) -> bool`` decides (not both).

        ``periodic=every(...)`` or ``cron(...)`` makes it a periodic job: the cluster keeps
        exactly one chain of it (unique name ``periodic:{name}``) on that schedule, with the
        arguments ``periodic_args`` (an ``Args(...)`` or a tuple; needed when the function
        has required parameters) and this job's options.  The chain follows the code when
        they change, and ends when ``periodic`` is removed.

        Routing: ``queue`` (default ``"default"``) and ``priority`` (default 0; higher runs
        first among due runs) are the defaults of the job's runs.  ``max_running=N``: at
        most N runs of the job run at once across the cluster; ``rate_limit=(n, per)``: at
        most n start per ``per`` seconds.  With ``limit_key`` (a function of a run's
        arguments returning a str or int, called when the run is created), both limits
        apply per key, e.g. one running run per customer.
        """
        self._require_registering("register_job")
        check_name("job", name)
        if name in self._jobs:
            raise ValueError(f"job {name!r} is already registered")
        options = RunOptions.parse(
            run_timeout=run_timeout,
            retries_error_limit=retries_error_limit,
            retries_timeout_limit=retries_timeout_limit,
            retry_backoff=retry_backoff,
            retry_on=retry_on,
            no_retry_on=no_retry_on,
            queue=queue,
            priority=priority,
        )
        limits = Limits.parse(name, max_running, rate_limit, limit_key)
        if retry_if is not None:
            if not callable(retry_if):
                raise TypeError(f"retry_if of job {name!r} must be callable, got {retry_if!r}")
            if options.retry_on not in (UNSET, None) or options.no_retry_on not in (UNSET, None):
                raise ValueError(f"job {name!r}: give retry_if, or retry_on/no_retry_on, not both")
        owner: JobOwner = self  # type: ignore[assignment]
        job: Job[Any, Any] = Job(name, func, options.over(self._config.run_defaults), owner, retry_if, limits)
        job._periodic = declare(name, job.contract, periodic, periodic_args)
        self._jobs[name] = job
        return job

    @overload
    def job(self, func: Callable[Concatenate[RunInfo, P], Coroutine[Any, Any, R]], /) -> Job[P, R]: ...

    @overload
    def job(self, func: Callable[P, Coroutine[Any, Any, R]], /) -> Job[P, R]: ...

    @overload
    def job(self, func: Callable[Concatenate[RunInfo, P], R], /) -> Job[P, R]: ...

    @overload
    def job(self, func: Callable[P, R], /) -> Job[P, R]: ...

    @overload
    def job(
        self,
        name: str | None = None,
        *,
        run_timeout: Duration | None = ...,
        retries_error_limit: int | None = ...,
        retries_timeout_limit: int | None = ...,
        retry_backoff: Duration | Backoff | None = ...,
        retry_on: Exceptions | None = ...,
        no_retry_on: Exceptions | None = ...,
        retry_if: RetryIf | None = ...,
        periodic: BuiltinSchedule | None = ...,
        periodic_args: Args | tuple[Any, ...] | None = ...,
        queue: str = ...,
        priority: int = ...,
        max_running: int | None = ...,
        rate_limit: tuple[int, Duration] | None = ...,
        limit_key: Callable[..., str | int] | None = ...,
    ) -> _JobDecorator: ...

    def job(self, name: Any = None, **options: Any) -> Any:
        """Decorator form of :meth:`register_job`; the name defaults to ``func.__qualname__``."""
        if isinstance(name, Job):
            raise InvalidJobFuncError(
                f"{name!r} is already a registered Job; register its function, job.func"
            )
        if callable(name):
            return self.register_job(name.__qualname__, name)

        def decorate(func: Callable[..., Any]) -> Job[Any, Any]:
            return self.register_job(name if name is not None else func.__qualname__, func, **options)

        return decorate

    def register_schedule(self, name: str, func: ScheduleFunc) -> ScheduleFunc:
        """Register a schedule: a function ``(now) -> next due time`` (timezone-aware)."""
        self._require_registering("register_schedule")
        check_name("schedule", name)
        if name.startswith(BUILTIN_PREFIXES):
            raise ValueError(f"schedule name {name!r} must not start with {' or '.join(BUILTIN_PREFIXES)}")
        if name in self._schedules:
            raise ValueError(f"schedule {name!r} is already registered")
        if not callable(func):
            raise TypeError(f"schedule {name!r} must be callable, got {func!r}")
        self._schedules[name] = func
        return func

    @overload
    def schedule(self, name: F, /) -> F: ...

    @overload
    def schedule(self, name: str | None = None) -> Callable[[F], F]: ...

    def schedule(self, name: Any = None) -> Any:
        """Decorator form of :meth:`register_schedule`; the name defaults to ``__qualname__``."""
        if callable(name):
            return self.register_schedule(name.__qualname__, name)

        def decorate(func: F) -> F:
            self.register_schedule(name if name is not None else func.__qualname__, func)
            return func

        return decorate
