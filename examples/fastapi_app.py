"""A FastAPI app that runs jobs in the background with jobsd_async.

The jobs are registered on a module-level ``jd = JobsD(...)``, so their ``Job`` handles
can be imported and are type-checked where they are used.  The app's lifespan builds the
engine, gives it to ``jd`` (``jd.use_engine(engine)``) and runs ``async with jd:`` while
the app runs; ``jd`` starts again as a new instance in the next lifespan (another app
built by ``create_app``, another test client), on whatever event loop that one runs.  One
``jd`` serves one app at a time.  Endpoints:

- ``POST /jobs/{name}`` with an optional JSON body ``{"args": [...], "kwargs": {...}}``
  creates a run of job ``name`` and answers ``201 {"run_id": 1}``;
- ``GET /runs/{run_id}`` answers the run's state as JSON (with the progress a job reported);
- ``POST /add`` with ``{"a": 2, "b": 3}`` adds the numbers in a run of job ``add`` and
  answers ``{"run_id": 1, "sum": 5}`` once it has finished: the typed handle end to end.

The database URL comes from ``JOBSD_DATABASE_URL`` (default: ``jobsd_example.db`` in the
current directory).  Run it with::

    pip install fastapi uvicorn
    uvicorn --app-dir examples fastapi_app:app

then ``curl -X POST localhost:8000/add -H 'content-type: application/json'
-d '{"a": 2, "b": 3}'``, or ``curl -X POST localhost:8000/jobs/sleep -H 'content-type:
application/json' -d '{"args": [10]}'`` and ``curl localhost:8000/runs/RUN_ID`` (with the
run id it answered) to watch its progress.  Several processes started this way on one
database form a cluster and share the work.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, FastAPI, HTTPException
from pydantic import BaseModel, Field
from sqlalchemy.ext.asyncio import create_async_engine

from jobsd_async import (
    JobArgsMismatchError,
    JobArgsSerializationError,
    JobsD,
    Retry,
    RunInfo,
    RunNotFoundError,
    RunState,
    RunStatus,
    UnknownJobError,
)

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///jobsd_example.db"
ADD_WAIT = 10.0  # seconds POST /add waits for its run before answering 504

# No engine yet: the lifespan gives it one (registration must precede up()).
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


@jd.job("deliver", retries_error_limit=5)
async def deliver(info: RunInfo, message: str, busy_attempts: int = 1) -> str:
    """Delivers ``message`` to a pretend service that is busy for the first
    ``busy_attempts`` attempts; the job asks to be retried a moment later."""
    if info.run_total_count <= busy_attempts:
        raise Retry("the service is busy", after=0.5)  # counts against retries_error_limit
    return f"delivered {message!r} on attempt {info.run_total_count}"


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


class RunArgs(BaseModel):
    """The optional body of ``POST /jobs/{name}``."""

    args: list[Any] = Field(default_factory=list)
    kwargs: dict[str, Any] = Field(default_factory=dict)


class Addends(BaseModel):
    """The body of ``POST /add``."""

    a: int
    b: int


class Sum(BaseModel):
    """The answer of ``POST /add``."""

    run_id: int
    sum: int


router = APIRouter()


@router.post("/jobs/{name}", status_code=201)
async def create_run(name: str, body: RunArgs | None = None) -> dict[str, int]:
    """Create a run of job ``name`` (checked when submitted); answer its run id."""
    body = body or RunArgs()
    try:
        run_id = await jd.create_run(name, *body.args, **body.kwargs).run()
    except UnknownJobError as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from exc
    except (JobArgsMismatchError, JobArgsSerializationError) as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from exc
    return {"run_id": run_id}


@router.get("/runs/{run_id}")
async def get_run(run_id: int) -> dict[str, Any]:
    """The state of run ``run_id`` (the latest row of its chain)."""
    try:
        state = await jd.get_run_state(run_id)
    except RunNotFoundError as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from exc
    return state_json(state)


@router.post("/add")
async def add_in_a_job(addends: Addends) -> Sum:
    """Add ``a`` and ``b`` in a run of ``add`` and answer the sum once the run has finished."""
    run_id = await add.create_run(addends.a, addends.b).run()  # mypy checks (a: int, b: int)
    try:
        state = await add.wait_for_run(run_id, timeout=ADD_WAIT)  # a RunState[int]
    except TimeoutError as exc:
        raise HTTPException(status_code=504, detail=f"run {run_id} is still going") from exc
    if state.status is not RunStatus.SUCCEEDED:
        raise HTTPException(status_code=500, detail=f"run {run_id}: {state.run_completed_error}")
    return Sum(run_id=run_id, sum=state.result)


def create_app(database_url: str | None = None) -> FastAPI:
    """The app; ``database_url`` defaults to ``$JOBSD_DATABASE_URL`` or a local SQLite file."""
    url = database_url or os.environ.get("JOBSD_DATABASE_URL", DEFAULT_DATABASE_URL)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = create_async_engine(url)
        try:
            jd.use_engine(engine)
            async with jd:
                yield
        finally:
            await engine.dispose()  # JobsD never disposes an engine it was given

    app = FastAPI(title="jobsd_async example", lifespan=lifespan)
    app.include_router(router)
    return app


app = create_app()
