"""The local due-time queue: row ids this instance may claim, soonest first.

Fed by runs created here, by follow-ups completed here and by the poller; de-duplicated by
row id, so re-polling a row already queued changes nothing (except to bring it forward).
"""

from __future__ import annotations

import heapq
from datetime import datetime


class LocalQueue:
    __slots__ = ("_due", "_heap", "_tries")

    def __init__(self) -> None:
        self._heap: list[tuple[datetime, int]] = []
        self._due: dict[int, datetime] = {}
        self._tries: dict[int, int] = {}  # claims tried for an id that found nothing

    def __len__(self) -> int:
        return len(self._due)

    def __contains__(self, row_id: object) -> bool:
        return row_id in self._due

    def push(self, row_id: int, due: datetime) -> bool:
        """Queue ``row_id`` at ``due``; returns False if it was already queued at or before it."""
        known = self._due.get(row_id)
        if known is not None and known <= due:
            return False
        self._due[row_id] = due
        heapq.heappush(self._heap, (due, row_id))
        return True

    def next_due(self) -> datetime | None:
        self._drop_stale()
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: datetime, limit: int) -> list[int]:
        """Remove and return up to ``limit`` ids due at ``now``, soonest first."""
        out: list[int] = []
        while len(out) < limit:
            self._drop_stale()
            if not self._heap or self._heap[0][0] > now:
                break
            _, row_id = heapq.heappop(self._heap)
            del self._due[row_id]
            out.append(row_id)
        return out

    def note_try(self, row_id: int) -> int:
        """Count a claim prompted by ``row_id`` that did not get it; returns the count."""
        tries = self._tries.get(row_id, 0) + 1
        self._tries[row_id] = tries
        return tries

    def forget(self, row_id: int) -> None:
        """Drop ``row_id``'s try count (it was given up on)."""
        self._tries.pop(row_id, None)

    def discard(self, row_id: int) -> None:
        """Drop ``row_id`` altogether: it was claimed (its heap entry is skipped lazily)."""
        self._due.pop(row_id, None)
        self._tries.pop(row_id, None)

    def clear(self) -> None:
        self._heap.clear()
        self._due.clear()
        self._tries.clear()

    def _drop_stale(self) -> None:
        # An id pushed again earlier leaves its older entry behind; skip it lazily.
        heap = self._heap
        while heap and self._due.get(heap[0][1]) != heap[0][0]:
            heapq.heappop(heap)
