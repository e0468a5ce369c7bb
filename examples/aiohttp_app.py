"""An aiohttp app that runs jobs in the background with jobsd_async.

A ``cleanup_ctx`` starts a JobsD instance (``async with JobsD(engine) as jd:``) with the
app and stops it with the app; handlers find it at ``request.app[JOBSD]``.  Endpoints:

- ``POST /jobs/{name}`` with an optional JSON body ``{"args": [...], "kwargs": {...}}``
  creates a run of job ``name`` and answers ``201 {"run_id": 1}``;
- ``GET /runs/{run_id}`` answers the run's state as JSON.

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
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from jobsd_async import (
    JobArgsMismatchError,
    JobArgsSerializationError,
    JobsD,
    RunNotFoundError,
    RunState,
    UnknownJobError,
)

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///jobsd_example.db"
JOBSD = web.AppKey("jobsd", JobsD)
DATABASE_URL = web.AppKey("database_url", str)


def create_jobsd(engine: AsyncEngine) -> JobsD:
    """A JobsD instance with this app's jobs registered (registration must precede up())."""
    jd = JobsD(engine, poll_interval=1.0)

    @jd.job("announce")
    async def announce(label: str = "hello") -> str:
        return f"{label}: the time is {datetime.now(UTC):%H:%M:%S} UTC"

    @jd.job("add")
    def add(a: int, b: int) -> int:  # a plain function runs in a worker thread
        return a + b

    @jd.job("sleep")
    async def sleep(seconds: float) -> float:
        await asyncio.sleep(seconds)
        return seconds

    return jd


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
        "result": state.result,
        "error": state.run_completed_error,
        "created_at": iso(state.created_at),
        "started_at": iso(state.run_started_at),
        "completed_at": iso(state.run_completed_at),
    }


async def jobsd_ctx(app: web.Application) -> AsyncIterator[None]:
    """Run a JobsD instance for the app's lifetime."""
    engine = create_async_engine(app[DATABASE_URL])
    try:
        async with create_jobsd(engine) as jd:
            app[JOBSD] = jd
            yield
    finally:
        await engine.dispose()  # JobsD never disposes an engine it was given


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"detail": message}, status=status)


async def create_run(request: web.Request) -> web.Response:
    """Create a run of job ``name``; answer its run id."""
    jd = request.app[JOBSD]
    body: Any = {}
    if request.can_read_body:
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "the body must be JSON")
    if not isinstance(body, dict):
        return _error(400, "the body must be a JSON object")
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
    jd = request.app[JOBSD]
    try:
        run_id = int(request.match_info["run_id"])
    except ValueError:
        return _error(400, "run_id must be an integer")
    try:
        state = await jd.get_run_state(run_id)
    except RunNotFoundError as exc:
        return _error(404, str(exc))
    return web.json_response(state_json(state))


def create_app(database_url: str | None = None) -> web.Application:
    """The app; ``database_url`` defaults to ``$JOBSD_DATABASE_URL`` or a local SQLite file."""
    app = web.Application()
    app[DATABASE_URL] = database_url or os.environ.get("JOBSD_DATABASE_URL", DEFAULT_DATABASE_URL)
    app.cleanup_ctx.append(jobsd_ctx)
    app.add_routes([web.post("/jobs/{name}", create_run), web.get("/runs/{run_id}", get_run)])
    return app


if __name__ == "__main__":
    web.run_app(create_app())
