"""Jobs: the registered function, its options, and the job-function contract.

A job function is a plain or coroutine function.  When its first parameter is annotated
``RunInfo`` (also as the string ``"RunInfo"``) it receives the attempt's :class:`RunInfo`
first.  Arguments must bind to the rest of its signature and have a JSON form that converts
back into their annotations (see ``_codec``), because every instance reads them back from
the database.
"""

from __future__ import annotations

import contextvars
import functools
import hashlib
import inspect
import typing
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, Protocol

from typing_extensions import TypeVar

from ._codec import ArgsCodec
from ._config import Backoff, Duration, Limits, RunOptions
from ._errors import InvalidJobFuncError, JobArgsMismatchError, RunNotFoundError
from ._retry import RetryIf
from ._runs import RunInfo, RunState

if TYPE_CHECKING:
    from ._creator import Conn, RunCreator
    from ._periodic import Periodic
    from ._schedules import BuiltinSchedule

__all__ = ("Args", "Job")

_BIND_SHAPES = 64  # argument shapes remembered per job function as binding

P = ParamSpec("P")
R = TypeVar("R", default=Any)


class Args:
    """Positional and keyword arguments of one run, for :meth:`JobsD.create_runs`.

    ``job.args(...)`` builds one type-checked against the job's parameters.
    """

    __slots__ = ("args", "kwargs")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args: tuple[Any, ...] = args
        self.kwargs: dict[str, Any] = kwargs

    def __repr__(self) -> str:
        parts = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        return f"Args({', '.join(parts)})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Args) and (self.args, self.kwargs) == (other.args, other.kwargs)

    __hash__ = None  # type: ignore[assignment]


def _is_run_info_annotation(annotation: object) -> bool:
    if annotation is RunInfo:
        return True
    if isinstance(annotation, str):
        text = annotation.strip().strip("'\"")  # a quoted annotation under postponed evaluation
        return text == "RunInfo" or text.endswith(".RunInfo")
    return False


class JobFunc:
    """The contract of one job function: how to call it and how to check its arguments."""

    __slots__ = ("_binds", "codec", "func", "is_async", "signature", "takes_run_info")

    def __init__(self, name: str, func: object) -> None:
        if isinstance(func, Job):
            raise InvalidJobFuncError(
                f"job {name!r}: {func!r} is already a registered Job; register its function, job.func"
            )
        if (
            not callable(func)
            or inspect.isclass(func)
            or inspect.isasyncgenfunction(func)
            or inspect.isgeneratorfunction(func)
        ):
            raise InvalidJobFuncError(f"job {name!r} must be a function or coroutine function, got {func!r}")
        try:
            signature = inspect.signature(func)
        except (TypeError, ValueError) as exc:
            raise InvalidJobFuncError(f"job {name!r}: cannot read the signature of {func!r}") from exc
        self.func: Callable[..., Any] = func
        call = getattr(func, "__call__", None)  # noqa: B004 - callable objects with async __call__
        self.is_async = inspect.iscoroutinefunction(func) or (
            not inspect.isroutine(func) and inspect.iscoroutinefunction(call)
        )
        params = list(signature.parameters.values())
        self.takes_run_info = bool(params) and self._first_is_run_info(func, params[0])
        if self.takes_run_info:
            signature = signature.replace(parameters=params[1:])
        self.signature = signature
        self.codec = ArgsCodec(name, func, signature)
        # Whether arguments bind depends only on how many are positional and which names
        # the others have: shapes seen to bind are not checked again (bounded, see below).
        self._binds: set[tuple[int, tuple[str, ...]]] = set()

    @staticmethod
    def _first_is_run_info(func: object, param: inspect.Parameter) -> bool:
        if param.kind not in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD):
            return False
        if _is_run_info_annotation(param.annotation):
            return True
        try:
            hints = typing.get_type_hints(func)
        except Exception:  # unresolvable forward references: the raw annotation decided above
            return False
        return hints.get(param.name) is RunInfo

    def check_args(self, job: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Raise JobArgsMismatchError unless the arguments bind to the signature."""
        shape = (len(args), tuple(kwargs))
        if shape in self._binds:
            return
        try:
            self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise JobArgsMismatchError(
                f"arguments do not match job {job!r}{self.signature}: {exc} "
                f"(args={args!r}, kwargs={kwargs!r})"
            ) from exc
        if len(self._binds) < _BIND_SHAPES:
            self._binds.add(shape)

    async def call(
        self,
        info: RunInfo | None,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        run_sync: Callable[[Callable[[], Any]], Awaitable[Any]],
    ) -> Any:
        """Run the function: on the loop when async, through ``run_sync`` (a thread) when sync.

        ``info`` is required when the function takes a RunInfo, and ignored otherwise.
        """
        call_args = (info, *args) if self.takes_run_info else args
        if self.is_async:
            return await self.func(*call_args, **kwargs)
        value = await run_sync(
            functools.partial(contextvars.copy_context().run, self.func, *call_args, **kwargs)
        )
        if inspect.isawaitable(value):
            if inspect.iscoroutine(value):
                value.close()  # never awaited, and never to be: no "never awaited" warning
            raise TypeError(
                f"{self.func!r} is a plain function but returned an awaitable ({type(value).__name__}); "
                "declare the job `async def` to have it awaited"
            )
        return value

    @property
    def fingerprint(self) -> str:
        """A short digest of the signature (without RunInfo), telling versions of a job apart."""
        return hashlib.blake2b(str(self.signature).encode("utf-8", "replace"), digest_size=6).hexdigest()


class JobOwner(Protocol):
    """The JobsD a job is registered with, as its Job handle uses it."""

    def create_run(self, job: Any, /, *args: Any, **kwargs: Any) -> RunCreator: ...

    async def create_runs(self, job: Any, items: Any, *, conn: Conn | None = None) -> list[int]: ...

    async def get_run_state(self, run_id: int) -> RunState[Any]: ...

    async def wait_for_run(self, run_id: int, timeout: Duration | None = None) -> RunState[Any]: ...


class Job(Generic[P, R]):
    """A registered job, generic over its function's parameters ``P`` and result ``R``.

    ``job.create_run(...)`` and ``job.args(...)`` are type-checked against the function's
    parameters; ``job.get_run_state``/``job.wait_for_run`` return a ``RunState[R]`` whose
    ``result`` has the function's return type.  Calling the job calls the function
    directly, which is handy in tests.
    """

    __slots__ = ("_contract", "_owner", "_periodic", "func", "limits", "name", "options", "retry_if")

    def __init__(
        self,
        name: str,
        func: Callable[..., Any],
        options: RunOptions,
        owner: JobOwner,
        retry_if: RetryIf | None = None,
        limits: Limits | None = None,
    ) -> None:
        self._contract = JobFunc(name, func)
        self.name = name
        self.func = func
        self.options = options
        self.retry_if = retry_if
        self.limits = limits
        self._owner = owner
        self._periodic: Periodic | None = None  # set by register_job; read by the reconciler

    @property
    def periodic(self) -> BuiltinSchedule | None:
        """The schedule of the job's periodic chain (``periodic=``), or None."""
        return None if self._periodic is None else self._periodic.schedule

    @property
    def periodic_args(self) -> Args | None:
        """The arguments of the periodic chain's runs (``periodic_args=``), or None."""
        if self._periodic is None:
            return None
        return Args(*self._periodic.args, **self._periodic.kwargs)

    @property
    def run_timeout(self) -> float | None:
        """The job-level run timeout in seconds (None: no timeout), after instance defaults."""
        return self.options.run_timeout  # type: ignore[return-value]

    @property
    def retries_error_limit(self) -> int | None:
        """The job-level error-retry limit (None: unlimited), after instance defaults."""
        return self.options.retries_error_limit  # type: ignore[return-value]

    @property
    def retries_timeout_limit(self) -> int | None:
        """The job-level timeout-retry limit (None: unlimited), after instance defaults."""
        return self.options.retries_timeout_limit  # type: ignore[return-value]

    @property
    def retry_backoff(self) -> Backoff | None:
        """The job-level retry backoff (None: immediate retries), after instance defaults."""
        return self.options.retry_backoff  # type: ignore[return-value]

    @property
    def queue(self) -> str:
        """The queue of the job's runs, unless a run names another."""
        return self.options.queue  # type: ignore[return-value]

    @property
    def priority(self) -> int:
        """The priority of the job's runs, unless a run sets another (higher runs first)."""
        return self.options.priority  # type: ignore[return-value]

    @property
    def max_running(self) -> int | None:
        """At most this many runs of the job (per limit key) run at once in the cluster."""
        return None if self.limits is None else self.limits.max_running

    @property
    def rate_limit(self) -> tuple[int, float] | None:
        """At most ``(n, per_seconds)`` starts of the job (per limit key) in the cluster."""
        return None if self.limits is None else self.limits.rate

    @property
    def contract(self) -> JobFunc:
        return self._contract

    @property
    def retry_on(self) -> tuple[str, ...] | None:
        """Names of the exceptions retried (None: any), after instance defaults."""
        return self.options.retry_on  # type: ignore[return-value]

    @property
    def no_retry_on(self) -> tuple[str, ...] | None:
        """Names of the exceptions never retried (None: none), after instance defaults."""
        return self.options.no_retry_on  # type: ignore[return-value]

    def create_run(self, *args: P.args, **kwargs: P.kwargs) -> RunCreator:
        """Start building a run of this job; the same as ``jd.create_run(job, ...)``."""
        return self._owner.create_run(self, *args, **kwargs)

    def args(self, *args: P.args, **kwargs: P.kwargs) -> Args:
        """The arguments of one run for :meth:`create_runs`, type-checked against the job."""
        return Args(*args, **kwargs)

    async def create_runs(
        self, items: Iterable[Args | tuple[Any, ...]], *, conn: Conn | None = None
    ) -> list[int]:
        """Many one-off runs of this job in one insert; see :meth:`JobsD.create_runs`."""
        return await self._owner.create_runs(self, items, conn=conn)

    async def get_run_state(self, run_id: int) -> RunState[R]:
        """The state of a run of this job, its ``result`` typed as the function returns it.

        Raises RunNotFoundError if there is no such run, or it is a run of another job.
        """
        return self._own(await self._owner.get_run_state(run_id))

    async def wait_for_run(self, run_id: int, timeout: Duration | None = None) -> RunState[R]:
        """Wait for a run of this job to finish; see :meth:`JobsD.wait_for_run`."""
        return self._own(await self._owner.wait_for_run(run_id, timeout))

    def _own(self, state: RunState[Any]) -> RunState[R]:
        if state.job != self.name:
            raise RunNotFoundError(f"run {state.run_id} is a run of job {state.job!r}, not of {self.name!r}")
        return state

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.func(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<Job {self.name!r} {self.func!r}>"
