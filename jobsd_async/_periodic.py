"""Periodic jobs: a job registered with ``periodic=`` has exactly one live chain in the cluster.

The chain is a run with the unique name ``periodic:{job}``; its row carries the
*definition*: the schedule, the arguments and the job's options (timeout, retry limits,
backoff, retry policy).  For each job one instance reconciles: the newest live instance
with workers that registered the job (see ``_store._periodic.reconcilers``), so during a
rolling deploy the newest code decides.  It does so at ``up()`` and every
``timeout_check``:

- no live chain, and the code declares the job periodic: create it, due at the
  schedule's next tick;
- a pending row whose definition differs from the code: rewrite that row in place (its
  due time recomputed when the schedule changed);
- a pending row of a job the code no longer declares periodic: close it as cancelled.

A running attempt is never interrupted.  When the reconciling instance records how it
ended, the follow-up follows the code (or the chain ends); a follow-up written by another
instance (an older release, say) is set right by the next pass.

Why this is race-safe: the unique name lets at most one row of ``periodic:{job}`` be open
at any time, so instances creating the chain at once insert one row between them (the
others get its id back); rewriting or closing a row is an UPDATE conditioned on the row
still being pending, so a claim racing it wins or loses cleanly; and two instances that
both believe they reconcile (one started a moment ago) write the same values when they
run the same code, or converge at the next pass, which only the newest does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from ._config import MAX_NAME_LENGTH, Config
from ._creator import PERIODIC_PREFIX as PREFIX
from ._creator import RunRequest
from ._errors import JobArgsMismatchError
from ._jobs import Args
from ._schedules import BuiltinSchedule, next_tick
from ._store import _periodic
from ._store._dialect import wrap_errors
from ._store._rows import RunRow, Store

if TYPE_CHECKING:
    from ._dispatcher import Dispatcher
    from ._jobs import Job, JobFunc
    from ._submission import Submitter

# What a periodic chain's row holds from its declaration (the rest is the chain's state).
DEFINITION = (
    "job_args",
    "job_kwargs",
    "schedule",
    "run_success_limit",
    "run_timeout",
    "retries_on_error_limit",
    "retries_on_timeout_limit",
    "retry_backoff",
    "retry_backoff_cap",
    "retry_policy",
    "queue",
    "priority",
)


def chain_name(job: str) -> str:
    """The unique name of ``job``'s periodic chain."""
    return PREFIX + job


@dataclasses.dataclass(frozen=True, slots=True)
class Periodic:
    """A job's periodic declaration: its schedule and the arguments of every run."""

    schedule: BuiltinSchedule
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)

    def request(self, job: Job[Any]) -> RunRequest:
        """The creation of the chain, as ``create_run(...).unique(...).schedule(...)`` does it."""
        return RunRequest(
            job=job,
            args=self.args,
            kwargs=self.kwargs,
            unique=chain_name(job.name),
            schedule=self.schedule.spec,
        )


def declare(name: str, contract: JobFunc, schedule: object, args: object) -> Periodic | None:
    """Validate ``periodic=`` and ``periodic_args=`` of job ``name``; None if not periodic.

    Raises TypeError/ValueError for a wrong value, JobArgsMismatchError when the arguments
    do not bind (a job with required parameters needs ``periodic_args``) and
    JobArgsSerializationError when one has no JSON form.
    """
    if schedule is None:
        if args is not None:
            raise ValueError(f"job {name!r}: periodic_args needs periodic= (a schedule) too")
        return None
    if not isinstance(schedule, BuiltinSchedule):
        raise TypeError(
            f"periodic of job {name!r} must be a built-in schedule, every(...) or cron(...), got {schedule!r}"
        )
    if len(chain_name(name)) > MAX_NAME_LENGTH:
        raise ValueError(
            f"a periodic job's name must be at most {MAX_NAME_LENGTH - len(PREFIX)} characters, "
            f"got {len(name)}"
        )
    if args is None:
        positional: tuple[Any, ...] = ()
        keywords: dict[str, Any] = {}
    elif isinstance(args, Args):
        positional, keywords = args.args, dict(args.kwargs)
    elif isinstance(args, tuple):
        positional, keywords = args, {}
    else:
        raise TypeError(f"periodic_args of job {name!r} must be an Args(...) or a tuple, got {args!r}")
    try:
        contract.check_args(name, positional, keywords)
    except JobArgsMismatchError as exc:
        if args is None:
            raise JobArgsMismatchError(
                f"periodic job {name!r} takes parameters {contract.signature}: give its "
                "arguments as periodic_args=Args(...)"
            ) from exc
        raise
    contract.codec.encode(positional, keywords)  # JobArgsSerializationError, before up()
    return Periodic(schedule, positional, keywords)


class Reconciler:
    """Keeps the periodic chains of the jobs this instance reconciles as the code declares."""

    def __init__(
        self,
        *,
        config: Config,
        store: Store,
        instance_id: int,
        jobs: Mapping[str, Job[Any]],
        submitter: Submitter,
        dispatcher: Dispatcher,
        on_chain_change: Callable[[Iterable[int]], None],
    ) -> None:
        self._store = store
        self._id = instance_id
        self._jobs = jobs
        self._submitter = submitter
        self._dispatcher = dispatcher
        self._on_chain_change = on_chain_change
        self._log = config.logger
        self._extra = {"instance_id": instance_id}
        self.active = config.workers > 0  # an instance that only creates runs never reconciles
        self.leading: frozenset[str] = frozenset()  # the jobs this instance reconciles

    async def reconcile(self) -> None:
        """One pass: create, rewrite or end the periodic chains of the jobs this instance leads."""
        if not self.active:
            return
        store = self._store
        async with store.dialect.reading(patient=True) as conn:
            chosen = await _periodic.reconcilers(store, conn)
            self.leading = frozenset(job for job in self._jobs if chosen.get(job) == self._id)
            chains = await _periodic.live_chains(store, conn, [chain_name(job) for job in self.leading])
        for job_name in sorted(self.leading):
            job = self._jobs[job_name]
            row = chains.get(chain_name(job_name))
            declared = job._periodic
            if declared is None:
                if row is not None and row.run_started_at is None:
                    await self._end(row)
            elif row is None:
                await self._create(job, declared)
            elif row.run_started_at is None:
                await self._redefine(job, declared, row)

    def revise(self, row: RunRow) -> RunRow | None:
        """``row`` as the code defines it, for planning its follow-up; None: its chain ends.

        Only rows of periodic chains this instance reconciles change; others come back as
        they are.
        """
        job = self._jobs.get(row.job)
        if job is None or row.job not in self.leading or row.name != chain_name(row.job):
            return row
        declared = job._periodic
        if declared is None:
            return None
        return row._replace(**self._definition(job, declared))

    def _definition(self, job: Job[Any], declared: Periodic) -> dict[str, Any]:
        """The definition columns of ``job``'s chain, as its creation would write them."""
        values, _ = self._submitter.first_row(job, declared.request(job))
        return {key: values[key] for key in DEFINITION}

    async def _create(self, job: Job[Any], declared: Periodic) -> None:
        run_id = await self._submitter.one(job, declared.request(job), None)
        self._log.info(
            "jobsd: periodic job %r: chain %s on %s",
            job.name,
            run_id,
            declared.schedule.spec,
            extra={**self._extra, "run_id": run_id, "job": job.name},
        )

    async def _redefine(self, job: Job[Any], declared: Periodic, row: RunRow) -> None:
        wanted = self._definition(job, declared)
        current = {key: getattr(row, key) for key in DEFINITION}
        if current == wanted:
            return
        values = dict(wanted)
        due = row.run_at
        if row.schedule != wanted["schedule"]:
            due = next_tick(declared.schedule.spec, declared.schedule, self._submitter.clock.now())
            values["run_at"] = due
        store = self._store
        done = await wrap_errors(
            store.dialect.retrying(lambda conn: _periodic.redefine_pending(store, conn, row.id, values)),
            "updating a periodic chain",
        )
        if not done:
            return  # claimed meanwhile: its follow-up is planned from the code (or fixed next pass)
        if self._dispatcher.is_runnable_here(job.name):
            self._dispatcher.enqueue(row.id, due)
        changed = sorted(key for key in DEFINITION if current[key] != wanted[key])
        self._log.info(
            "jobsd: periodic job %r: chain %s now follows the code (%s; changed: %s)",
            job.name,
            row.run_id,
            _describe_schedule(row.schedule, wanted["schedule"]),
            ", ".join(changed),
            extra={**self._extra, "run_id": row.run_id, "job": job.name},
        )

    async def _end(self, row: RunRow) -> None:
        store = self._store
        done = await wrap_errors(
            store.dialect.retrying(lambda conn: _periodic.end_pending(store, conn, row.id)),
            "ending a periodic chain",
        )
        if done:
            self._on_chain_change([row.run_id])
            self._log.info(
                "jobsd: periodic job %r is no longer declared periodic: chain %s cancelled",
                row.job,
                row.run_id,
                extra={**self._extra, "run_id": row.run_id, "job": row.job},
            )


def _describe_schedule(old: str | None, new: str) -> str:
    return f"schedule {new}" if old == new else f"schedule {old} -> {new}"
