"""An aiohttp app that runs jobs in the background with jobsd_async.

The jobs are registered on a module-level ``jd = JobsD(...)``, so their ``Job`` handles
can be imported and are type-checked where they are used.  A ``cleanup_ctx`` builds the
engine when the app starts, gives it to ``jd`` (``jd.use_engine(engine)``) and runs
``async with jd:`` until the app stops; ``jd`` starts again as a new instance with the
next app, on whatever event loop that one runs.  One ``jd`` serves one app at a time.
Endpoints:

- ``POST /jobs/{name}`` with an optional JSON body ``{"args": [...], "kwargs": {...}}``
  creates a run of job ``name`` and answers ``201 {"run_id": 1}``;
- ``GET /runs/{run_id}`` answers the run's state as JSON (with the progress a job reported);
- ``POST /add`` with ``{"a": 2, "b": 3}`` adds the numbers in a run of job ``add`` and
  answers ``{"run_id": 1, "sum": 5}`` once it has finished: the typed handle end to end.

The database URL comes from ``JOBSD_DATABASE_URL`` (default: ``jobsd_example.db`` in the
current directory).  Run it with ``python examples/aiohttp_app.py`` (port 8080).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from sqlalchemy.ext.asyncio import create_async_engine

from jobsd_async import (
    JobArgsMismatchError,
    JobArgsSerializationError,
    JobsD,
    RunInfo,
    RunNotFoundError,
    RunState,
    RunStatus,
    UnknownJobError,
)

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///jobsd_example.db"
ADD_WAIT = 10.0  # seconds POST /add waits for its run before answering 504
DATABASE_URL = web.AppKey("database_url", str)

# No engine yet: the app's cleanup_ctx gives it one (registration must precede up()).
jd = JobsD(poll_interval=1.0)


@jd.job("announce")
async def announce(label: str = "hello") -> str:
    return f"{label}: the time is {datetime.now(UTC):%H:%M:%S} UTC"


@jd.job("add")
def add(a: int, b: int) -> int:  # a plain function runs in a worker thread
    return a + b


@jd.job("sleep")
async def sleep(info: RunInfo, seconds: float) -> float:
    """Sleeps in ten steps, reporting the fraction done (``GET /runs/{run_id}`` shows it)."""
    for step in range(1, 11):
        await asyncio.sleep(seconds / 10)
        await info.set_progress(step / 10)
    return seconds


def state_json(state: RunState) -> dict[str, Any]:
    """The parts of a RunState an API client cares about, JSON-ready."""

    def iso(value: datetime | None) -> str | None:
        return None if value is None else value.isoformat()

    return {
        "run_id": state.run_id,
        "latest_row_id": state.id,
        "job": state.job,
        "status": state.status.value,
        "finished": state.status.finished,
        "attempts": state.run_total_count,
        "successes": state.run_success_count,
        "progress": state.progress,
        "result": state.result,
        "error": state.run_completed_error,
        "created_at": iso(state.created_at),
        "started_at": iso(state.run_started_at),
        "completed_at": iso(state.run_completed_at),
    }


async def jobsd_ctx(app: web.Application) -> AsyncIterator[None]:
    """Run ``jd`` on the app's database for the app's lifetime."""
    engine = create_async_engine(app[DATABASE_URL])
    try:
        jd.use_engine(engine)
        async with jd:
            yield
    finally:
        await engine.dispose()  # JobsD never disposes an engine it was given


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"detail": message}, status=status)


async def _json_object(request: web.Request) -> dict[str, Any] | web.Response:
    """The request's JSON object body ({} without a body), or an error response."""
    if not request.can_read_body:
        return {}
    try:
        body: Any = await request.json()
    except ValueError:
        return _error(400, "the body must be JSON")
    if not isinstance(body, dict):
        return _error(400, "the body must be a JSON object")
    return body


async def create_run(request: web.Request) -> web.Response:
    """Create a run of job ``name`` (checked when submitted); answer its run id."""
    body = await _json_object(request)
    if isinstance(body, web.Response):
        return body
    args = body.get("args", [])
    kwargs = body.get("kwargs", {})
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        return _error(400, '"args" must be a list and "kwargs" an object')
    try:
        run_id = await jd.create_run(request.match_info["name"], *args, **kwargs).run()
    except UnknownJobError as exc:
        return _error(404, str(exc))
    except (JobArgsMismatchError, JobArgsSerializationError) as exc:
        return _error(422, str(exc))
    return web.json_response({"run_id": run_id}, status=201)


async def get_run(request: web.Request) -> web.Response:
    """The state of run ``run_id`` (the latest row of its chain)."""
    try:
        run_id = int(request.match_info["run_id"])
    except ValueError:
        return _error(400, "run_id must be an integer")
    try:
        state = await jd.get_run_state(run_id)
    except RunNotFoundError as exc:
        return _error(404, str(exc))
    return web.json_response(state_json(state))


async def add_in_a_job(request: web.Request) -> web.Response:
    """Add ``a`` and ``b`` in a run of ``add`` and answer the sum once the run has finished."""
    body = await _json_object(request)
    if isinstance(body, web.Response):
        return body
    a, b = body.get("a"), body.get("b")
    if type(a) is not int or type(b) is not int:
        return _error(422, '"a" and "b" must be integers')
    run_id = await add.create_run(a, b).run()  # mypy checks (a: int, b: int)
    try:
        state = await add.wait_for_run(run_id, timeout=ADD_WAIT)  # a RunState[int]
    except TimeoutError:
        return _error(504, f"run {run_id} is still going")
    if state.status is not RunStatus.SUCCEEDED:
        return _error(500, f"run {run_id}: {state.run_completed_error}")
    return web.json_response({"run_id": run_id, "sum": state.result})


def create_app(database_url: str | None = None) -> web.Application:
    """The app; ``database_url`` defaults to ``$JOBSD_DATABASE_URL`` or a local SQLite file."""
    app = web.Application()
    app[DATABASE_URL] = database_url or os.environ.get("JOBSD_DATABASE_URL", DEFAULT_DATABASE_URL)
    app.cleanup_ctx.append(jobsd_ctx)
    app.add_routes(
        [
            web.post("/jobs/{name}", create_run),
            web.get("/runs/{run_id}", get_run),
            web.post("/add", add_in_a_job),
        ]
    )
    return app


if __name__ == "__main__":
    web.run_app(create_app())
