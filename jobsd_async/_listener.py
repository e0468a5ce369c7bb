"""PostgreSQL LISTEN/NOTIFY: wake-ups for new rows, and ``cancel_run`` at once.

Every insert of runs notifies ``{prefix}new`` (in the inserting transaction, so only on
commit): listening instances try a claim at once instead of at their next poll.
``cancel_run`` notifies ``{prefix}cancel`` with ``owner:row``.  Both are shortcuts only: the
poller and the heartbeat's cancel check remain, and cover any time the listening
connection is down (it is re-established at every heartbeat).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine


class PgListener:
    """Holds one pooled connection LISTENing on the (new rows, cancels) channels."""

    def __init__(
        self,
        engine: AsyncEngine,
        channels: tuple[str, str],
        instance_id: int,
        *,
        on_new: Callable[[], None],
        on_cancel: Callable[[int], None],
        logger: logging.Logger,
    ) -> None:
        self._engine = engine
        self._new, self._cancel = channels
        self._id = instance_id
        self._on_new = on_new
        self._on_cancel = on_cancel
        self._log = logger
        self._conn: AsyncConnection | None = None
        self._driver: Any = None

    async def ensure(self) -> None:
        """Listen, or listen again if the connection was lost; errors are logged, not raised."""
        if self._driver is not None and not self._driver.is_closed():
            return
        await self.stop()
        conn = None
        try:
            conn = await self._engine.connect()
            driver: Any = (await conn.get_raw_connection()).driver_connection
            await driver.add_listener(self._new, self._new_rows)
            await driver.add_listener(self._cancel, self._cancelled)
        except Exception as exc:  # the driver's own errors too: a pooled connection found dead
            self._log.warning("jobsd: cannot LISTEN, polling only: %s", exc, extra={"instance_id": self._id})
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.invalidate()
                with contextlib.suppress(Exception):
                    await conn.close()
            return
        self._conn, self._driver = conn, driver

    async def stop(self) -> None:
        conn, driver, self._conn, self._driver = self._conn, self._driver, None, None
        if conn is None:
            return
        try:
            if not driver.is_closed():
                await driver.remove_listener(self._new, self._new_rows)
                await driver.remove_listener(self._cancel, self._cancelled)
            else:
                await conn.invalidate()
            await conn.close()
        except Exception:
            with contextlib.suppress(Exception):
                await conn.invalidate()
            with contextlib.suppress(Exception):
                await conn.close()

    def _new_rows(self, _conn: object, _pid: int, _channel: str, _payload: str) -> None:
        self._on_new()

    def _cancelled(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        owner, _, row_id = payload.partition(":")
        if owner == str(self._id) and row_id.isdigit():
            self._on_cancel(int(row_id))
