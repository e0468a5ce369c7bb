"""Background loops under supervision: a step may fail, the loop never dies.

Every background loop of an instance (poller, dispatcher, heartbeat, timeout check,
pruner) runs through :func:`supervise`: whatever a step raises is logged and the loop
carries on after a backoff.  Loops end only when their ``stop`` event is set, at their next
wait, so a stop never interrupts a statement half-way (which could leave a pooled
connection in an open transaction, and SQLite's write lock with it).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from ._signal import wait_event
from ._store._dialect import DRIVER_ERRORS

_RETRY_FIRST = 0.05  # seconds before a failed step is tried again, doubling up to the cap
_STOP_TIMEOUT = 5.0  # seconds stop() waits for a loop to reach its next wait


async def supervise(
    name: str,
    step: Callable[[], Awaitable[None]],
    *,
    stop: asyncio.Event,
    retry_max: float,
    log: logging.Logger,
    extra: dict[str, Any],
) -> None:
    """Run ``step`` again and again until ``stop`` is set; a failed step is logged and retried.

    ``step`` does its own waiting (see :func:`ticking`).  After a failure the next try comes
    after a backoff from 50 ms doubling up to ``retry_max`` seconds.  Database errors are
    logged as warnings (an outage repeats them); anything else at ERROR with its traceback.
    """
    failures = 0
    while not stop.is_set():
        try:
            await step()
        except Exception as exc:
            failures += 1
            delay = min(retry_max, _RETRY_FIRST * 2.0 ** min(failures - 1, 20))
            if isinstance(exc, DRIVER_ERRORS):
                log.warning("jobsd: %s failed, again in %.2fs: %s", name, delay, exc, extra=extra)
            else:
                log.error("jobsd: %s failed, again in %.2fs", name, delay, exc_info=exc, extra=extra)
            await wait_event(stop, delay)
        else:
            failures = 0


def ticking(
    work: Callable[[], Awaitable[object]], interval: float, stop: asyncio.Event
) -> Callable[[], Coroutine[Any, Any, None]]:
    """A step that does ``work`` and then waits ``interval`` seconds (or until ``stop``)."""

    async def step() -> None:
        await work()
        await wait_event(stop, interval)

    return step


def waiting(
    work: Callable[[], Awaitable[object]], interval: float, stop: asyncio.Event
) -> Callable[[], Coroutine[Any, Any, None]]:
    """A step that waits ``interval`` seconds and then does ``work`` (unless stopped meanwhile)."""

    async def step() -> None:
        await wait_event(stop, interval)
        if not stop.is_set():
            await work()

    return step


class Loops:
    """The supervised loops of one part of an instance, stopped together at their next wait."""

    def __init__(self, owner: str, *, log: logging.Logger, extra: dict[str, Any]) -> None:
        self._owner = owner
        self._log = log
        self._extra = extra
        self.stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def spawn(self, name: str, step: Callable[[], Awaitable[None]], *, retry_max: float) -> None:
        """Start ``step`` as a supervised loop named ``name`` (e.g. "jobsd poller")."""
        coro = supervise(
            name, step, stop=self.stopping, retry_max=retry_max, log=self._log, extra=self._extra
        )
        self._tasks.append(asyncio.create_task(coro, name=f"{name} {self._owner}"))

    async def stop(self) -> None:
        """Let every loop finish its step; cancel one that has not after ``_STOP_TIMEOUT``."""
        self.stopping.set()
        if not self._tasks:
            return
        _, stuck = await asyncio.wait(self._tasks, timeout=_STOP_TIMEOUT)
        for task in stuck:  # e.g. a step retrying against an unreachable database
            task.cancel()
        if stuck:
            # A cancelled step may still wait on a shielded cleanup that never ends (a
            # connection's rollback on a server that stopped answering): let it go.
            _, abandoned = await asyncio.wait(stuck, timeout=_STOP_TIMEOUT)
            for task in abandoned:
                task.add_done_callback(consume)
                self._log.error(
                    "jobsd: %s did not stop when cancelled; abandoned", task.get_name(), extra=self._extra
                )
        self._tasks.clear()


def consume(task: asyncio.Task[Any]) -> None:
    """Retrieve how an abandoned task ended, so asyncio does not report it as unhandled."""
    if not task.cancelled():
        task.exception()
