"""Finding due work (the poll) and claiming it.

The poll only tells an instance *when* to try; the claim decides what it gets.  A claim
is one UPDATE that takes pending rows only while they are still pending and due by the
database clock, so exactly one instance ever wins a given row.  Runs of jobs with
cluster-wide limits are claimed apart, one job at a time across the cluster (see
:func:`claim_limited`).
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import (
    BigInteger,
    BindParameter,
    ColumnElement,
    Executable,
    Integer,
    Select,
    all_,
    bindparam,
    case,
    exists,
    func,
    literal,
    null,
    select,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection

from .._config import MAX_COUNT, MAX_DURATION, JobLimits
from . import _driver, _limits
from ._create import notify_new
from ._rows import RunRow, Store, row_columns, schedule_computable

Queues = tuple[str, ...] | None
"""The queues an instance takes runs from (None: all)."""


async def poll_due(
    store: Store,
    conn: AsyncConnection,
    *,
    jobs: Collection[str],
    schedules: Collection[str],
    horizon: float,
    limit: int,
    queues: Queues = None,
) -> list[tuple[int, datetime]]:
    """Ids and due times of pending rows this instance can run, due within ``horizon`` s
    (not in paused queues)."""
    if not jobs:
        return []
    stmt = poll_statement(store, jobs, schedules, horizon=horizon, limit=limit, queues=queues)
    return [(int(r.id), r.run_at) for r in await conn.execute(stmt, await _paused_params(store, conn))]


def poll_statement(
    store: Store,
    jobs: Collection[str],
    schedules: Collection[str],
    *,
    horizon: float,
    limit: int,
    queues: Queues = None,
) -> Select[Any]:
    runs = store.runs
    dialect = store.dialect
    return (
        select(runs.c.id, runs.c.run_at)
        .where(
            runs.c.run_started_at.is_(None),
            dialect.among(runs.c.job, jobs),
            runs.c.run_completed_at.is_(None),
            schedule_computable(store, schedules),
            runs.c.run_at <= dialect.add_seconds(dialect.now(), literal(horizon)),
            *_routable(store, queues),
        )
        .order_by(runs.c.run_at, runs.c.id)
        .limit(limit)
    )


async def claim_due(
    store: Store,
    conn: AsyncConnection,
    *,
    jobs: Collection[str],
    schedules: Collection[str],
    limit: int,
    instance_id: int,
    avoid: Collection[int] = (),
    queues: Queues = None,
    above: int | None = None,
) -> list[RunRow]:
    """Claim up to ``limit`` pending rows of these jobs that are due by the database clock
    (with ``above``, only those of a higher priority).

    Claims pick the highest priority first, then the soonest due, skip rows another claimer
    has locked (``SKIP LOCKED``; SQLite has one writer at a time) and rows in paused queues
    (or, with ``queues``, outside them), and update only rows still pending and due, so a
    row is only ever claimed once.  Rows in ``avoid`` (handed back by this instance) are
    skipped.  Jobs with limits are claimed by :func:`claim_limited` instead.
    """
    dialect = store.dialect
    jobs, schedules, avoiding = tuple(jobs), tuple(schedules), bool(avoid)
    params: dict[str, Any] = {"instance_id": instance_id, "limit": limit}
    if avoiding:
        params["avoid"] = list(avoid)
    if above is not None:
        params["above"] = above
    shape: _Shape = (jobs, schedules, queues, avoiding, above is not None)
    if not dialect.update_returning:
        return await _pick_then_claim(store, conn, shape, params)
    stmt = store.statement(("claim", *shape), lambda: _claim_statement(store, shape))
    if dialect.is_postgresql and _driver.drives(conn):
        # The claim is the burn-down's hot statement (see _driver).  (SQLite's names its
        # jobs and queues in lists SQLAlchemy expands: it runs through SQLAlchemy.)
        driven = store.statement(
            ("claim on the driver", *shape),
            lambda: _driver.DriverStatement(stmt, row_columns(store.runs), conn.dialect),
        )
        return await _driver.fetch(conn, driven, params, make=RunRow._make)
    return list(map(RunRow._make, await conn.execute(stmt, params)))


_Shape = tuple[tuple[str, ...], tuple[str, ...], Queues, bool, bool]
"""What a claim statement is built for: jobs, schedules, queues, whether it avoids ids and
whether it takes only priorities above a given one."""


async def _pick_then_claim(
    store: Store, conn: AsyncConnection, shape: _Shape, params: dict[str, Any]
) -> list[RunRow]:
    """MySQL: lock the claimable rows to take, skipping locked ones, then claim and read them.

    (MySQL cannot select from the table an UPDATE changes, nor return what it changed.)
    """
    jobs, schedules, queues, _, _ = shape
    params.update(await _paused_params(store, conn))
    pick = store.statement(("pick", *shape), lambda: _pick(store, shape).with_for_update(skip_locked=True))
    ids = [int(i) for i in (await conn.execute(pick, params)).scalars()]
    return await _claim_ids(store, conn, ids, params["instance_id"], (jobs, schedules, queues, False, False))


def _pick(store: Store, shape: _Shape) -> Select[Any]:
    """:func:`pick_statement` for a claim's shape, taking as many as the ``limit`` parameter."""
    jobs, schedules, queues, avoiding, above = shape
    limit = bindparam("limit", type_=Integer)
    return pick_statement(store, jobs, schedules, limit=limit, avoiding=avoiding, queues=queues, above=above)


async def _claim_ids(
    store: Store,
    conn: AsyncConnection,
    ids: list[int],
    instance_id: int,
    shape: _Shape,
    *,
    limited: bool = False,
) -> list[RunRow]:
    """Claim the rows ``ids`` (those still claimable) and return them."""
    if not ids:
        return []
    runs = store.runs
    params = {"instance_id": instance_id, "ids": ids}
    claim = store.statement(
        ("claim ids", *shape, limited), lambda: _claim_ids_statement(store, shape, limited=limited)
    )
    if store.dialect.update_returning:
        return list(map(RunRow._make, await conn.execute(claim, params)))
    await conn.execute(claim, params)
    claimed = store.statement(
        "claimed",
        lambda: select(*row_columns(runs)).where(
            runs.c.id.in_(bindparam("ids", expanding=True)), runs.c.run_started_by == bindparam("instance_id")
        ),
    )
    result = await conn.execute(claimed, {"instance_id": instance_id, "ids": ids})
    return list(map(RunRow._make, result))


def pick_statement(
    store: Store,
    jobs: Collection[str],
    schedules: Collection[str],
    *,
    limit: int | BindParameter[int],
    avoiding: bool = False,
    queues: Queues = None,
    above: bool = False,
) -> Select[Any]:
    """The ids a claim takes: claimable rows, highest priority and soonest first (without
    the ``avoid`` ids; with ``above``, of a priority above the parameter ``above``)."""
    runs = store.runs
    stmt = select(runs.c.id).where(*_claimable(store, jobs, schedules, queues))
    if avoiding:
        stmt = stmt.where(_not_avoided(store))
    if above:
        stmt = stmt.where(runs.c.priority > bindparam("above", type_=Integer))
    return stmt.order_by(*_claim_order(store)).limit(limit)


def _not_avoided(store: Store) -> ColumnElement[bool]:
    """Rows whose ids are not in the ``avoid`` parameter (on PostgreSQL one array, as in
    ``Dialect.among``)."""
    runs = store.runs
    if store.dialect.is_postgresql:
        return runs.c.id != all_(bindparam("avoid", type_=postgresql.ARRAY(BigInteger)))
    return runs.c.id.not_in(bindparam("avoid", expanding=True))


def _claim_order(store: Store) -> tuple[ColumnElement[Any], ...]:
    runs = store.runs
    return runs.c.priority.desc(), runs.c.run_at, runs.c.id


def _claimable(
    store: Store, jobs: Collection[str], schedules: Collection[str], queues: Queues, *, writing: bool = False
) -> tuple[ColumnElement[bool], ...]:
    runs = store.runs
    return (
        runs.c.run_started_at.is_(None),
        runs.c.run_completed_at.is_(None),
        runs.c.run_at <= store.dialect.now(),
        store.dialect.among(runs.c.job, jobs),
        schedule_computable(store, schedules),
        *_routable(store, queues, writing=writing),
    )


def _routable(store: Store, queues: Queues, *, writing: bool = False) -> tuple[ColumnElement[bool], ...]:
    """Rows in the queues an instance takes (all: None), and not in a paused queue.

    MySQL's picks read the paused queues first (:func:`_paused_params`): a subquery of a
    locking read that skips locked rows could skip the row of a queue being paused.  Its
    claiming UPDATE (``writing``) asks again, in a subquery that InnoDB reads locking: it
    waits for a pause being committed and sees it, so no run of a queue starts once
    ``pause_queue`` has returned.
    """
    runs, paused_queues = store.runs, store.queues
    paused: Any
    if store.dialect.is_mysql and not writing:
        paused = bindparam("paused", expanding=True)
    else:
        paused = select(paused_queues.c.name).where(paused_queues.c.paused_at.is_not(None))
    routable: list[ColumnElement[bool]] = [runs.c.queue.not_in(paused)]
    if queues is not None:
        routable.append(store.dialect.among(runs.c.queue, queues))
    return tuple(routable)


async def _paused_params(store: Store, conn: AsyncConnection) -> dict[str, Any]:
    if not store.dialect.is_mysql:
        return {}
    return {"paused": await paused_queues(store, conn)}


async def paused_queues(store: Store, conn: AsyncConnection) -> list[str]:
    """The names of the paused queues."""
    queues = store.queues
    stmt = store.statement(
        "paused queues", lambda: select(queues.c.name).where(queues.c.paused_at.is_not(None))
    )
    return [str(name) for name in (await conn.execute(stmt)).scalars()]


def _claim_values(store: Store) -> dict[str, Any]:
    runs = store.runs
    dialect = store.dialect
    now = dialect.now()
    # Values in a row may have been written by anyone: a timeout that is not a positive
    # number, or too large to add to a timestamp, and a count at the column's maximum must
    # not make the statement fail, or no instance could claim anything again.
    timeout = runs.c.run_timeout
    return {
        "run_started_at": now,
        "run_started_by": bindparam("instance_id", type_=runs.c.run_started_by.type),
        "run_total_count": case(
            (runs.c.run_total_count < MAX_COUNT, runs.c.run_total_count + 1), else_=runs.c.run_total_count
        ),
        "run_timeout_at": case(
            (timeout > 0, dialect.add_seconds(now, dialect.least(timeout, literal(MAX_DURATION)))),
            else_=null(),
        ),
    }


def _claim_statement(store: Store, shape: _Shape) -> Executable:
    """PostgreSQL and SQLite: pick and claim in one UPDATE that returns the claimed rows."""
    runs = store.runs
    chosen = _pick(store, shape)
    stmt = update(runs)
    if store.dialect.is_postgresql:
        # Materialised, so the planner cannot re-run the SKIP LOCKED pick per outer row
        # (which could pick more than ``limit`` rows).
        picked = chosen.with_for_update(skip_locked=True).cte("picked").prefix_with("MATERIALIZED")
        stmt = stmt.where(runs.c.id.in_(select(picked.c.id)))
    else:
        stmt = stmt.where(runs.c.id.in_(chosen.scalar_subquery()))
    return stmt.values(**_claim_values(store)).returning(*row_columns(runs))


def _claim_ids_statement(store: Store, shape: _Shape, *, limited: bool) -> Executable:
    """Claim given ids (a MySQL pick's locked rows, a limited claim's choice), each only if
    it is still claimable."""
    jobs, schedules, queues, _, _ = shape
    runs = store.runs
    values = _claim_values(store)
    if limited:
        # A limited job's runs created without a key (before the job had limits, or by an
        # operator) count under the job-wide key from their start on.
        values["limit_key"] = func.coalesce(runs.c.limit_key, "")
    claimable = _claimable(store, jobs, schedules, queues, writing=True)
    stmt = update(runs).where(runs.c.id.in_(bindparam("ids", expanding=True)), *claimable).values(**values)
    return stmt.returning(*row_columns(runs)) if store.dialect.update_returning else stmt


async def top_priority(
    store: Store,
    conn: AsyncConnection,
    *,
    jobs: Collection[str],
    schedules: Collection[str],
    queues: Queues = None,
) -> int | None:
    """The highest priority among claimable rows of these jobs (None: none is due)."""
    runs = store.runs
    shape: _Shape = (tuple(jobs), tuple(schedules), queues, False, False)
    stmt = store.statement(
        ("top priority", *shape),
        lambda: (
            select(runs.c.priority)
            .where(*_claimable(store, *shape[:3]))
            .order_by(*_claim_order(store))
            .limit(1)
        ),
    )
    found = (await conn.execute(stmt, await _paused_params(store, conn))).scalar()
    return None if found is None else int(found)


async def claim_limited(
    store: Store,
    conn: AsyncConnection,
    *,
    job: str,
    limits: JobLimits,
    schedules: Collection[str],
    limit: int,
    instance_id: int,
    avoid: Collection[int] = (),
    queues: Queues = None,
) -> Limited:
    """Claim up to ``limit`` due rows of ``job``, a job with limits, within those limits;
    and whether the limits held back due rows.

    Claims of one limited job take turns: each locks the job's row in ``{prefix}limits``
    (SQLite: the database) before it counts, per limit key, the job's running runs and its
    starts within the rate limit's window, so no two claimers count the same free slot.
    Runs count until they finish, however they finish: a dead instance's runs free their
    slots when they are taken over.
    """
    # First: a read before the lock would fix MySQL's snapshot (REPEATABLE READ) before the
    # previous holder's claims were committed, and count without them.
    if not await _limits.lock(store, conn, job):
        return Limited([], True)  # another instance is claiming this job's runs right now
    avoiding = bool(avoid)
    shape: _Shape = ((job,), tuple(schedules), queues, avoiding, False)
    paused = await _paused_params(store, conn)
    if avoiding:
        paused = {**paused, "avoid": list(avoid)}
    if not limits.per_key:
        # Job-wide: count once, then take the soonest rows that fit, along the claim index.
        free = await _free_slots(store, conn, job, limits)
        if free < limit:
            limit = free
        chosen = store.statement(
            ("limited pick", *shape),
            lambda: pick_statement(
                store,
                (job,),
                schedules,
                limit=bindparam("limit", type_=Integer),
                queues=queues,
                avoiding=avoiding,
            ),
        )
    else:
        chosen = store.statement(
            ("limited pick", *shape, limits), lambda: _limited_pick(store, limits, shape)
        )
    ids = (
        []
        if limit <= 0
        else [int(i) for i in (await conn.execute(chosen, {"limit": limit, **paused})).scalars()]
    )
    claimed = await _claim_ids(store, conn, ids, instance_id, shape, limited=True)
    if len(claimed) >= limit:
        return Limited(claimed, False)
    any_due = store.statement(
        ("limited any due", *shape),
        lambda: select(
            exists(pick_statement(store, (job,), schedules, limit=1, avoiding=avoiding, queues=queues))
        ),
    )
    return Limited(claimed, bool((await conn.execute(any_due, paused)).scalar()))


async def _free_slots(store: Store, conn: AsyncConnection, job: str, limits: JobLimits) -> int:
    """How many more runs of ``job`` its job-wide limits let start now."""
    runs, dialect = store.runs, store.dialect
    started = (runs.c.job == job, runs.c.limit_key.is_not(None), runs.c.run_started_at.is_not(None))
    free = MAX_COUNT
    if limits.max_running is not None:
        # Every running run counts, also one started without a key (before an upgrade).
        busy = select(func.count()).where(
            runs.c.job == job, runs.c.run_started_at.is_not(None), runs.c.run_completed_at.is_(None)
        )
        free = min(free, limits.max_running - int((await conn.execute(busy)).scalar() or 0))
    if limits.rate is not None:
        count, per = limits.rate
        since = dialect.add_seconds(dialect.now(), literal(-per))
        recent = select(func.count()).where(*started, runs.c.run_started_at > since)
        free = min(free, count - int((await conn.execute(recent)).scalar() or 0))
    return free


class Limited(NamedTuple):
    """What a limited claim won, and whether its limits held back due rows."""

    rows: list[RunRow]
    held_back: bool


def _limited_pick(store: Store, limits: JobLimits, shape: _Shape) -> Select[Any]:
    """The ids a limited claim takes: claimable rows in claim order, each key's only while
    its running runs (and its starts in the rate window) stay within the limits."""
    jobs, schedules, queues, avoiding, _ = shape
    runs, dialect = store.runs, store.dialect
    (job,) = jobs
    key = func.coalesce(runs.c.limit_key, "")
    candidates = select(
        runs.c.id,
        runs.c.priority,
        runs.c.run_at,
        key.label("key"),
        func.row_number().over(partition_by=key, order_by=_claim_order(store)).label("nth"),
    ).where(*_claimable(store, jobs, schedules, queues))
    if avoiding:
        candidates = candidates.where(_not_avoided(store))
    due = candidates.subquery("due")
    stmt = select(due.c.id).select_from(due)
    started = runs.c.run_started_at.is_not(None)
    per_key = runs.c.job == job, runs.c.limit_key.is_not(None), started
    if limits.max_running is not None:
        # Every running run counts, also one started without a key (before an upgrade).
        busy = (
            select(key.label("limit_key"), func.count().label("n"))
            .where(runs.c.job == job, started, runs.c.run_completed_at.is_(None))
            .group_by(key)
            .subquery("busy")
        )
        stmt = stmt.outerjoin(busy, busy.c.limit_key == due.c.key).where(
            due.c.nth + func.coalesce(busy.c.n, 0) <= limits.max_running
        )
    if limits.rate is not None:
        count, per = limits.rate
        since = dialect.add_seconds(dialect.now(), literal(-per))
        recent = (
            select(runs.c.limit_key, func.count().label("n"))
            .where(*per_key, runs.c.run_started_at > since)
            .group_by(runs.c.limit_key)
            .subquery("recent")
        )
        stmt = stmt.outerjoin(recent, recent.c.limit_key == due.c.key).where(
            due.c.nth + func.coalesce(recent.c.n, 0) <= count
        )
    return stmt.order_by(due.c.priority.desc(), due.c.run_at, due.c.id).limit(
        bindparam("limit", type_=Integer)
    )


async def hand_back(
    store: Store, conn: AsyncConnection, row_id: int, *, instance_id: int, delay: float
) -> bool:
    """Return a row ``instance_id`` claimed but cannot run to pending, due ``delay`` s from now.

    Undoes the claim (the attempt never started, so it counts for nothing); False if the
    row is no longer open and ours.
    """
    runs, dialect = store.runs, store.dialect
    result = await conn.execute(
        update(runs)
        .where(runs.c.id == row_id, runs.c.run_started_by == instance_id, runs.c.run_completed_at.is_(None))
        .values(
            run_started_at=None,
            run_started_by=None,
            run_timeout_at=None,
            run_total_count=case((runs.c.run_total_count > 0, runs.c.run_total_count - 1), else_=0),
            run_at=dialect.add_seconds(dialect.now(), literal(delay)),
        )
    )
    if result.rowcount != 1:
        return False
    await notify_new(store, conn)
    return True
