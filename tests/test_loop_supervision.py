"""Background loops cannot die: whatever a step raises is logged with its traceback, and the
loop carries on after a backoff (a dead heartbeat would let peers re-run live jobs)."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from conftest import MakeJobsD, eventually

from jobsd_async import RunStatus
from jobsd_async._store import _claim, _instances


class Sabotage:
    """Makes a store function raise an unexpected (non-database) error a few times."""

    def __init__(self, real: Any, times: int) -> None:
        self.real = real
        self.left = times
        self.calls = 0

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if self.left > 0:
            self.left -= 1
            raise RuntimeError("a raw, unexpected error from below")
        return await self.real(*args, **kwargs)


async def test_the_heartbeat_survives_unexpected_errors(
    make_jobsd: MakeJobsD, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    jd = make_jobsd(heartbeat_interval=0.1)
    jd.register_job("noop", lambda: None)
    sabotage = Sabotage(_instances.beat, times=3)
    with caplog.at_level(logging.ERROR, logger="jobsd_async"):
        async with jd:
            monkeypatch.setattr(_instances, "beat", sabotage)
            await eventually(
                lambda: sabotage.left == 0 and sabotage.calls >= 5, what="beats after the errors"
            )
            first = jd.instance.last_seen_at
            await eventually(lambda: jd.instance.last_seen_at != first, what="the heartbeat beating again")
    failures = [r for r in caplog.records if "jobsd heartbeat failed" in r.getMessage()]
    assert len(failures) == 3
    assert all(r.exc_info is not None and isinstance(r.exc_info[1], RuntimeError) for r in failures)


async def test_the_poller_survives_unexpected_errors(
    make_jobsd: MakeJobsD, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Only the poller can find this run: it is created by another, producer-only instance
    # and its creation wakes nobody (polling only).
    worker = make_jobsd(poll_interval=0.05, listen=False)
    producer = make_jobsd(workers=0)
    for jd in (worker, producer):
        jd.register_job("mark", lambda: "polled")
    sabotage = Sabotage(_claim.poll_due, times=3)
    monkeypatch.setattr(_claim, "poll_due", sabotage)
    with caplog.at_level(logging.ERROR, logger="jobsd_async"):
        async with worker, producer:
            run_id = await producer.create_run("mark").run()
            state = await producer.wait_for_run(run_id, timeout=10)
    assert state.status is RunStatus.SUCCEEDED
    assert sabotage.calls > 3
    assert len([r for r in caplog.records if "jobsd poller failed" in r.getMessage()]) == 3


async def test_a_failed_step_is_retried_within_its_backoff_not_its_interval(
    make_jobsd: MakeJobsD, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With a one-hour heartbeat, a failed beat is still retried soon: the interval is the
    # time between good beats, not after a failure.
    jd = make_jobsd(heartbeat_interval=3600)
    sabotage = Sabotage(_instances.beat, times=2)
    monkeypatch.setattr(_instances, "beat", sabotage)
    async with jd:
        await eventually(lambda: sabotage.calls >= 3, timeout=10, what="a beat retried after failures")
