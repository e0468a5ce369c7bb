"""The ``{prefix}instances`` row: written at up(), at every heartbeat and at down()."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from .._config import MAX_NAME_LENGTH, Config, JobLimits
from . import _limits, _periodic
from ._resurrect import instance_gone
from ._rows import Store


@dataclass(slots=True)
class Counters:
    """What this instance did since up(); see SPEC §3.9."""

    runs_started: int = 0
    runs_rescheduled: int = 0
    runs_timed_out: int = 0
    runs_timed_out_res: int = 0
    runs_errors: int = 0


async def register(
    store: Store,
    conn: AsyncConnection,
    config: Config,
    jobs: Mapping[str, str],
    schedules: list[str],
    periodic: Collection[str] = (),
    limits: Mapping[str, JobLimits | None] | None = None,
) -> int:
    """Insert this instance's row and declare the limits of its jobs; return its id.

    ``jobs`` maps each job to its fingerprint; ``periodic`` names the jobs declared periodic;
    ``limits`` gives each job its limits (None: it has none).
    """
    now = store.dialect.now()
    result = await conn.execute(
        insert(store.instances).values(
            workers=config.workers,
            auto_migrate=config.auto_migrate,
            supported_jobs=",".join(jobs),
            job_signatures=_periodic.signatures(jobs, periodic),
            host=socket.gethostname()[:MAX_NAME_LENGTH],
            pid=os.getpid(),
            supported_schedules=",".join(schedules),
            poll_interval=config.poll_interval,
            poll_limit=config.poll_limit,
            timeout_check=config.timeout_check,
            heartbeat_interval=config.heartbeat_interval,
            run_timeout=config.run_timeout,
            retries_on_timeout_limit=config.retries_timeout_limit,
            retries_on_error_limit=config.retries_error_limit,
            last_seen_at=now,
            created_at=now,
            queues=None if config.queues is None else json.dumps(list(config.queues)),
            **asdict(Counters()),
        )
    )
    instance_id = int(result.inserted_primary_key[0])  # type: ignore[index]
    if config.workers > 0:
        for job, declared in (limits or {}).items():
            await _limits.declare(store, conn, job, declared, instance_id=instance_id)
    return instance_id


async def beat(
    store: Store,
    conn: AsyncConnection,
    instance_id: int,
    counters: Counters,
    *,
    shutdown: bool = False,
) -> None:
    """Write ``last_seen_at`` and the counters (and ``shutdown_at`` when shutting down)."""
    now = store.dialect.now()
    values = dict(asdict(counters), last_seen_at=now)
    if shutdown:
        values["shutdown_at"] = now
    await conn.execute(update(store.instances).where(store.instances.c.id == instance_id).values(values))


async def live_versions(store: Store, conn: AsyncConnection, job: str, *, besides: int) -> set[str]:
    """Fingerprints of ``job`` on live instances with workers, other than ``besides``.

    An instance that registered ``job`` under another fingerprint runs another version of
    it (a rolling deploy in progress).
    """
    instances = store.instances
    rows = await conn.execute(
        select(instances.c.job_signatures).where(
            instances.c.id != besides, instances.c.workers > 0, ~instance_gone(store)
        )
    )
    found: set[str] = set()
    for (text,) in rows:
        try:
            signatures = json.loads(text) if text else {}
        except ValueError:
            continue
        if isinstance(signatures, dict) and isinstance(signatures.get(job), str):
            found.add(signatures[job])
    return found
