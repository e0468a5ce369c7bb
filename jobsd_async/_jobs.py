"""Jobs: the registered function, its options, and the job-function contract.

A job function is a plain or coroutine function.  When its first parameter is annotated
``RunInfo`` (also as the string ``"RunInfo"``) it receives the attempt's :class:`RunInfo`
first.  Arguments must bind to the rest of its signature and survive a JSON round trip,
because every instance reads them back from the database.
"""

from __future__ import annotations

import contextvars
import functools
import hashlib
import inspect
import typing
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Generic, ParamSpec

from ._config import Backoff, RunOptions
from ._errors import InvalidJobFuncError, JobArgsMismatchError
from ._runs import RunInfo

if TYPE_CHECKING:
    from ._creator import RunCreator

__all__ = ("Args", "Job")

P = ParamSpec("P")


class Args:
    """Positional and keyword arguments of one run, for :meth:`JobsD.create_runs`."""

    __slots__ = ("args", "kwargs")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args
        self.kwargs = kwargs

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

    __slots__ = ("func", "is_async", "signature", "takes_run_info")

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
        try:
            self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise JobArgsMismatchError(
                f"arguments do not match job {job!r}{self.signature}: {exc} "
                f"(args={args!r}, kwargs={kwargs!r})"
            ) from exc

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


class Job(Generic[P]):
    """A registered job.  ``job.create_run(...)`` is type-checked against the function.

    Calling the job calls the function directly, which is handy in tests.
    """

    __slots__ = ("_contract", "_create_run", "func", "name", "options")

    def __init__(
        self,
        name: str,
        func: Callable[..., Any],
        options: RunOptions,
        create_run: Callable[..., RunCreator],
    ) -> None:
        self._contract = JobFunc(name, func)
        self.name = name
        self.func = func
        self.options = options
        self._create_run = create_run

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
    def contract(self) -> JobFunc:
        return self._contract

    def create_run(self, *args: P.args, **kwargs: P.kwargs) -> RunCreator:
        """Start building a run of this job; the same as ``jd.create_run(job, ...)``."""
        return self._create_run(self, *args, **kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.func(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<Job {self.name!r} {self.func!r}>"
