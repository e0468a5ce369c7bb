"""Progress reports of running jobs: ``RunInfo.set_progress`` writes them to the row.

Reports are coalesced: while one is being written, later ones wait, and only the newest
of them is written next, so a job reporting in a tight loop costs one statement at a time.
Progress is best effort: a database error is logged, never raised into the job.
"""

from __future__ import annotations

import asyncio
import logging
import threading

from ._codec import to_json
from ._store._progress import set_progress
from ._store._rows import RunRow, Store

MAX_PROGRESS_LENGTH = 65536  # characters of a progress report's JSON (run_progress)


class Progress:
    """Writes one attempt's progress reports to its row."""

    __slots__ = (
        "_extra",
        "_lock",
        "_log",
        "_loop",
        "_owner",
        "_reported",
        "_row",
        "_store",
        "_thread",
        "_written",
    )

    def __init__(self, store: Store, row: RunRow, owner: int, log: logging.Logger) -> None:
        self._store = store
        self._row = row
        self._owner = owner
        self._log = log
        self._extra = {"instance_id": owner, "run_id": row.run_id, "row_id": row.id, "job": row.job}
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        self._lock = asyncio.Lock()
        self._reported: tuple[int, str] = (0, "")
        self._written = 0

    @staticmethod
    def encode(progress: object) -> str:
        """JSON text of a report; TypeError/ValueError if it has none or is too large."""
        try:
            text = to_json(progress)
        except Exception as exc:
            raise TypeError(f"progress must be JSON-serializable, got {progress!r} ({exc})") from exc
        if len(text) > MAX_PROGRESS_LENGTH:
            raise ValueError(
                f"progress is {len(text)} characters of JSON, more than the {MAX_PROGRESS_LENGTH} stored"
            )
        return text

    async def report(self, progress: object) -> None:
        text = self.encode(progress)
        version = self._reported[0] + 1
        self._reported = (version, text)
        async with self._lock:
            if self._written >= version:
                return  # a newer report was written while this one waited
            version, text = self._reported
            try:
                await self._store.dialect.retrying(
                    lambda conn: set_progress(self._store, conn, self._row.id, self._owner, text)
                )
            except Exception as exc:
                self._log.warning(
                    "jobsd: run %s: progress not stored: %s", self._row.run_id, exc, extra=self._extra
                )
            self._written = version

    def report_from_thread(self, progress: object) -> None:
        if threading.get_ident() == self._thread:
            raise RuntimeError(
                "set_progress_sync() is for sync jobs in their thread; use `await set_progress()`"
            )
        self.encode(progress)  # raise bad values in the job's own thread
        asyncio.run_coroutine_threadsafe(self.report(progress), self._loop).result()
