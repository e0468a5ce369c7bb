"""Everything jobsd_async raises.

::

    JobsDError                      root of everything raised by jobsd_async
    ├── JobsDStateError             lifecycle misuse (also a RuntimeError)
    ├── InvalidJobFuncError         not a function or coroutine function (also a TypeError)
    ├── JobArgsMismatchError        arguments do not bind to the signature (also a TypeError)
    ├── JobArgsSerializationError   an argument is not JSON-serializable (also a TypeError)
    ├── UnknownJobError             job not registered here (also a LookupError)
    ├── UnknownScheduleError        schedule not registered here (also a LookupError)
    ├── ScheduleError               a schedule gave an unusable time (also a ValueError)
    ├── RunNotFoundError            no run with that id (also a LookupError)
    ├── RunTimeoutError             recorded as "job run timed out"
    ├── RunKilledError              recorded as "job run killed"
    ├── StoreError                  a database operation failed; wraps the driver error
    └── SchemaError                 tables missing or at another schema version
"""

from __future__ import annotations

__all__ = (
    "InvalidJobFuncError",
    "JobArgsMismatchError",
    "JobArgsSerializationError",
    "JobsDError",
    "JobsDStateError",
    "RunKilledError",
    "RunNotFoundError",
    "RunTimeoutError",
    "ScheduleError",
    "SchemaError",
    "StoreError",
    "UnknownJobError",
    "UnknownScheduleError",
)


class JobsDError(Exception):
    """Root of every exception raised by jobsd_async."""


class JobsDStateError(JobsDError, RuntimeError):
    """Raised when a JobsD instance is used in the wrong lifecycle state."""


class InvalidJobFuncError(JobsDError, TypeError):
    """Raised when a job is registered with something that is not a plain or coroutine function."""


class JobArgsMismatchError(JobsDError, TypeError):
    """Raised when a run's arguments do not bind to its job function's signature."""


class JobArgsSerializationError(JobsDError, TypeError):
    """Raised when a run's argument cannot be stored as JSON."""


class UnknownJobError(JobsDError, LookupError):
    """Raised when a run names a job that is not registered on this instance."""


class UnknownScheduleError(JobsDError, LookupError):
    """Raised when a run names a schedule that is not registered on this instance."""


class ScheduleError(JobsDError, ValueError):
    """Raised when a schedule function returns something that is not a timezone-aware datetime."""


class RunNotFoundError(JobsDError, LookupError):
    """Raised when no run exists with the given run id."""


class RunTimeoutError(JobsDError):
    """Raised into nothing: the error recorded for an attempt that ran past its timeout."""

    def __init__(self, message: str = "job run timed out") -> None:
        super().__init__(message)


class RunKilledError(JobsDError):
    """Raised into nothing: the error recorded for an attempt killed at shutdown."""

    def __init__(self, message: str = "job run killed") -> None:
        super().__init__(message)


class StoreError(JobsDError):
    """Raised when a database operation fails; ``__cause__`` is the driver's error."""


class SchemaError(JobsDError):
    """Raised when the tables are missing, at another schema version, or not as jobsd needs them.

    The message names the versions found and wanted, and the command that fixes it.
    """
