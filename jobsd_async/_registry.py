"""Registering jobs and schedules: the part of the JobsD facade used before ``up()``."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, Protocol, TypeVar, overload

from ._config import UNSET, Backoff, Config, Duration, RunOptions, check_name
from ._errors import InvalidJobFuncError
from ._jobs import Job
from ._runs import RunInfo
from ._schedules import BUILTIN_PREFIXES, ScheduleFunc

if TYPE_CHECKING:
    from ._creator import RunCreator

P = ParamSpec("P")
F = TypeVar("F", bound=Callable[..., Any])


class _JobDecorator(Protocol):
    @overload
    def __call__(self, func: Callable[Concatenate[RunInfo, P], Any], /) -> Job[P]: ...

    @overload
    def __call__(self, func: Callable[P, Any], /) -> Job[P]: ...


class Registrations:
    """``register_job``/``@job`` and ``register_schedule``/``@schedule``, mixed into JobsD."""

    _config: Config
    _jobs: dict[str, Job[Any]]
    _schedules: dict[str, ScheduleFunc]
    _require_registering: Callable[[str], None]
    create_run: Callable[..., RunCreator]

    @overload
    def register_job(
        self,
        name: str,
        func: Callable[Concatenate[RunInfo, P], Any],
        *,
        run_timeout: Duration | None = ...,
        retries_error_limit: int | None = ...,
        retries_timeout_limit: int | None = ...,
        retry_backoff: Duration | Backoff | None = ...,
    ) -> Job[P]: ...

    @overload
    def register_job(
        self,
        name: str,
        func: Callable[P, Any],
        *,
        run_timeout: Duration | None = ...,
        retries_error_limit: int | None = ...,
        retries_timeout_limit: int | None = ...,
        retry_backoff: Duration | Backoff | None = ...,
    ) -> Job[P]: ...

    def register_job(
        self,
        name: str,
        func: Callable[..., Any],
        *,
        run_timeout: Duration | None = UNSET,  # type: ignore[assignment]
        retries_error_limit: int | None = UNSET,  # type: ignore[assignment]
        retries_timeout_limit: int | None = UNSET,  # type: ignore[assignment]
        retry_backoff: Duration | Backoff | None = UNSET,  # type: ignore[assignment]
    ) -> Job[Any]:
        """Register ``func`` as job ``name``; options override the instance defaults.

        A first parameter annotated ``RunInfo`` receives the attempt's RunInfo; the
        returned Job's ``create_run`` takes the remaining parameters.
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
        )
        job: Job[Any] = Job(name, func, options.over(self._config.run_defaults), self.create_run)
        self._jobs[name] = job
        return job

    @overload
    def job(self, func: Callable[Concatenate[RunInfo, P], Any], /) -> Job[P]: ...

    @overload
    def job(self, func: Callable[P, Any], /) -> Job[P]: ...

    @overload
    def job(
        self,
        name: str | None = None,
        *,
        run_timeout: Duration | None = ...,
        retries_error_limit: int | None = ...,
        retries_timeout_limit: int | None = ...,
        retry_backoff: Duration | Backoff | None = ...,
    ) -> _JobDecorator: ...

    def job(self, name: Any = None, **options: Any) -> Any:
        """Decorator form of :meth:`register_job`; the name defaults to ``func.__qualname__``."""
        if isinstance(name, Job):
            raise InvalidJobFuncError(
                f"{name!r} is already a registered Job; register its function, job.func"
            )
        if callable(name):
            return self.register_job(name.__qualname__, name)

        def decorate(func: Callable[..., Any]) -> Job[Any]:
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
