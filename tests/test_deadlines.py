"""Run timeouts share one loop timer: each expires once, in order, never early, and an
attempt that ended takes its deadline with it."""

from __future__ import annotations

import asyncio

import pytest

from jobsd_async._deadlines import Deadlines


async def test_deadlines_expire_in_order_and_never_early() -> None:
    loop = asyncio.get_running_loop()
    expired: list[tuple[int, float]] = []
    all_done = asyncio.Event()

    def expire(key: int) -> None:
        expired.append((key, loop.time()))
        if len(expired) == 3:
            all_done.set()

    deadlines = Deadlines(expire)
    start = loop.time()
    deadlines.add(3, 0.15)
    deadlines.add(1, 0.05)  # earlier than the armed timer: re-arms it
    deadlines.add(2, 0.10)
    await asyncio.wait_for(all_done.wait(), 5)
    assert [key for key, _ in expired] == [1, 2, 3]
    for (_, at), delay in zip(expired, (0.05, 0.10, 0.15), strict=True):
        assert at - start >= delay


async def test_a_discarded_or_replaced_deadline_does_not_expire() -> None:
    expired: list[int] = []
    last = asyncio.Event()

    def expire(key: int) -> None:
        expired.append(key)
        if key == 9:
            last.set()

    deadlines = Deadlines(expire)
    deadlines.discard(1, deadlines.add(1, 0.02))  # the attempt ended first
    first = deadlines.add(2, 0.02)
    deadlines.add(2, 0.06)  # replaced: expires once, at the later time
    deadlines.discard(2, first)  # (the replaced deadline's owner cannot remove the new one)
    deadlines.add(9, 0.1)
    await asyncio.wait_for(last.wait(), 5)
    assert expired == [2, 9]


async def test_stale_entries_are_dropped_and_live_ones_kept() -> None:
    expired: list[int] = []
    done = asyncio.Event()

    def expire(key: int) -> None:
        expired.append(key)
        done.set()

    deadlines = Deadlines(expire)
    deadlines.add(0, 0.05)
    for key in range(1, 10_001):  # attempts that end long before their timeout
        deadlines.discard(key, deadlines.add(key, 3600))
    assert len(deadlines._heap) < 200  # rebuilt: the ended ones do not pile up
    await asyncio.wait_for(done.wait(), 5)
    assert expired == [0]


async def test_close_forgets_every_deadline() -> None:
    expired: list[int] = []
    later = asyncio.Event()

    def expire(key: int) -> None:
        expired.append(key)
        later.set()

    deadlines = Deadlines(expire)
    deadlines.add(1, 0.01)
    deadlines.close()
    deadlines.add(2, 0.05)  # after the forgotten one's time
    await asyncio.wait_for(later.wait(), 5)
    assert expired == [2]


async def test_a_failing_expiry_does_not_stop_the_others(monkeypatch: pytest.MonkeyPatch) -> None:
    loop = asyncio.get_running_loop()
    reported: list[BaseException] = []
    monkeypatch.setattr(loop, "call_exception_handler", lambda context: reported.append(context["exception"]))
    expired: list[int] = []
    done = asyncio.Event()

    def expire(key: int) -> None:
        if key == 1:
            raise RuntimeError("boom")
        expired.append(key)
        done.set()

    deadlines = Deadlines(expire)
    deadlines.add(1, 0.01)
    deadlines.add(2, 0.01)
    deadlines.add(3, 0.05)
    await asyncio.wait_for(done.wait(), 5)
    done.clear()
    await asyncio.wait_for(done.wait(), 5)
    assert expired == [2, 3]
    assert [str(e) for e in reported] == ["boom"]
