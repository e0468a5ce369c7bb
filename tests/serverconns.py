"""The server-side connections of one engine, recorded as they open, to count or kill them.

Only connections recorded here are ever killed: other test suites may be using the same
servers.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, event, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine


@dataclass
class ServerConnections:
    """The server-side connections one engine opened, recorded as it opens them.

    PostgreSQL connections are known by ``(pid, backend_start)``, so a pid the server has
    since given to someone else's connection is never killed; MariaDB connection ids are
    not reused.
    """

    backend: str
    killer: AsyncEngine  # a separate engine, never instrumented, never killed
    ids: list[tuple[int, datetime | None]] = field(default_factory=list)
    killed: int = 0

    def instrument(self, engine: AsyncEngine) -> None:
        event.listen(engine.sync_engine, "connect", self._on_connect)

    def _on_connect(self, dbapi_connection: Any, _record: Any) -> None:
        # The async drivers' adapters are sync-wrapped inside pool events.
        cursor = dbapi_connection.cursor()
        try:
            if self.backend == "postgresql":
                cursor.execute("SELECT pid, backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()")
                pid, started = cursor.fetchone()
                self.ids.append((int(pid), started))
            else:
                cursor.execute("SELECT CONNECTION_ID()")
                self.ids.append((int(cursor.fetchone()[0]), None))
        finally:
            cursor.close()
        dbapi_connection.rollback()

    async def kill(self, only: set[int] | None = None) -> int:
        """Terminate the recorded connections still open (those in ``only``); how many."""
        targets = [(i, s) for i, s in self.ids if only is None or i in only]
        if not targets:
            return 0
        done = 0
        async with self.killer.connect() as conn:
            if self.backend == "postgresql":
                result = await conn.execute(
                    text(
                        "SELECT pg_terminate_backend(a.pid) FROM pg_stat_activity AS a"
                        " JOIN unnest(CAST(:pids AS integer[]), CAST(:starts AS timestamptz[]))"
                        " AS k(pid, started) ON a.pid = k.pid AND a.backend_start = k.started"
                    ),
                    {"pids": [i for i, _ in targets], "starts": [s for _, s in targets]},
                )
                done = sum(1 for (ok,) in result if ok)
            else:
                wanted = sorted({i for i, _ in targets})
                result = await conn.execute(
                    text("SELECT ID FROM information_schema.PROCESSLIST WHERE ID IN :ids").bindparams(
                        bindparam("ids", expanding=True)
                    ),
                    {"ids": wanted},
                )
                for (conn_id,) in result.all():
                    try:
                        await conn.exec_driver_sql(f"KILL CONNECTION {int(conn_id)}")
                        done += 1
                    except DBAPIError as exc:
                        if not (exc.orig is not None and exc.orig.args and exc.orig.args[0] == 1094):
                            raise  # 1094: Unknown thread id, it ended meanwhile
            await conn.rollback()
        self.killed += done
        return done

    async def alive(self) -> set[int]:
        """Ids of the recorded connections the server still has."""
        async with self.killer.connect() as conn:
            if self.backend == "postgresql":
                rows = (await conn.execute(text("SELECT pid, backend_start FROM pg_stat_activity"))).all()
                mine = set(self.ids)
                return {int(p) for p, s in rows if (int(p), s) in mine}
            rows = (await conn.execute(text("SELECT ID FROM information_schema.PROCESSLIST"))).all()
            return {int(i) for (i,) in rows} & {i for i, _ in self.ids}

    async def listeners(self) -> set[int]:
        """PostgreSQL: recorded connections that are LISTEN connections (one per process and
        database, shared by its instances; only this test's connections are recorded)."""
        async with self.killer.connect() as conn:
            rows = (
                await conn.execute(
                    text("SELECT pid, backend_start FROM pg_stat_activity WHERE application_name LIKE :name"),
                    {"name": "jobsd listener (pid %)"},
                )
            ).all()
        mine = set(self.ids)
        return {int(p) for p, s in rows if (int(p), s) in mine}

    async def killing(self, duration: float, every: float) -> int:
        """Kill every recorded connection, again and again, for ``duration`` seconds; waves that killed."""
        waves = 0
        loop = asyncio.get_running_loop()
        end = loop.time() + duration
        while loop.time() < end:
            if await self.kill():
                waves += 1
            await asyncio.sleep(every)
        return waves
