"""A FastAPI app that runs jobs in the background with jobsd_async.

The app's lifespan starts a JobsD instance (``async with JobsD(engine) as jd:``) and keeps
it on ``app.state.jd``; it stops with the app.  Endpoints:

- ``POST /jobs/{name}`` with an optional JSON body ``{"args": [...], "kwargs": {...}}``
  creates a run of job ``name`` and answers ``201 {"run_id": 1}``;
- ``GET /runs/{run_id}`` answers the run's state as JSON.

The database URL comes from ``JOBSD_DATABASE_URL`` (default: ``jobsd_example.db`` in the
current directory).  Run it with::

    pip install fastapi uvicorn
    uvicorn --app-dir examples fastapi_app:app

then ``curl -X POST localhost:8000/jobs/add -H 'content-type: application/json'
-d '{"args": [2, 3]}'`` and ``curl localhost:8000/runs/1``.  Several processes started
this way on one database form a cluster and share the work.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from pydantic import BaseModel, Field
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


class RunArgs(BaseModel):
    """The optional body of ``POST /jobs/{name}``."""

    args: list[Any] = Field(default_factory=list)
    kwargs: dict[str, Any] = Field(default_factory=dict)


def get_jobsd(request: Request) -> JobsD:
    """The app's JobsD instance, started by the lifespan."""
    jd: JobsD = request.app.state.jd
    return jd


JobsDDep = Annotated[JobsD, Depends(get_jobsd)]
router = APIRouter()


@router.post("/jobs/{name}", status_code=201)
async def create_run(name: str, jd: JobsDDep, body: RunArgs | None = None) -> dict[str, int]:
    """Create a run of job ``name``; answer its run id."""
    body = body or RunArgs()
    try:
        run_id = await jd.create_run(name, *body.args, **body.kwargs).run()
    except UnknownJobError as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from exc
    except (JobArgsMismatchError, JobArgsSerializationError) as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from exc
    return {"run_id": run_id}


@router.get("/runs/{run_id}")
async def get_run(run_id: int, jd: JobsDDep) -> dict[str, Any]:
    """The state of run ``run_id`` (the latest row of its chain)."""
    try:
        state = await jd.get_run_state(run_id)
    except RunNotFoundError as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from exc
    return state_json(state)


def create_app(database_url: str | None = None) -> FastAPI:
    """The app; ``database_url`` defaults to ``$JOBSD_DATABASE_URL`` or a local SQLite file."""
    url = database_url or os.environ.get("JOBSD_DATABASE_URL", DEFAULT_DATABASE_URL)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = create_async_engine(url)
        try:
            async with create_jobsd(engine) as jd:
                app.state.jd = jd
                yield
        finally:
            await engine.dispose()  # JobsD never disposes an engine it was given

    app = FastAPI(title="jobsd_async example", lifespan=lifespan)
    app.include_router(router)
    return app


app = create_app()
