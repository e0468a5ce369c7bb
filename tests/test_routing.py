"""Routing: queues, priorities, cluster-wide concurrency and rate limits, pausing queues."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import MakeJobsD, eventually, fetch_runs, insert_row, jd_prefix, read_word_after
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import create_async_engine

from jobsd_async import JobsD, RunInfo, RunStatus
from jobsd_async._store import _claim

LIMIT_WORKER = Path(__file__).with_name("limit_worker.py")


@pytest.fixture
def dummy_engine() -> Any:
    # Never connected: validation happens before anything touches the database.
    return create_async_engine("sqlite+aiosqlite:///:memory:")


class Concurrency:
    """How many runs a job has running at once, as the jobs themselves see it."""

    def __init__(self) -> None:
        self.now = 0
        self.most = 0
        self.per_key: dict[str, int] = {}
        self.most_per_key: dict[str, int] = {}

    async def hold(self, seconds: float, key: str = "") -> None:
        self.now += 1
        self.most = max(self.most, self.now)
        self.per_key[key] = self.per_key.get(key, 0) + 1
        self.most_per_key[key] = max(self.most_per_key.get(key, 0), self.per_key[key])
        try:
            await asyncio.sleep(seconds)
        finally:
            self.now -= 1
            self.per_key[key] -= 1


# ------------------------------------------------------------------------------ queues


async def test_runs_are_in_the_default_queue_at_priority_zero_unless_told(make_jobsd: MakeJobsD) -> None:
    jd = make_jobsd(workers=0)
    plain = jd.register_job("plain", lambda: None)
    mail = jd.register_job("mail", lambda: None, queue="mail", priority=5)
    assert (plain.queue, plain.priority, mail.queue, mail.priority) == ("default", 0, "mail", 5)
    async with jd:
        ids = [
            await plain.create_run().run(),
            await mail.create_run().run(),
            await mail.create_run().queue("urgent-mail").priority(-3).run(),
        ]
        states = [await jd.get_run_state(i) for i in ids]
    assert [(s.queue, s.priority) for s in states] == [("default", 0), ("mail", 5), ("urgent-mail", -3)]


async def test_instances_take_runs_only_from_their_queues(make_jobsd: MakeJobsD) -> None:
    mail = make_jobsd(queues=["mail"])
    reports = make_jobsd(queues=["reports"])
    everything = make_jobsd(workers=0)
    for jd in (mail, reports, everything):
        jd.register_job("work", lambda: None)
    async with everything, mail, reports:
        assert mail.instance.id != reports.instance.id
        ids = {
            # created where it cannot run: it must not start there, even directly
            "reports from mail": await mail.create_run("work").queue("reports").run(),
            "mail from reports": await reports.create_run("work").queue("mail").run(),
            "mail": await everything.create_run("work").queue("mail").run(),
            "reports": await everything.create_run("work").queue("reports").run(),
        }
        states = {name: await everything.wait_for_run(i, timeout=10) for name, i in ids.items()}
        await everything.create_run("work").run()  # the default queue: nobody here takes it
        queues = await everything.list_queues()
        mail_id, reports_id = mail.instance_id, reports.instance_id

    assert {n: s.status for n, s in states.items()} == dict.fromkeys(ids, RunStatus.SUCCEEDED)
    assert {n: s.run_started_by for n, s in states.items()} == {
        "reports from mail": reports_id,
        "mail from reports": mail_id,
        "mail": mail_id,
        "reports": reports_id,
    }
    assert [(q.name, q.pending, q.running) for q in queues] == [("default", 1, 0)]


async def test_higher_priority_runs_first_then_in_due_order(make_jobsd: MakeJobsD) -> None:
    creator = make_jobsd(workers=0)
    worker = make_jobsd(workers=1)
    order: list[str] = []
    for jd in (creator, worker):
        jd.register_job("step", lambda label: order.append(label))
    async with creator:
        ids = [
            await creator.create_run("step", label).priority(priority).run()
            for label, priority in [("a", 0), ("b", 5), ("c", -1), ("d", 5), ("e", 10), ("f", 0)]
        ]
        async with worker:
            for run_id in ids:
                await creator.wait_for_run(run_id, timeout=10)
    assert order == ["e", "b", "d", "a", "f", "c"]


async def test_follow_ups_keep_the_queue_and_priority(make_jobsd: MakeJobsD) -> None:
    jd = make_jobsd()

    @jd.job(name="flaky", retries_error_limit=2)
    async def flaky() -> None:
        raise RuntimeError("again")

    async with jd:
        run_id = await flaky.create_run().queue("slow").priority(7).run()
        assert (await jd.wait_for_run(run_id, timeout=10)).status is RunStatus.FAILED
        rows = await fetch_runs(jd)
    assert [(r["queue"], r["priority"]) for r in rows] == [("slow", 7)] * 3


# ------------------------------------------------------------------------------ pausing


async def test_a_paused_queue_starts_nothing_anywhere_until_resumed(make_jobsd: MakeJobsD) -> None:
    first, second, producer = make_jobsd(), make_jobsd(), make_jobsd(workers=0)
    for jd in (first, second, producer):
        jd.register_job("work", lambda label: label)
    async with first, second, producer:
        assert await first.pause_queue("mail") is True
        assert await second.pause_queue("mail") is False  # already paused, cluster-wide
        held = [
            await second.create_run("work", "direct").queue("mail").priority(9).run(),
            await producer.create_run("work", "created").queue("mail").priority(9).run(),
        ]
        # Runs of a lower priority, created after them and claimed (a producer's runs are
        # never started directly) by each instance, run: the paused ones were passed over.
        passed: set[int | None] = set()
        while passed != {first.instance_id, second.instance_id}:
            state = await producer.wait_for_run(await producer.create_run("work", "other").run(), timeout=10)
            assert state.status is RunStatus.SUCCEEDED
            passed.add(state.run_started_by)
        assert [(await first.get_run_state(i)).status for i in held] == [RunStatus.PENDING] * 2
        queues = {q.name: q for q in await second.list_queues()}
        assert queues["mail"].paused and queues["mail"].pending == 2

        assert await second.resume_queue("mail") is True
        assert await first.resume_queue("mail") is False
        states = [await first.wait_for_run(i, timeout=10) for i in held]
    assert [s.result for s in states] == ["direct", "created"]


async def test_a_pause_outlives_the_instances(make_jobsd: MakeJobsD) -> None:
    jd = make_jobsd()
    jd.register_job("work", lambda: None)
    async with jd:
        await jd.pause_queue("mail")
    later = make_jobsd()
    later.register_job("work", lambda: None)
    async with later:
        assert [(q.name, q.paused) for q in await later.list_queues()] == [("mail", True)]
        await later.resume_queue("mail")
        assert [(q.name, q.paused) for q in await later.list_queues()] == [("mail", False)]


# ------------------------------------------------------------------------------ limits


async def test_max_running_holds_across_four_instances(make_jobsd: MakeJobsD) -> None:
    seen = Concurrency()
    instances = [make_jobsd(workers=3) for _ in range(4)]
    for jd in instances:

        @jd.job(name="limited", max_running=2)
        async def limited() -> None:
            await seen.hold(0.15)

    async with instances[0], instances[1], instances[2], instances[3]:
        ids = [await instances[i % 4].create_run("limited").run() for i in range(12)]
        states = [await instances[0].wait_for_run(i, timeout=30) for i in ids]
    assert {s.status for s in states} == {RunStatus.SUCCEEDED}
    assert seen.most == 2, f"{seen.most} runs at once"
    assert len({s.run_started_by for s in states}) > 1  # the limit is the cluster's, not an instance's


async def test_max_running_per_key(make_jobsd: MakeJobsD) -> None:
    seen = Concurrency()
    instances = [make_jobsd(workers=4) for _ in range(2)]
    for jd in instances:

        @jd.job(name="sync", max_running=1, limit_key=lambda customer: customer)
        async def sync(customer: str) -> None:
            await seen.hold(0.1, customer)

    async with instances[0], instances[1]:
        ids = [await instances[i % 2].create_run("sync", c).run() for i, c in enumerate("abcabcabc")]
        for run_id in ids:
            await instances[0].wait_for_run(run_id, timeout=30)
        rows = await fetch_runs(instances[0])
    assert seen.most_per_key == {"a": 1, "b": 1, "c": 1}
    assert seen.most > 1  # different customers ran side by side
    assert sorted({r["limit_key"] for r in rows}) == ["a", "b", "c"]


async def test_the_rate_limit_holds_over_every_window(make_jobsd: MakeJobsD) -> None:
    instances = [make_jobsd(workers=5) for _ in range(2)]
    for jd in instances:
        jd.register_job("ping", lambda: None, rate_limit=(3, 0.5))
    async with instances[0], instances[1]:
        ids = [await instances[i % 2].create_run("ping").run() for i in range(8)]
        for run_id in ids:
            await instances[0].wait_for_run(run_id, timeout=30)
        starts = sorted(r["run_started_at"] for r in await fetch_runs(instances[0]))
    window = timedelta(seconds=0.5)
    most = max(sum(1 for s in starts if t - window < s <= t) for t in starts)
    assert most == 3, f"{most} starts within {window}"
    assert starts[-1] - starts[0] > 2 * window  # 8 starts at 3 per window need three windows


@pytest.mark.cluster
async def test_a_dead_instance_gives_back_its_slots(
    make_jobsd: MakeJobsD, database_url: str, table_prefix: str
) -> None:
    seen = Concurrency()
    survivor = make_jobsd(workers=0)
    survivor.register_job("mark", lambda: None)

    @survivor.job(name="hold", max_running=1)
    async def hold(info: RunInfo) -> int:
        await seen.hold(0.05)
        return info.run_total_count

    await survivor.up()  # the tables exist before the worker starts
    worker = await asyncio.create_subprocess_exec(
        sys.executable, str(LIMIT_WORKER), database_url, table_prefix, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert worker.stdout is not None
        await read_word_after(worker.stdout, "UP")
        first = await hold.create_run().run()
        assert int(await read_word_after(worker.stdout, "RUNNING")) == first
        second = await hold.create_run().run()
        # The worker has free slots and claims (it runs "mark"), but "hold" is at its limit.
        await survivor.wait_for_run(await survivor.create_run("mark").run(), timeout=10)
        assert (await hold.get_run_state(second)).status is RunStatus.PENDING
        os.kill(worker.pid, signal.SIGKILL)
        await worker.wait()
    finally:
        if worker.returncode is None:
            worker.kill()
            await worker.wait()
    await survivor.down()
    rescuer = make_jobsd(workers=4, timeout_check=0.2)
    rescuer.register_job("mark", lambda: None)
    rescuer.register_job("hold", hold.func, max_running=1)
    async with rescuer:
        states = [await rescuer.wait_for_run(i, timeout=30) for i in (first, second)]
    assert [s.status for s in states] == [RunStatus.SUCCEEDED] * 2
    assert states[0].result == 2  # the killed attempt, then the one after the take-over
    assert seen.most == 1


async def insert_running_row(owner: JobsD, *, job: str) -> int:
    """A running row of ``job`` owned by ``owner``, without a limit key."""
    started = {"run_started_at": datetime.now(UTC), "run_total_count": 1, "run_timeout": None}
    return await insert_row(owner, job=job, run_started_by=owner.instance_id, **started)


async def complete_row(owner: JobsD, row_id: int) -> None:
    runs = owner.metadata.tables[f"{jd_prefix(owner)}runs"]
    async with owner.engine.begin() as conn:
        await conn.execute(
            update(runs)
            .where(runs.c.id == row_id)
            .values(run_completed_at=datetime.now(UTC), name_active=None)
        )


# ------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"queue": ""}, ValueError),
        ({"queue": "a,b"}, ValueError),
        ({"queue": 3}, TypeError),
        ({"priority": 1.5}, TypeError),
        ({"priority": True}, TypeError),
        ({"priority": 2**31}, ValueError),
        ({"max_running": 0}, ValueError),
        ({"max_running": "2"}, TypeError),
        ({"rate_limit": (0, 1)}, ValueError),
        ({"rate_limit": (1, 0)}, ValueError),
        ({"rate_limit": 5}, TypeError),
        ({"limit_key": lambda: "k"}, ValueError),  # a key without a limit
        ({"max_running": 1, "limit_key": "customer"}, TypeError),
    ],
)
def test_bad_routing_options_are_refused(dummy_engine: Any, options: dict[str, Any], error: type) -> None:
    jd = JobsD(dummy_engine)
    with pytest.raises(error):
        jd.register_job("job", lambda customer=None: None, **options)
    assert "job" not in [j for j in jd._jobs]


@pytest.mark.parametrize(
    ("queues", "error"), [("mail", TypeError), ([], ValueError), (["a", ""], ValueError)]
)
def test_bad_instance_queues_are_refused(dummy_engine: Any, queues: Any, error: type) -> None:
    with pytest.raises(error):
        JobsD(dummy_engine, queues=queues)


@pytest.mark.parametrize(
    ("key", "error"),
    [
        (lambda customer: 1 / 0, ValueError),
        (lambda customer: None, TypeError),
        (lambda customer: "", ValueError),
        (lambda customer: "a\x00b", ValueError),
        (lambda customer: "x" * 256, ValueError),
    ],
)
async def test_a_bad_limit_key_writes_nothing(make_jobsd: MakeJobsD, key: Any, error: type) -> None:
    jd = make_jobsd(workers=0)
    jd.register_job("sync", lambda customer: None, max_running=1, limit_key=key)
    async with jd:
        with pytest.raises(error):
            await jd.create_run("sync", "acme").run()
        with pytest.raises(error):
            await jd.create_runs("sync", [("acme",)])
        assert await fetch_runs(jd) == []


async def test_bad_run_routing_writes_nothing(make_jobsd: MakeJobsD) -> None:
    jd = make_jobsd(workers=0)
    jd.register_job("work", lambda: None)
    async with jd:
        with pytest.raises(ValueError, match="NUL"):
            jd.create_run("work").queue("bad\x00queue")
        with pytest.raises(TypeError):
            jd.create_run("work").priority(None)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="empty"):
            await jd.pause_queue("")
        assert await fetch_runs(jd) == []


async def test_queue_names_compare_exactly(make_jobsd: MakeJobsD) -> None:
    # MySQL/MariaDB compare texts case-insensitively and without trailing spaces by default.
    picky = make_jobsd(queues=["mail"])
    picky.register_job("work", lambda label: label)
    async with picky:
        await picky.pause_queue("Mail")
        await picky.pause_queue("mail ")
        ran = await picky.create_run("work", "exact").queue("mail").run()
        assert (await picky.wait_for_run(ran, timeout=10)).result == "exact"
        others = [await picky.create_run("work", q).queue(q).run() for q in ("Mail", "MAIL", "mail ")]
        # A later run of the instance's queue runs: the others were passed over, not missed.
        after = await picky.create_run("work", "after").queue("mail").run()
        assert (await picky.wait_for_run(after, timeout=10)).result == "after"
        assert [(await picky.get_run_state(i)).status for i in others] == [RunStatus.PENDING] * 3
        paused = sorted(q.name for q in await picky.list_queues() if q.paused)
    assert paused == ["Mail", "mail "]


async def test_instances_follow_the_limits_the_cluster_declared(make_jobsd: MakeJobsD) -> None:
    seen = Concurrency()

    async def limited() -> None:
        await seen.hold(0.1)

    unaware = make_jobsd(workers=4)
    unaware.register_job("limited", limited)  # registered without limits ...
    declaring = make_jobsd(workers=0)  # ... until an instance that has them starts
    declaring.register_job("limited", limited, max_running=1)
    declaring._reconfigure(workers=1)
    async with unaware, declaring:
        dispatcher = unaware._runner.dispatcher  # type: ignore[union-attr]
        await eventually(lambda: "limited" in dispatcher._limited, what="a poll")
        ids = [await unaware.create_run("limited").run() for _ in range(6)]
        states = [await unaware.wait_for_run(i, timeout=30) for i in ids]
    assert {s.status for s in states} == {RunStatus.SUCCEEDED}
    assert seen.most == 1


async def test_a_running_run_without_a_key_counts_against_the_limit(make_jobsd: MakeJobsD) -> None:
    owner = make_jobsd(workers=0)  # alive: its running row is not taken over
    owner.register_job("mark", lambda: None)
    worker = make_jobsd(workers=3)
    worker.register_job("h", lambda: "ran", max_running=1)
    worker.register_job("mark", lambda: None)
    async with owner, worker:
        # As a run started before the upgrade to schema version 6 is: running, without a key.
        before = await insert_running_row(owner, job="h")
        held = await worker.create_run("h").run()
        # The worker claims the mark (created elsewhere), and tries "h" in the same claim.
        await worker.wait_for_run(await owner.create_run("mark").run(), timeout=10)
        assert (await worker.get_run_state(held)).status is RunStatus.PENDING
        await complete_row(owner, before)
        assert (await worker.wait_for_run(held, timeout=10)).result == "ran"


async def test_a_limited_run_handed_back_is_left_alone(make_jobsd: MakeJobsD) -> None:
    release = asyncio.Event()
    new = make_jobsd(workers=1)
    old = make_jobsd(workers=2)

    @new.job(name="block")
    async def block() -> None:
        await release.wait()

    new.register_job("lim", lambda x: x, max_running=5)
    old.register_job("lim", lambda: None, max_running=5)  # the version before `x`
    old.register_job("tick", lambda: None)
    producer = make_jobsd(workers=0)  # its ticks make the old instance claim (not start directly)
    producer.register_job("tick", lambda: None)
    async with new, old, producer:
        blocking = await new.create_run("block").run()
        await eventually(lambda: len(new._runner.pool.running()) == 1, what="block runs")  # type: ignore[union-attr]
        run_id = await new.create_run("lim", 7).run()  # no free slot here: it waits, pending
        # The old version claims it, cannot run it and hands it back; the run is due again a
        # second later.  Keep the old instance claiming for longer than that.
        await eventually(lambda: old.instance.runs_started == 1, what="the old version's claim")
        ticks = 0
        for _ in range(15):
            await old.wait_for_run(await producer.create_run("tick").run(), timeout=10)
            ticks += 1
            await asyncio.sleep(0.1)
        release.set()
        assert (await new.wait_for_run(run_id, timeout=10)).result == 7
        await new.wait_for_run(blocking, timeout=10)
        started_by_old = old.instance.runs_started
    assert started_by_old == ticks + 1, "the handed-back run was claimed again"


async def test_a_claim_checks_the_pause_when_it_writes(
    make_jobsd: MakeJobsD, monkeypatch: pytest.MonkeyPatch
) -> None:
    # MySQL reads the paused queues before its pick: a pause committed between that read
    # and the claim's UPDATE must hold all the same.  (Elsewhere the check is one statement.)
    worker, producer = make_jobsd(workers=2), make_jobsd(workers=0)
    for jd in (worker, producer):
        jd.register_job("work", lambda label: label)
    async with worker, producer:
        await worker.pause_queue("mail")

        async def read_before_the_pause(store: Any, conn: Any) -> dict[str, Any]:
            return {"paused": []} if store.dialect.is_mysql else {}

        monkeypatch.setattr(_claim, "_paused_params", read_before_the_pause)
        held = await producer.create_run("work", "held").queue("mail").priority(9).run()
        passed = await producer.create_run("work", "other").run()
        assert (await worker.wait_for_run(passed, timeout=10)).result == "other"
        assert (await worker.get_run_state(held)).status is RunStatus.PENDING


async def test_a_stuck_claimer_of_a_limited_job_holds_back_only_that_job(
    make_jobsd: MakeJobsD, backend: str
) -> None:
    if backend == "sqlite":
        pytest.skip("SQLite has one writer: whoever holds its write lock stops every instance")
    worker, producer = make_jobsd(workers=4), make_jobsd(workers=0)
    worker.register_job("lim", lambda: "lim", max_running=1)
    worker.register_job("free", lambda: "free")
    for job in ("lim", "free"):
        producer.register_job(job, lambda: None)
    async with worker, producer:
        limits = worker.metadata.tables[f"{jd_prefix(worker)}limits"]
        # An instance frozen (a paused VM, a blocked loop) while it claims "lim": its lock stays.
        async with worker.engine.connect() as frozen, frozen.begin():
            await frozen.execute(select(limits).where(limits.c.job == "lim").with_for_update())
            lim = await producer.create_run("lim").run()
            free = await producer.create_run("free").run()
            assert (await worker.wait_for_run(free, timeout=10)).result == "free"
            assert (await worker.get_run_state(lim)).status is RunStatus.PENDING
        assert (await worker.wait_for_run(lim, timeout=10)).status is RunStatus.SUCCEEDED
