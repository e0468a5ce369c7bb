"""Wake-ups: a broadcast signal, and waiting for an event with a deadline."""

from __future__ import annotations

import asyncio
import contextlib


class Signal:
    __slots__ = ("_future",)

    def __init__(self) -> None:
        self._future: asyncio.Future[None] | None = None

    def notify(self) -> None:
        future, self._future = self._future, None
        if future is not None and not future.done():
            future.set_result(None)

    async def wait(self, timeout: float | None) -> bool:
        """Wait for the next notify(); False if ``timeout`` seconds passed first."""
        if self._future is None or self._future.done():
            self._future = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(self._future)
        except TimeoutError:
            return False
        return True


async def wait_event(event: asyncio.Event, timeout: float | None) -> None:
    """Wait until ``event`` is set, or ``timeout`` seconds (None: forever), whichever is first."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await event.wait()
