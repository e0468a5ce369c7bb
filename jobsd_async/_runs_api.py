"""The run API of JobsD: create, read, wait for, cancel and prune runs (mixed into JobsD)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, ParamSpec, overload

from ._codec import decode_result
from ._config import Duration, to_seconds
from ._creator import Conn, RunCreator, RunRequest
from ._errors import RunNotFoundError, StoreError, UnknownJobError
from ._jobs import Args, Job
from ._runner import Runner
from ._runs import RunState
from ._store import _cancel, _prune, _read
from ._store._dialect import wrap_errors
from ._store._rows import RunRow, Store
from ._submission import Submitter
from ._waiters import Waiters

P = ParamSpec("P")
_WAIT_POLL_FIRST = 0.005  # seconds before wait_for_run's first re-check, doubling ...
_WAIT_POLL_MAX = 0.25  # ... up to this: checks of a chain finishing unannounced elsewhere
_MAX_ID = 2**63 - 1  # the largest id a BIGINT column holds


class RunsAPI:
    """``create_run``, ``create_runs``, ``get_run_state``, ``wait_for_run``, ``cancel_run`` and
    ``prune``, mixed into JobsD."""

    _jobs: dict[str, Job[Any]]
    _runner: Runner | None
    _waiters: Waiters
    _require_started: Callable[[], Submitter]
    _require_store: Callable[[], Store]

    if TYPE_CHECKING:

        @property
        def instance_id(self) -> int: ...

    @overload
    def create_run(self, job: Job[P, Any], /, *args: P.args, **kwargs: P.kwargs) -> RunCreator: ...

    @overload
    def create_run(self, job: str, /, *args: Any, **kwargs: Any) -> RunCreator: ...

    def create_run(self, job: str | Job[Any], /, *args: Any, **kwargs: Any) -> RunCreator:
        """Start building a run of ``job`` with these arguments; submit it with ``.run()``."""
        return RunCreator(self._submit, RunRequest(job=job, args=args, kwargs=kwargs))

    def _resolve_job(self, job: str | Job[Any]) -> Job[Any]:
        name = job.name if isinstance(job, Job) else job
        found = self._jobs.get(name) if isinstance(name, str) else None
        if found is None or (isinstance(job, Job) and found is not job):
            raise UnknownJobError(f"job {name!r} is not registered on this instance")
        return found

    async def _submit(self, request: RunRequest, conn: Conn | None) -> int:
        submitter = self._require_started()
        return await submitter.one(self._resolve_job(request.job), request, conn)

    @overload
    async def create_runs(
        self, job: Job[P, Any], items: Iterable[tuple[Any, ...] | Args], *, conn: Conn | None = None
    ) -> list[int]: ...

    @overload
    async def create_runs(
        self, job: str, items: Iterable[tuple[Any, ...] | Args], *, conn: Conn | None = None
    ) -> list[int]: ...

    async def create_runs(
        self, job: str | Job[Any], items: Iterable[tuple[Any, ...] | Args], *, conn: Conn | None = None
    ) -> list[int]:
        """Create many one-off runs of ``job`` in one multi-row insert; returns their run ids.

        Each item is a tuple of positional arguments or an ``Args(*args, **kwargs)``;
        ``job.args(...)`` builds an ``Args`` type-checked against the job's parameters.
        Every item is validated like ``create_run`` before anything is written: all or nothing.
        """
        submitter = self._require_started()
        resolved = self._resolve_job(job)
        requests = []
        for item in items:
            if isinstance(item, Args):
                requests.append(RunRequest(job=resolved, args=item.args, kwargs=item.kwargs))
            elif isinstance(item, tuple):
                requests.append(RunRequest(job=resolved, args=item, kwargs={}))
            else:
                raise TypeError(f"each item must be a tuple of arguments or an Args, got {item!r}")
        return await submitter.many(resolved, requests, conn)

    async def get_run_state(self, run_id: int) -> RunState[Any]:
        """The state of the run's chain (its latest row); raises RunNotFoundError.

        Its ``result`` is converted to the job function's return annotation when the job is
        registered here (``job.get_run_state`` types it too).
        """
        store = self._require_store()
        row = await wrap_errors(self._latest(store, _run_id(run_id)), "reading a run")
        if row is None:
            raise RunNotFoundError(f"no run with id {run_id!r}")
        return self._state_of(row)

    async def _latest(self, store: Store, run_id: int) -> RunRow | None:
        if not 0 < run_id <= _MAX_ID:
            return None  # no row can have it; some drivers would fail to even send it
        async with store.dialect.reading() as conn:
            return await _read.latest_of_chain(store, conn, run_id)

    def _state_of(self, row: RunRow) -> RunState[Any]:
        job = self._jobs.get(row.job)
        try:
            if job is None:
                result = decode_result(row.run_result)
            else:
                result = job.contract.codec.decode_result(row.run_result)
        except Exception as exc:  # written by something other than jobsd_async
            raise StoreError(f"the stored result of run {row.run_id} cannot be decoded: {exc!r}") from exc
        return RunState.of_row(row, result, loader=self.get_run_state)

    async def cancel_run(self, run_id: int) -> bool:
        """Cancel the run's chain, wherever it is; False if the chain had already finished.

        A pending row is closed with ``job run cancelled`` and gets no follow-up.  A running
        row gets ``RunInfo.cancel`` on the instance running it (at once here, at once through
        PostgreSQL's NOTIFY elsewhere, else within that instance's ``heartbeat_interval``),
        then a task cancel after ``cancel_grace``; it is recorded as cancelled whatever the
        job does afterwards.
        """
        run_id = _run_id(run_id)
        submitter = self._require_started()
        store = submitter.store
        if not 0 < run_id <= _MAX_ID:
            raise RunNotFoundError(f"no run with id {run_id!r}")
        outcome, flagged = await wrap_errors(
            store.dialect.retrying(lambda conn: _cancel.request_cancel(store, conn, run_id)),
            "cancelling a run",
        )
        if outcome is _cancel.CancelOutcome.NOT_FOUND:
            raise RunNotFoundError(f"no run with id {run_id!r}")
        if outcome is _cancel.CancelOutcome.ALREADY_FINISHED:
            return False
        if flagged is not None and flagged.owner == self.instance_id and self._runner is not None:
            self._runner.cancel_local(flagged.row_id)
        self._waiters.notify([run_id])
        return True

    async def prune(self, older_than: Duration) -> int:
        """Delete chains that finished more than ``older_than`` ago; returns the rows deleted.

        Works in bounded batches of short transactions.  Never deletes a pending or running
        row, nor any row of a chain that is still live; also deletes the rows of instances
        that are dead (by the resurrector's rule) and were last seen before the cut-off.
        """
        store = self._require_store()
        seconds = to_seconds("older_than", older_than)
        assert seconds is not None
        return await wrap_errors(_prune.prune(store, older_than=seconds), "pruning")

    async def wait_for_run(self, run_id: int, timeout: Duration | None = None) -> RunState[Any]:
        """Wait until the run's chain has finished; raises TimeoutError after ``timeout``."""
        run_id = _run_id(run_id)
        seconds = to_seconds("timeout", timeout, allow_none=True)
        pause = _WAIT_POLL_FIRST
        final: RunRow | None = None
        read_anyway = False
        async with asyncio.timeout(seconds):
            while True:
                state: RunState[Any] | None = None
                if final is not None:
                    state = self._state_of(final)
                elif read_anyway or self._runner is None or not self._runner.runs_here(run_id):
                    state = await self.get_run_state(run_id)
                # (Else its attempt runs here: its completion, written here, brings the news,
                # and there is nothing to read yet.  The check and the registration of the
                # wait below happen in one step of the event loop: no completion between.)
                if state is not None and state.status.finished:
                    return state
                # News of this chain written here (or, on PostgreSQL, announced by another
                # instance) wakes us at once, with the chain's last row if it ended here;
                # anything else is noticed by the re-check, at growing intervals.
                news, final = await self._waiters.wait(run_id, pause)
                # While its attempt runs here, read all the same once the re-checks are as far
                # apart as they get: it may have been taken over and finished elsewhere.
                # (News without the row is no reason: on PostgreSQL this instance's own
                # announcement may arrive before its completion's answer.)
                read_anyway = not news and pause >= _WAIT_POLL_MAX
                pause = min(pause * 2, _WAIT_POLL_MAX)


def _run_id(run_id: object) -> int:
    """A run id as the API takes it (SPEC §6.1): an int, and not a bool."""
    if not isinstance(run_id, int) or isinstance(run_id, bool):
        raise TypeError(f"run_id must be an int, got {run_id!r} ({type(run_id).__name__})")
    return run_id
