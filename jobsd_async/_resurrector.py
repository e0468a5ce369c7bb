"""The resurrector: every ``timeout_check``, take over runs whose attempt can no longer end.

A running row is resurrected when its ``run_timeout_at`` has passed by the database clock,
or when its owner has not been seen for three of its heartbeat intervals, or has shut down
without closing it.  It is completed as timed out and gets its follow-up exactly as a local
timeout would, so unique names are handed over or freed and recurring chains continue.
Every instance resurrects; the conditional completion lets exactly one of them win a row.

A row this instance owns but does not run is a claim (or a direct-start insert) whose
answer was lost in a database fault: it never started, so it is handed over like a run
killed at shutdown, without using a retry.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from ._attempt import Ending
from ._chain import Outcome
from ._completer import Completer
from ._config import Config
from ._store import _resurrect
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
    ) -> None:
        self._config = config
        self._store = store
        self._completer = completer
        self._counters = counters
        self._id = instance_id
        self._is_running_here = is_running_here
        self._log = config.logger

    async def pass_once(self) -> int:
        """One scan; returns how many rows this instance resurrected."""
        async with self._store.dialect.reading(patient=True) as conn:
            rows = await _resurrect.find_orphans(
                self._store,
                conn,
                schedules=self._completer.schedule_names,
                limit=self._config.poll_limit,
                instance_id=self._id,
                own_grace=self._config.heartbeat_interval,
            )
        # Our own live attempts (and claims in flight) time out through their local timer.
        orphans = [row for row in rows if not self._is_running_here(row.id)]
        endings = [
            Ending.of(Outcome.KILLED if row.run_started_by == self._id else Outcome.TIMED_OUT)
            for row in orphans
        ]
        won = await asyncio.gather(
            *(
                self._completer.record(row, ending, owner_id=row.run_started_by or 0)
                for row, ending in zip(orphans, endings, strict=True)
            )
        )
        taken = 0
        for row, ending, took in zip(orphans, endings, won, strict=True):
            if not took:
                continue
            taken += 1
            extra = {"instance_id": self._id, "run_id": row.run_id, "row_id": row.id, "job": row.job}
            if ending.outcome is Outcome.KILLED:
                self._log.warning(
                    "jobsd: run %s was claimed here but never started (the claim's answer was "
                    "lost); handed over",
                    row.run_id,
                    extra=extra,
                )
                continue
            self._counters.runs_timed_out_res += 1
            self._log.warning(
                "jobsd: resurrected run %s of instance %s", row.run_id, row.run_started_by, extra=extra
            )
        return taken
