"""The run timeouts of the attempts running here, on one event-loop timer.

A ``call_later`` per attempt costs a timer handle created and cancelled for nearly every
run (most end long before their timeout); here an attempt costs a heap entry.  Entries of
attempts that ended stay in the heap until they reach its top or the heap is rebuilt
(when it holds more than twice the live deadlines), so both costs stay constant per run.
"""

from __future__ import annotations

import asyncio
import heapq
import math
from collections.abc import Callable

_REBUILD_SLACK = 64  # stale heap entries tolerated beyond twice the live ones


class Deadlines:
    """Calls ``expire(key)`` once the deadline of ``key`` has passed, unless discarded."""

    __slots__ = ("_armed_at", "_expire", "_heap", "_live", "_timer")

    def __init__(self, expire: Callable[[int], object]) -> None:
        self._expire = expire
        self._heap: list[tuple[float, int]] = []
        self._live: dict[int, float] = {}  # key -> its deadline (loop time)
        self._timer: asyncio.TimerHandle | None = None
        self._armed_at = math.inf

    def add(self, key: int, delay: float) -> float:
        """Expire ``key`` ``delay`` seconds from now (replacing a deadline it had); returns
        the deadline, for :meth:`discard`."""
        loop = asyncio.get_running_loop()
        at = loop.time() + delay
        self._live[key] = at
        heapq.heappush(self._heap, (at, key))
        if at < self._armed_at:
            self._arm(loop, at)
        elif len(self._heap) > 2 * len(self._live) + _REBUILD_SLACK:
            self._heap = [(when, k) for k, when in self._live.items()]
            heapq.heapify(self._heap)
        return at

    def discard(self, key: int, at: float) -> None:
        """Forget the deadline ``at`` of ``key``, if it still has that one."""
        if self._live.get(key) == at:
            del self._live[key]

    def close(self) -> None:
        """Forget every deadline, and the timer."""
        self._live.clear()
        self._heap.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._armed_at = math.inf

    def _arm(self, loop: asyncio.AbstractEventLoop, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._armed_at = at
        self._timer = loop.call_at(at, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._armed_at = math.inf
        loop = asyncio.get_running_loop()
        now = loop.time()
        heap, live = self._heap, self._live
        while heap:
            at, key = heap[0]
            if live.get(key) != at:  # it ended, or has a newer deadline
                heapq.heappop(heap)
            elif at > now:  # (the loop may run a timer a clock tick early)
                self._arm(loop, at)
                return
            else:
                heapq.heappop(heap)
                del live[key]
                try:
                    self._expire(key)
                except Exception as exc:  # the other deadlines still expire
                    loop.call_exception_handler({"message": "jobsd: a run timeout failed", "exception": exc})
