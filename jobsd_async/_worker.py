"""Running an instance as a worker process: until a signal, or until nothing is due.

Deployment platforms stop a process with SIGTERM (Docker, systemd, Kubernetes) or SIGINT
(Ctrl-C), then kill it after a grace period.  :func:`run_worker` turns the first signal
into a graceful ``down()`` (running jobs finish for ``shutdown_timeout``, the rest are
handed over) and a second one into handing everything over at once.  ``jobsd worker`` is
built on it, and so can any program that runs jobsd as its main loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable, Iterator, Sequence

from ._jobsd import JobsD

__all__ = ("run_worker",)

_BURST_CHECK = 0.1  # seconds between checks whether a burst worker has nothing left


async def run_worker(
    jd: JobsD,
    *,
    burst: bool = False,
    signals: Sequence[signal.Signals] = (signal.SIGTERM, signal.SIGINT),
    on_up: Callable[[JobsD], object] | None = None,
) -> None:
    """Start ``jd`` and run it until SIGTERM or SIGINT, then shut it down.

    The first signal starts a graceful ``down()``; a second one hands running jobs over at
    once (``down(graceful=False)``).  With ``burst``, it also stops once nothing due is left
    for this instance (nothing running, nothing due in the table).  ``on_up`` is called
    once the instance is up.  Returns when the instance is down.
    """
    stopping = asyncio.Event()
    hurrying = asyncio.Event()

    def received() -> None:
        (hurrying if stopping.is_set() else stopping).set()

    with _handling(signals, received):
        await jd.up()
        try:
            if on_up is not None:
                on_up(jd)
            if burst:
                await _until_first(stopping.wait(), _drained(jd))
            else:
                await stopping.wait()
        finally:
            going_down = asyncio.ensure_future(jd.down())
            hurried = asyncio.ensure_future(hurrying.wait())
            await asyncio.wait({going_down, hurried}, return_when=asyncio.FIRST_COMPLETED)
            hurried.cancel()
            if not going_down.done():
                await jd.down(graceful=False)
            await going_down


async def _drained(jd: JobsD) -> None:
    """Return once ``jd`` has been idle, with nothing due, at two checks in a row."""
    idle_checks = 0
    while idle_checks < 2:
        await asyncio.sleep(_BURST_CHECK)
        try:
            idle = await jd._idle()
        except Exception as exc:  # the database is away: not drained, as far as we know
            jd.logger.warning("jobsd: burst worker cannot tell whether runs are due: %s", exc)
            idle = False
        idle_checks = idle_checks + 1 if idle else 0


async def _until_first(*awaitables: Awaitable[object]) -> None:
    tasks = [asyncio.ensure_future(a) for a in awaitables]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@contextlib.contextmanager
def _handling(signals: Sequence[signal.Signals], handler: Callable[[], None]) -> Iterator[None]:
    loop = asyncio.get_running_loop()
    installed = []
    try:
        for sig in signals:
            loop.add_signal_handler(sig, handler)
            installed.append(sig)
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
