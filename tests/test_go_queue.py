"""Go JobsD v1.1.0 §9.3 (``run_test.go``) and §9.4 (``runnableQueue_test.go``).

The unique insert-or-get is exercised through the public API
(``create_run(...).unique(name).run()`` twice); the local due-time queue through
``jobsd_async._queue.LocalQueue`` directly (it has no public face), so those two tests need no
database and run once, not per backend.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from conftest import MakeJobsD
from sqlalchemy import select

from jobsd_async import JobsD, RunStatus
from jobsd_async._queue import LocalQueue

WAIT = 10.0  # seconds; an upper bound for a run to finish, never expected to be reached


async def _job_args_of_rows(jd: JobsD, table_prefix: str) -> list[str | None]:
    runs = jd.metadata.tables[f"{table_prefix}runs"]
    async with jd.engine.connect() as conn:
        result = await conn.execute(select(runs.c.job_args).order_by(runs.c.id))
        return [row.job_args for row in result]


async def test_run_create(make_jobsd: MakeJobsD, table_prefix: str) -> None:
    """Go #8 TestRunCreate: insert-or-get by active (unique) name.

    A producer-only instance (``workers=0``, so the row stays pending) submits
    ``unique(name).run()`` with args ``("hello world!",)``: the id is > 0.  A second submission
    with the same unique name and *no* args returns the **same id** and inserts nothing; the
    stored args are the first row's.  Then a worker instance runs the row: the job receives the
    first submission's args, exactly once.  (Beyond Go: once the chain has ended, the name is
    free again and a new submission gets a new id.)
    """
    producer = make_jobsd(workers=0)
    worker = make_jobsd()
    received: list[str] = []
    name = uuid.uuid4().hex

    async def greet(message: str = "no args given") -> None:
        received.append(message)

    producer.register_job("TestRunCreate", greet)
    worker.register_job("TestRunCreate", greet)

    await producer.up()
    first_id = await producer.create_run("TestRunCreate", "hello world!").unique(name).run()
    assert first_id > 0
    second_id = await producer.create_run("TestRunCreate").unique(name).run()
    assert second_id == first_id
    assert await _job_args_of_rows(producer, table_prefix) == ['["hello world!"]']
    pending = await producer.get_run_state(first_id)
    assert pending.status is RunStatus.PENDING
    assert pending.name == name
    assert pending.created_by == producer.instance_id

    await worker.up()
    state = await worker.wait_for_run(first_id, timeout=WAIT)
    assert state.status is RunStatus.SUCCEEDED
    assert state.run_started_by == worker.instance_id
    assert received == ["hello world!"]

    third_id = await producer.create_run("TestRunCreate").unique(name).run()
    assert third_id != first_id
    await worker.wait_for_run(third_id, timeout=WAIT)
    assert received == ["hello world!", "no args given"]


def test_run_queue() -> None:
    """Go #9 TestRunQueue: the local queue pops in due-time order; peek equals pop.

    Ten items "9" down to "0" are pushed, each due at the current time when pushed, so "9" is
    the earliest.  (The times are made strictly increasing, so two pushes within the same clock
    tick cannot tie.)  Popping all ten, the head's due time seen just before each pop is the
    popped item's due time, and the order is **strictly** 9, 8, ..., 0 — Go's test only
    compared the sets; its reference asks a port for the strict order.
    """
    queue = LocalQueue()
    due_of: dict[int, datetime] = {}
    previous: datetime | None = None
    for row_id in range(9, -1, -1):
        due = datetime.now(UTC)
        if previous is not None and due <= previous:
            due = previous + timedelta(microseconds=1)
        due_of[row_id] = previous = due
        assert queue.push(row_id, due) is True
    assert len(queue) == 10

    far_future = datetime.now(UTC) + timedelta(days=1)
    popped: list[int] = []
    while len(queue):
        peeked = queue.next_due()
        items = queue.pop_due(far_future, 1)
        assert len(items) == 1
        assert due_of[items[0]] == peeked
        popped.append(items[0])

    assert popped == [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]
    assert queue.next_due() is None
    assert queue.pop_due(far_future, 10) == []


def test_run_queue_unique() -> None:
    """Go #10 TestRunQueueUnique: pushing the same ten items twice queues them once.

    Ten distinct items due at now + i seconds are pushed, then the same ten again (each repeat
    push reports False).  Exactly ten items pop out, "0" to "9", and nothing is left.
    """
    queue = LocalQueue()
    now = datetime.now(UTC)
    for i in range(10):
        assert queue.push(i, now + timedelta(seconds=i)) is True
    for i in range(10):
        assert queue.push(i, now + timedelta(seconds=i)) is False
    assert len(queue) == 10

    # Nothing is due yet at ``now - 1 s``; everything is at ``now + 20 s``.
    assert queue.pop_due(now - timedelta(seconds=1), 100) == []
    popped = queue.pop_due(now + timedelta(seconds=20), 100)
    assert popped == list(range(10))
    assert len(queue) == 0
    assert queue.pop_due(now + timedelta(seconds=20), 100) == []
