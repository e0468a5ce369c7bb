"""The queue API of JobsD: pause, resume and list queues (mixed into JobsD)."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy.ext.asyncio import AsyncConnection

from ._config import check_name
from ._store import _create, _queues
from ._store._dialect import wrap_errors
from ._store._queues import QueueInfo
from ._store._rows import Store


class QueuesAPI:
    """``pause_queue``, ``resume_queue`` and ``list_queues``, mixed into JobsD."""

    _require_store: Callable[[], Store]

    async def pause_queue(self, queue: str) -> bool:
        """Pause ``queue`` across the cluster: no instance starts its runs until it is
        resumed (runs already running finish; new runs are still accepted and wait).

        Persisted in the database; False if the queue was already paused.
        """
        return await set_paused(self._require_store(), check_name("queue", queue), paused=True)

    async def resume_queue(self, queue: str) -> bool:
        """Resume a paused queue; its due runs start at once.  False if it was not paused."""
        return await set_paused(self._require_store(), check_name("queue", queue), paused=False)

    async def list_queues(self) -> list[QueueInfo]:
        """The queues that hold unfinished runs or have been paused, by name."""
        store = self._require_store()

        async def read() -> list[QueueInfo]:
            async with store.dialect.reading() as conn:
                return await _queues.list_queues(store, conn)

        return await wrap_errors(read(), "listing queues")


async def set_paused(store: Store, queue: str, *, paused: bool) -> bool:
    """Pause or resume ``queue``; a resume wakes the listening instances (PostgreSQL)."""

    async def work(conn: AsyncConnection) -> bool:
        changed = await _queues.set_paused(store, conn, queue, paused=paused)
        if changed and not paused:
            await _create.notify_new(store, conn)
        return changed

    return await wrap_errors(
        store.dialect.retrying(work), "pausing a queue" if paused else "resuming a queue"
    )
