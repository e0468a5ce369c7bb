"""Callers of ``wait_for_run``, by run id: each is woken by news of its own chain only.

A completion written here, or a ``cancel_run`` made here, wakes the waiters of that run
id; so does, on PostgreSQL, the ``{prefix}done`` notification of a completion written by
another instance.  A completion written here that ends its chain hands the waiters the
row as written, so they need not read it back; other news makes them read the chain's
state once.  Without news (other databases, ``listen=False``) chains that finish
elsewhere are noticed by each waiter's own re-check, at growing intervals.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping

from ._store._rows import RunRow

_NO_ROWS: Mapping[int, RunRow] = {}


class Waiters:
    __slots__ = ("_waiting",)

    def __init__(self) -> None:
        self._waiting: dict[int, set[asyncio.Future[RunRow | None]]] = {}

    def awaited(self, run_id: int) -> bool:
        """Whether a caller here waits for news of ``run_id``."""
        return run_id in self._waiting

    def notify(self, run_ids: Iterable[int], final: Mapping[int, RunRow] = _NO_ROWS) -> None:
        """Wake the waiters of these run ids; ``final`` has the last row of the chains
        that ended, as written (others read their chain's state)."""
        for run_id in run_ids:
            for future in self._waiting.pop(run_id, ()):
                if not future.done():
                    future.set_result(final.get(run_id))

    def notify_all(self) -> None:
        """Wake every waiter (the instance is going down)."""
        self.notify(list(self._waiting))

    async def wait(self, run_id: int, timeout: float) -> tuple[bool, RunRow | None]:
        """Wait for news of ``run_id`` for up to ``timeout`` seconds: (whether news came,
        the last row of its chain if the news carried it)."""
        future: asyncio.Future[RunRow | None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(run_id, set()).add(future)
        try:
            async with asyncio.timeout(timeout):
                return True, await future
        except TimeoutError:
            return False, None
        finally:
            waiting = self._waiting.get(run_id)
            if waiting is not None:
                waiting.discard(future)
                if not waiting:
                    del self._waiting[run_id]
