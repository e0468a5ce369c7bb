"""Callers of ``wait_for_run``, by run id: each is woken by news of its own chain only.

A completion written here, or a ``cancel_run`` made here, wakes the waiters of that run
id (who then read its state once); so does, on PostgreSQL, the ``{prefix}done``
notification of a completion written by another instance.  Without it (other databases,
``listen=False``) chains that finish elsewhere are noticed by each waiter's own re-check,
at growing intervals.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable


class Waiters:
    __slots__ = ("_waiting",)

    def __init__(self) -> None:
        self._waiting: dict[int, set[asyncio.Future[None]]] = {}

    def notify(self, run_ids: Iterable[int]) -> None:
        """Wake the waiters of these run ids."""
        for run_id in run_ids:
            for future in self._waiting.pop(run_id, ()):
                if not future.done():
                    future.set_result(None)

    def notify_all(self) -> None:
        """Wake every waiter (the instance is going down)."""
        self.notify(list(self._waiting))

    async def wait(self, run_id: int, timeout: float) -> bool:
        """Wait for news of ``run_id`` for up to ``timeout`` seconds; False if none came."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(run_id, set()).add(future)
        try:
            async with asyncio.timeout(timeout):
                await future
        except TimeoutError:
            return False
        finally:
            waiting = self._waiting.get(run_id)
            if waiting is not None:
                waiting.discard(future)
                if not waiting:
                    del self._waiting[run_id]
        return True
