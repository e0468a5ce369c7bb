"""The resurrector: every ``timeout_check``, take over runs whose attempt can no longer end.

A running row is resurrected when its ``run_timeout_at`` has passed by the database clock,
or when its owner has not been seen for three of its heartbeat intervals, or has shut down
without closing it.  It is completed as timed out and gets its follow-up exactly as a local
timeout would, so unique names are handed over or freed and recurring chains continue.
Every instance resurrects; the conditional completion lets exactly one of them win a row.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from ._attempt import Ending
from ._chain import Outcome
from ._completer import Completer
from ._config import Config
from ._signal import wait_event
from ._store import _resurrect
from ._store._dialect import DRIVER_ERRORS
from ._store._instances import Counters
from ._store._rows import Store


class Resurrector:
    def __init__(
        self,
        *,
        config: Config,
        store: Store,
        completer: Completer,
        counters: Counters,
        instance_id: int,
        is_running_here: Callable[[int], bool],
        stop: asyncio.Event,
    ) -> None:
        self._config = config
        self._store = store
        self._completer = completer
        self._counters = counters
        self._id = instance_id
        self._is_running_here = is_running_here
        self._stop = stop
        self._log = config.logger

    async def loop(self) -> None:
        """Scan every ``timeout_check`` until ``stop`` is set."""
        while not self._stop.is_set():
            try:
                await self.pass_once()
            except DRIVER_ERRORS as exc:
                self._log.warning("jobsd: timeout check failed: %s", exc, extra={"instance_id": self._id})
            await wait_event(self._stop, self._config.timeout_check)

    async def pass_once(self) -> int:
        """One scan; returns how many rows this instance resurrected."""
        async with self._store.dialect.reading() as conn:
            rows = await _resurrect.find_orphans(
                self._store,
                conn,
                schedules=self._completer.schedule_names,
                limit=self._config.poll_limit,
                instance_id=self._id,
                own_grace=self._config.heartbeat_interval,
            )
        ending = Ending(Outcome.TIMED_OUT, Outcome.TIMED_OUT.error_text())
        # Our own live attempts (and claims in flight) time out through their local timer.
        orphans = [row for row in rows if not self._is_running_here(row.id)]
        won = await asyncio.gather(
            *(self._completer.record(row, ending, owner_id=row.run_started_by or 0) for row in orphans)
        )
        taken = 0
        for row, took in zip(orphans, won, strict=True):
            if took:
                taken += 1
                self._counters.runs_timed_out_res += 1
                self._log.warning(
                    "jobsd: resurrected run %s of instance %s",
                    row.id,
                    row.run_started_by,
                    extra={"instance_id": self._id, "run_id": row.run_id, "job": row.job},
                )
        return taken
