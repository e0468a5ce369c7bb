"""Run timeouts share one loop timer: each expires once, in order, never early, and an
attempt that ended takes its deadline with it."""

from __future__ import annotations

import asyncio

import pytest

from jobsd_async._deadlines import Deadlines


class Expiries:
    """What expired, in order, with the loop time of each; ``reached(n)`` waits for n."""

    def __init__(self, *, failing: int | None = None) -> None:
        self.keys: list[int] = []
        self.times: list[float] = []
        self._failing = failing
        self._changed = asyncio.Event()

    def __call__(self, key: int) -> None:
        if key == self._failing:
            raise RuntimeError("boom")
        self.keys.append(key)
        self.times.append(asyncio.get_running_loop().time())
        self._changed.set()

    async def reached(self, count: int) -> None:
        async with asyncio.timeout(5):
            while len(self.keys) < count:
                self._changed.clear()
                await self._changed.wait()


async def test_deadlines_expire_in_order_and_never_early() -> None:
    expiries = Expiries()
    deadlines = Deadlines(expiries)
    start = asyncio.get_running_loop().time()
    deadlines.add(3, 0.15)
    deadlines.add(1, 0.05)  # earlier than the armed timer: re-arms it
    deadlines.add(2, 0.10)
    await expiries.reached(3)
    assert expiries.keys == [1, 2, 3]
    for at, delay in zip(expiries.times, (0.05, 0.10, 0.15), strict=True):
        assert at - start >= delay


async def test_a_discarded_or_replaced_deadline_does_not_expire() -> None:
    expiries = Expiries()
    deadlines = Deadlines(expiries)
    deadlines.discard(1, deadlines.add(1, 0.02))  # the attempt ended first
    first = deadlines.add(2, 0.02)
    deadlines.add(2, 0.06)  # replaced: expires once, at the later time
    deadlines.discard(2, first)  # (the replaced deadline's owner cannot remove the new one)
    deadlines.add(9, 0.1)
    await expiries.reached(2)
    assert expiries.keys == [2, 9]


async def test_stale_entries_are_dropped_and_live_ones_kept() -> None:
    expiries = Expiries()
    deadlines = Deadlines(expiries)
    deadlines.add(0, 0.05)
    for key in range(1, 10_001):  # attempts that end long before their timeout
        deadlines.discard(key, deadlines.add(key, 3600))
    assert len(deadlines._heap) < 200  # rebuilt: the ended ones do not pile up
    await expiries.reached(1)
    assert expiries.keys == [0]


async def test_close_forgets_every_deadline() -> None:
    expiries = Expiries()
    deadlines = Deadlines(expiries)
    deadlines.add(1, 0.01)
    deadlines.close()
    deadlines.add(2, 0.05)  # after the forgotten one's time
    await expiries.reached(1)
    assert expiries.keys == [2]


async def test_a_failing_expiry_does_not_stop_the_others(monkeypatch: pytest.MonkeyPatch) -> None:
    loop = asyncio.get_running_loop()
    reported: list[BaseException] = []
    monkeypatch.setattr(loop, "call_exception_handler", lambda context: reported.append(context["exception"]))
    expiries = Expiries(failing=1)
    deadlines = Deadlines(expiries)
    deadlines.add(1, 0.01)
    deadlines.add(2, 0.01)
    deadlines.add(3, 0.05)
    await expiries.reached(2)
    assert expiries.keys == [2, 3]
    assert [str(e) for e in reported] == ["boom"]
