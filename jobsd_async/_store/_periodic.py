"""The SQL of periodic jobs: who reconciles each job, its live chain, and rewriting it.

Which instances declare periodic jobs is recorded in their row's ``job_signatures`` (JSON,
job name -> fingerprint) under the key :data:`PERIODIC_KEY`, which no job name can be
(names have no commas).  Releases that predate periodic jobs read only their jobs' keys and
never see it; their rows lack it, so they are never chosen to reconcile.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from .._runs import CANCELLED_TEXT
from ._create import notify_new
from ._resurrect import instance_gone
from ._rows import RunRow, Store

PERIODIC_KEY = ",periodic"
"""The key of ``job_signatures`` listing the jobs an instance declares periodic."""


def signatures(jobs: Mapping[str, str], periodic: Collection[str]) -> str:
    """The ``job_signatures`` text of an instance: its jobs' fingerprints and its periodic jobs."""
    return json.dumps({**jobs, PERIODIC_KEY: sorted(periodic)}, separators=(",", ":"))


async def reconcilers(store: Store, conn: AsyncConnection) -> dict[str, int]:
    """For each job, the instance that reconciles its periodic chain.

    That is the newest (highest id) live instance with workers that registered the job and
    knows periodic jobs: during a rolling deploy the newest code decides, and an instance
    that only creates runs (``workers=0``) never does.
    """
    instances = store.instances
    rows = await conn.execute(
        select(instances.c.id, instances.c.job_signatures).where(
            instances.c.workers > 0, ~instance_gone(store)
        )
    )
    chosen: dict[str, int] = {}
    for instance_id, text in rows:
        try:
            found = json.loads(text) if text else {}
        except ValueError:
            continue
        if not isinstance(found, dict) or PERIODIC_KEY not in found:
            continue
        for job in found:
            if job != PERIODIC_KEY and instance_id > chosen.get(job, 0):
                chosen[job] = int(instance_id)
    return chosen


async def live_chains(store: Store, conn: AsyncConnection, names: Collection[str]) -> dict[str, RunRow]:
    """The open row (pending or running) holding each of these unique names, by name."""
    if not names:
        return {}
    runs = store.runs
    rows = await conn.execute(select(runs).where(runs.c.name_active.in_(sorted(names))))
    return {row.name: row for row in (RunRow.of(m) for m in rows.mappings())}


async def redefine_pending(store: Store, conn: AsyncConnection, row_id: int, values: dict[str, Any]) -> bool:
    """Write ``values`` (the definition in code, maybe a new due time) into a pending row.

    Conditional on the row still being pending, so a claim that got there first wins and
    the attempt runs as it was defined (the next reconcile sees its follow-up).
    """
    runs = store.runs
    result = await conn.execute(
        update(runs)
        .where(runs.c.id == row_id, runs.c.run_started_at.is_(None), runs.c.run_completed_at.is_(None))
        .values(**values)
    )
    if result.rowcount and "run_at" in values:
        await notify_new(store, conn)  # the due time may have moved earlier: poll again
    return bool(result.rowcount)


async def end_pending(store: Store, conn: AsyncConnection, row_id: int) -> bool:
    """Close a pending row as cancelled (its chain ends and frees its unique name)."""
    runs = store.runs
    now = store.dialect.now()
    result = await conn.execute(
        update(runs)
        .where(runs.c.id == row_id, runs.c.run_started_at.is_(None), runs.c.run_completed_at.is_(None))
        .values(
            run_completed_at=now,
            run_completed_error=CANCELLED_TEXT,
            cancel_requested_at=now,
            name_active=None,
        )
    )
    return bool(result.rowcount)
