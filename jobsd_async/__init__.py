"""jobsd_async: an asyncio-native, database-backed, distributed job framework.

A database table is the queue, every job run is a row, and every instance sharing the
database competes for the rows.  Start with ``async with JobsD(engine) as jd:``.
"""

from ._config import Backoff, Duration
from ._creator import RunCreator
from ._errors import (
    InvalidJobFuncError,
    JobArgsMismatchError,
    JobArgsSerializationError,
    JobsDError,
    JobsDStateError,
    RunKilledError,
    RunNotFoundError,
    RunTimeoutError,
    ScheduleError,
    SchemaError,
    StoreError,
    UnknownJobError,
    UnknownScheduleError,
)
from ._jobs import Args, Job
from ._jobsd import JobsD
from ._logs import JsonFormatter
from ._retry import Retry, RetryIf
from ._runs import InstanceInfo, RunInfo, RunState, RunStatus
from ._schedules import BuiltinSchedule, ScheduleFunc, cron, every
from ._store._queues import QueueInfo
from ._worker import run_worker

__version__ = "0.2.0.dev0"
"""The version of the installed jobsd_async."""

__all__ = (
    "Args",
    "Backoff",
    "BuiltinSchedule",
    "Duration",
    "InstanceInfo",
    "InvalidJobFuncError",
    "Job",
    "JobArgsMismatchError",
    "JobArgsSerializationError",
    "JobsD",
    "JobsDError",
    "JobsDStateError",
    "JsonFormatter",
    "QueueInfo",
    "Retry",
    "RetryIf",
    "RunCreator",
    "RunInfo",
    "RunKilledError",
    "RunNotFoundError",
    "RunState",
    "RunStatus",
    "RunTimeoutError",
    "ScheduleError",
    "ScheduleFunc",
    "SchemaError",
    "StoreError",
    "UnknownJobError",
    "UnknownScheduleError",
    "__version__",
    "cron",
    "every",
    "run_worker",
)
