"""Testing code that uses jobsd_async, on a real database (SQLite is enough), never a fake.

- :func:`drain` runs what is due on a started instance until nothing due is left and
  returns the final states of the chains it ran;
- :func:`enqueued`, :func:`assert_enqueued` and :func:`refute_enqueued` look at the
  pending runs, by job, arguments, unique name and due time;
- :func:`run_job` runs one attempt of a job now, on this instance, with a real ``RunInfo``
  (a real row: progress, cancellation and the completion all work), and returns its state.

Fixtures for pytest live in ``jobsd_async.testing.plugin``
(``pytest_plugins = ["jobsd_async.testing.plugin"]``).  See docs/testing.md.
"""

from __future__ import annotations

import asyncio
import weakref
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ParamSpec, TypeVar

from sqlalchemy import and_, or_, select, update

from .._codec import parse_args
from .._config import Duration, RunOptions, to_seconds
from .._creator import RunRequest
from .._errors import JobsDStateError
from .._jobs import Job
from .._jobsd import JobsD
from .._runner import Runner
from .._runs import RunState
from .._store._rows import RunRow, Store

__all__ = ("Enqueued", "assert_enqueued", "drain", "enqueued", "refute_enqueued", "run_job")

P = ParamSpec("P")
R = TypeVar("R")

_DRAIN_TIMEOUT = 30.0
_RECHECK = 0.05  # seconds between re-reads while waiting for rows this instance runs
# JobsD -> (its instance id, the database time its last drain ended): an instance id is
# new at every up(), so the marker of an earlier start never applies.
_last_drain: weakref.WeakKeyDictionary[JobsD, tuple[int, datetime]] = weakref.WeakKeyDictionary()


@dataclass(frozen=True, slots=True)
class Enqueued:
    """A pending run (its chain's row that has not started), with its decoded arguments."""

    run_id: int
    row_id: int
    job: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    name: str
    run_at: datetime
    schedule: str | None

    def __repr__(self) -> str:
        parts = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        return f"<Enqueued run {self.run_id}: {self.job}({', '.join(parts)}) at {self.run_at.isoformat()}>"


def _started(jd: JobsD, what: str) -> tuple[Store, Runner]:
    store, runner = jd._store, jd._runner
    if store is None or runner is None or not jd.is_running:
        raise JobsDStateError(f"{what}() needs a started JobsD: `async with jd:` or `await jd.up()` first")
    return store, runner


def _name_of(job: str | Job[Any, Any]) -> str:
    return job.name if isinstance(job, Job) else job


# ------------------------------------------------------------------------------ enqueued


async def enqueued(jd: JobsD, job: str | Job[Any, Any] | None = None) -> list[Enqueued]:
    """The pending runs (of ``job``, if given), oldest first, arguments decoded as the job
    declares them (as JSON values for jobs not registered on ``jd``)."""
    store, _ = _started(jd, "enqueued")
    runs = store.runs
    stmt = select(runs).where(runs.c.run_started_at.is_(None), runs.c.run_completed_at.is_(None))
    if job is not None:
        stmt = stmt.where(runs.c.job == _name_of(job))
    async with store.dialect.reading() as conn:
        rows = [RunRow.of(m) for m in (await conn.execute(stmt.order_by(runs.c.id))).mappings()]
    return [_enqueued(jd, row) for row in rows]


def _enqueued(jd: JobsD, row: RunRow) -> Enqueued:
    registered = jd._jobs.get(row.job)
    if registered is not None:
        args, kwargs = registered.contract.codec.decode(row.job_args, row.job_kwargs, lambda _: None)
    else:  # a job of another service: its JSON values
        args, kwargs = parse_args(row.job_args, row.job_kwargs)
    return Enqueued(
        run_id=row.run_id,
        row_id=row.id,
        job=row.job,
        args=args,
        kwargs=kwargs,
        name=row.name,
        run_at=row.run_at,
        schedule=row.schedule,
    )


def _matches(
    run: Enqueued,
    args: tuple[Any, ...] | None,
    kwargs: dict[str, Any] | None,
    unique: str | None,
    run_at: datetime | None,
    tolerance: float,
) -> bool:
    return (
        (args is None or run.args == tuple(args))
        and (kwargs is None or run.kwargs == kwargs)
        and (unique is None or run.name == unique)
        and (run_at is None or abs((run.run_at - run_at).total_seconds()) <= tolerance)
    )


async def assert_enqueued(
    jd: JobsD,
    job: str | Job[Any, Any],
    *,
    args: tuple[Any, ...] | None = None,
    kwargs: dict[str, Any] | None = None,
    unique: str | None = None,
    run_at: datetime | None = None,
    tolerance: Duration = 1.0,
) -> Enqueued:
    """Assert that a pending run of ``job`` matches everything given; return it.

    ``args``/``kwargs`` compare with the decoded arguments (``==``), ``unique`` with the
    chain's name, ``run_at`` with its due time within ``tolerance`` seconds.  The
    AssertionError lists what is enqueued for the job.
    """
    seconds = to_seconds("tolerance", tolerance)
    assert seconds is not None
    pending = await enqueued(jd, job)
    for run in pending:
        if _matches(run, args, kwargs, unique, run_at, seconds):
            return run
    wanted = _describe(args, kwargs, unique, run_at)
    listed = "\n".join(f"  {run!r}" for run in pending) or "  (nothing)"
    raise AssertionError(f"no pending run of {_name_of(job)!r} matches {wanted}; enqueued:\n{listed}")


async def refute_enqueued(
    jd: JobsD,
    job: str | Job[Any, Any],
    *,
    args: tuple[Any, ...] | None = None,
    kwargs: dict[str, Any] | None = None,
    unique: str | None = None,
    run_at: datetime | None = None,
    tolerance: Duration = 1.0,
) -> None:
    """Assert that no pending run of ``job`` matches everything given."""
    seconds = to_seconds("tolerance", tolerance)
    assert seconds is not None
    found = [r for r in await enqueued(jd, job) if _matches(r, args, kwargs, unique, run_at, seconds)]
    if found:
        wanted = _describe(args, kwargs, unique, run_at)
        raise AssertionError(f"expected no pending run of {_name_of(job)!r} matching {wanted}, found {found}")


def _describe(
    args: tuple[Any, ...] | None, kwargs: dict[str, Any] | None, unique: str | None, run_at: datetime | None
) -> str:
    given = {"args": args, "kwargs": kwargs, "unique": unique, "run_at": run_at}
    return ", ".join(f"{k}={v!r}" for k, v in given.items() if v is not None) or "anything"


# ------------------------------------------------------------------------------ drain


async def drain(
    jd: JobsD,
    *,
    with_scheduled: bool = False,
    timeout: Duration | None = _DRAIN_TIMEOUT,
) -> list[RunState[Any]]:
    """Run everything due on ``jd`` until nothing due is left; the final states of the chains run.

    It waits for the runs due now of the jobs ``jd`` runs (and those it is running), then
    for what they made due in turn (retries, runs the jobs created), until none is left.
    The chains returned are those it waited for and those ``jd`` ran since its previous
    ``drain`` (or since ``up()``): a run created just before, which may have finished
    before ``drain`` looked, is among them.
    With ``with_scheduled``, runs due later are made due now first: every pending run once,
    and the pending retries of one-off runs each round (a schedule's next occurrence is not
    pulled forward again, so a recurring chain runs once).  Raises TimeoutError after
    ``timeout`` seconds (None: no limit), and JobsDStateError for an instance with no workers.
    """
    store, runner = _started(jd, "drain")
    if jd._config.workers == 0:
        raise JobsDStateError("drain() needs an instance with workers (this one has workers=0)")
    jobs = list(jd._jobs)
    seen: dict[int, None] = {}
    async with asyncio.timeout(to_seconds("timeout", timeout, allow_none=True)):
        first = True
        while jobs:
            if with_scheduled:
                await _pull_forward(store, jobs, only_one_off=not first)
            first = False
            rows = await _due_or_running(store, jobs, jd.instance_id)
            if not rows:
                break
            for row_id, run_id, run_at, started in rows:
                seen.setdefault(run_id, None)
                if not started:
                    runner.dispatcher.enqueue(row_id, run_at)
            await _finished(jd, store, [r[0] for r in rows], [r[1] for r in rows])
    for run_id in await _ran_here_since_last_drain(jd, store, jobs):
        seen.setdefault(run_id, None)
    return [await jd.get_run_state(run_id) for run_id in seen]


async def _ran_here_since_last_drain(jd: JobsD, store: Store, jobs: list[str]) -> list[int]:
    """Run ids of the chains of ``jobs`` with an attempt ``jd`` ran and completed since the
    previous drain of this instance (or since ``up()``); marks now as the last drain."""
    runs = store.runs
    async with store.dialect.reading() as conn:
        now = (await conn.execute(select(store.dialect.now()))).scalar_one()
        since = _last_drain.get(jd)
        stmt = select(runs.c.id, runs.c.origin_id).where(
            runs.c.run_started_by == jd.instance_id,
            runs.c.job.in_(jobs),
            runs.c.run_completed_at <= now,
        )
        if since is not None and since[0] == jd.instance_id:
            stmt = stmt.where(runs.c.run_completed_at > since[1])
        found = (await conn.execute(stmt.order_by(runs.c.id))).all()
    _last_drain[jd] = (jd.instance_id, now)
    return [row.origin_id or row.id for row in found]


async def _pull_forward(store: Store, jobs: list[str], *, only_one_off: bool) -> None:
    runs = store.runs
    pending = and_(runs.c.run_started_at.is_(None), runs.c.run_completed_at.is_(None), runs.c.job.in_(jobs))
    if only_one_off:
        pending = and_(pending, runs.c.schedule.is_(None))
    now = store.dialect.now()
    await store.dialect.retrying(
        lambda conn: conn.execute(update(runs).where(pending, runs.c.run_at > now).values(run_at=now))
    )


async def _due_or_running(
    store: Store, jobs: list[str], instance_id: int
) -> list[tuple[int, int, datetime, bool]]:
    """(row id, run id, due, started) of the rows due now of ``jobs`` and those running here."""
    runs = store.runs
    due = and_(runs.c.run_started_at.is_(None), runs.c.run_at <= store.dialect.now())
    running_here = runs.c.run_started_by == instance_id
    stmt = (
        select(runs.c.id, runs.c.origin_id, runs.c.run_at, runs.c.run_started_at)
        .where(runs.c.run_completed_at.is_(None), runs.c.job.in_(jobs), or_(due, running_here))
        .order_by(runs.c.run_at, runs.c.id)
    )
    async with store.dialect.reading() as conn:
        found = (await conn.execute(stmt)).all()
    return [(row.id, row.origin_id or row.id, row.run_at, row.run_started_at is not None) for row in found]


async def _finished(jd: JobsD, store: Store, row_ids: list[int], run_ids: list[int]) -> None:
    """Wait until every row of ``row_ids`` has completed (woken by this instance's completions)."""
    runs = store.runs
    waiting = set(row_ids)
    while waiting:
        stmt = select(runs.c.id).where(runs.c.id.in_(waiting), runs.c.run_completed_at.is_(None))
        async with store.dialect.reading() as conn:
            waiting = {row.id for row in await conn.execute(stmt)}
        if waiting:
            await _any_news(jd, run_ids)


async def _any_news(jd: JobsD, run_ids: list[int]) -> None:
    waits = [asyncio.ensure_future(jd._waiters.wait(run_id, _RECHECK)) for run_id in dict.fromkeys(run_ids)]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()


# ------------------------------------------------------------------------------ run_job


async def run_job(jd: JobsD, job: Job[P, R], /, *args: P.args, **kwargs: P.kwargs) -> RunState[R]:
    """Run one attempt of ``job`` now, on ``jd``, and return its final state.

    The run is a real row, inserted already started by ``jd`` (no other instance can take
    it), with no retries; the job gets a real ``RunInfo`` (its progress reports, its
    ``cancel`` event and its completion all work) and runs in one of ``jd``'s worker slots.
    The arguments are validated as ``create_run`` validates them.  Where the database
    cannot insert and return the row at once (MySQL), the run is submitted due now instead.
    """
    _started(jd, "run_job")
    submitter = jd._require_started()
    resolved = jd._resolve_job(job)
    options = RunOptions.parse(retries_error_limit=0, retries_timeout_limit=0)
    request = RunRequest(job=resolved, args=args, kwargs=kwargs, options=options)
    if jd._config.workers == 0:
        raise JobsDStateError("run_job() needs an instance with workers (this one has workers=0)")
    run_id = await submitter.start_here(resolved, request)
    if run_id is None:  # no free slot now, or no RETURNING: claimed here (or elsewhere) as usual
        run_id = await submitter.one(resolved, request, None)
    return await job.wait_for_run(run_id)
