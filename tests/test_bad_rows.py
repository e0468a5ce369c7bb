"""Rows written by hand with absurd values: that row fails (or runs, clamped); the rest run.

Anything wrong with one row — arguments that cannot be decoded, counts at the column's
maximum, durations no timestamp can hold, an instance row with an absurd heartbeat — is
that row's problem: it never stops an instance from claiming, running or recovering others.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from conftest import BACKENDS, MakeJobsD, eventually, fetch_runs, insert_row, jd_prefix, server
from sqlalchemy import insert, update

from jobsd_async import JobsD, RunStatus

MAX_INT = 2**31 - 1


ABSURD = 1e300  # seconds: a duration no timestamp can hold


def deeply_nested_json(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.fixture
def worker(make_jobsd: MakeJobsD) -> JobsD:
    jd = make_jobsd(poll_interval=0.05)
    jd.register_job("echo", lambda *args: list(args))
    jd.register_job("fails", _fails)
    return jd


def _fails() -> None:
    raise ValueError("fails on purpose")


async def test_arguments_nested_too_deep_fail_that_run_only(worker: JobsD) -> None:
    async with worker:
        bad = await insert_row(worker, job="echo", job_args=deeply_nested_json(100_000))
        state = await worker.wait_for_run(bad, timeout=10)
        # The dispatcher survived: a normal run after it still runs.
        good = await worker.wait_for_run(await worker.create_run("echo", 1).run(), timeout=10)
    assert state.status is RunStatus.FAILED
    assert state.run_completed_error is not None
    assert "stored arguments cannot be decoded" in state.run_completed_error
    assert good.result == [1]


@pytest.mark.parametrize("args", ["not json", '{"an": "object"}', "[1, 2"])
async def test_undecodable_arguments_fail_that_run_without_retries(worker: JobsD, args: str) -> None:
    async with worker:
        bad = await insert_row(worker, job="echo", job_args=args, retries_on_error_limit=5)
        state = await worker.wait_for_run(bad, timeout=10)
    assert state.status is RunStatus.FAILED
    assert state.run_total_count == 1, "retrying a row that cannot be decoded is pointless"


@pytest.mark.parametrize("timeout", [ABSURD, -5.0, 10 * 365.25 * 86400 * 1000])
async def test_an_absurd_run_timeout_does_not_stop_claims(worker: JobsD, timeout: float) -> None:
    async with worker:
        odd = await insert_row(worker, job="echo", job_args="[7]", run_timeout=timeout)
        states = [await worker.wait_for_run(odd, timeout=10)]
        states.append(await worker.wait_for_run(await worker.create_run("echo", 8).run(), timeout=10))
    assert [s.status for s in states] == [RunStatus.SUCCEEDED, RunStatus.SUCCEEDED]
    assert [s.result for s in states] == [[7], [8]]


# MariaDB has no infinite floats.
@pytest.mark.parametrize("backend", [b for b in BACKENDS if server(b) != "mariadb"])
async def test_an_infinite_run_timeout_does_not_stop_claims(worker: JobsD) -> None:
    async with worker:
        odd = await insert_row(worker, job="echo", job_args="[1]", run_timeout=float("inf"))
        state = await worker.wait_for_run(odd, timeout=10)
    assert state.status is RunStatus.SUCCEEDED


async def test_counts_at_the_columns_maximum_do_not_stop_claims_or_completions(worker: JobsD) -> None:
    async with worker:
        full = await insert_row(
            worker,
            job="fails",
            run_total_count=MAX_INT,
            retries_on_error_count=MAX_INT,
            retries_on_error_limit=None,
        )
        state = await worker.wait_for_run(full, timeout=10)
        after = await worker.wait_for_run(await worker.create_run("echo", 2).run(), timeout=10)
    assert state.status is RunStatus.FAILED
    assert state.run_total_count == MAX_INT
    assert after.result == [2]


async def test_an_absurd_backoff_still_records_the_failure_and_its_retry(worker: JobsD) -> None:
    async with worker:
        odd = await insert_row(
            worker,
            job="fails",
            retries_on_error_limit=1,
            retry_backoff=ABSURD,
            retry_backoff_cap=ABSURD,
        )

        async def retry_inserted() -> bool:
            return len(await fetch_runs(worker)) == 2

        await eventually(retry_inserted, what="the retry row")
    rows = await fetch_runs(worker)
    assert rows[0]["id"] == odd and rows[0]["run_completed_error"] == "ValueError: fails on purpose"
    retry = rows[1]
    assert retry["run_completed_at"] is None
    assert retry["run_at"] <= datetime.now(UTC) + timedelta(days=36525 + 1), "due within the 100-year cap"


async def test_an_absurd_heartbeat_interval_does_not_stop_the_timeout_check(make_jobsd: MakeJobsD) -> None:
    jd = make_jobsd(timeout_check=0.05)
    jd.register_job("echo", lambda: "ran")
    async with jd:
        instances = jd.metadata.tables[f"{jd_prefix(jd)}instances"]
        async with jd.engine.begin() as conn:
            # Another instance's row, dead for long, with an interval no timestamp can hold.
            result = await conn.execute(
                insert(instances).values(
                    workers=1,
                    auto_migrate=True,
                    supported_jobs="echo",
                    supported_schedules="",
                    poll_interval=1.0,
                    poll_limit=1,
                    timeout_check=1.0,
                    heartbeat_interval=ABSURD,
                    runs_started=0,
                    runs_rescheduled=0,
                    runs_timed_out=0,
                    runs_timed_out_res=0,
                    runs_errors=0,
                    last_seen_at=datetime.now(UTC) - timedelta(days=1),
                    created_at=datetime.now(UTC) - timedelta(days=1),
                )
            )
            odd_owner = int(result.inserted_primary_key[0])  # type: ignore[index]
        # A run whose deadline passed, owned by the odd instance, must still be taken over.
        row_id = await insert_row(
            jd,
            job="echo",
            run_started_at=datetime.now(UTC) - timedelta(seconds=10),
            run_started_by=odd_owner,
            run_total_count=1,
            run_timeout_at=datetime.now(UTC) - timedelta(seconds=5),
            retries_on_timeout_limit=1,
        )
        state = await jd.wait_for_run(row_id, timeout=10)
    assert state.status is RunStatus.SUCCEEDED
    assert state.result == "ran"


async def test_a_row_of_a_job_with_another_case_is_not_claimed_here(worker: JobsD) -> None:
    async with worker:
        other = await insert_row(worker, job="ECHO")
        ran = await worker.wait_for_run(await worker.create_run("echo", 3).run(), timeout=10)
        await asyncio.sleep(0.3)  # several polls and claims
        state = await worker.get_run_state(other)
    assert ran.result == [3]
    assert state.status is RunStatus.PENDING, "a run of job 'ECHO' must wait for an instance that has it"


async def test_an_undecodable_stored_result_raises_a_store_error(worker: JobsD) -> None:
    from jobsd_async import StoreError

    async with worker:
        run_id = await worker.create_run("echo", 1).run()
        await worker.wait_for_run(run_id, timeout=10)
        runs = worker.metadata.tables[f"{jd_prefix(worker)}runs"]
        async with worker.engine.begin() as conn:
            await conn.execute(update(runs).where(runs.c.id == run_id).values(run_result="{not json"))
        with pytest.raises(StoreError, match="cannot be decoded"):
            await worker.get_run_state(run_id)


async def test_priorities_at_the_columns_extremes_and_odd_queues_run(make_jobsd: MakeJobsD) -> None:
    jd = make_jobsd(workers=1, poll_interval=0.05)
    order: list[str] = []
    jd.register_job("note", lambda label: order.append(label))
    limited = jd.register_job("limited", lambda label: order.append(label), max_running=2)
    async with jd:
        await jd.pause_queue("paused")
        rows: dict[str, dict[str, Any]] = {
            "lowest": {"priority": -(2**31), "queue": "default"},
            "highest": {"priority": MAX_INT, "queue": "🚚 queue with ' quotes \\\\ and spaces "},
            "limited-with-another-key": {"priority": 5, "job": "limited", "limit_key": "\U0001f511"},
            "limited-without-key": {"priority": 4, "job": "limited", "limit_key": None},
            "paused": {"priority": MAX_INT, "queue": "paused"},
        }
        ids = {}
        for label, values in rows.items():
            job = values.pop("job", "note")
            ids[label] = await insert_row(jd, job=job, job_args=f'["{label}"]', **values)
        for label in ("highest", "limited-with-another-key", "limited-without-key", "lowest"):
            assert (await jd.wait_for_run(ids[label], timeout=10)).status is RunStatus.SUCCEEDED
        assert (await jd.get_run_state(ids["paused"])).status is RunStatus.PENDING
        stored = {r["id"]: r for r in await fetch_runs(jd)}
    assert order == ["highest", "limited-with-another-key", "limited-without-key", "lowest"]
    assert stored[ids["limited-without-key"]]["limit_key"] == ""  # counted job-wide once started
    assert limited.max_running == 2
