"""PostgreSQL LISTEN/NOTIFY: hear ``cancel_run`` at once on the instance running the run.

Elsewhere (and whenever the listening connection is down) the owner's periodic check at
every heartbeat finds the flag instead, so a notification is only ever a shortcut.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ._store._dialect import DRIVER_ERRORS


class CancelListener:
    """Holds one pooled connection LISTENing on the instance's cancel channel."""

    def __init__(
        self,
        engine: AsyncEngine,
        channel: str,
        instance_id: int,
        on_cancel: Callable[[int], None],
        logger: logging.Logger,
    ) -> None:
        self._engine = engine
        self._channel = channel
        self._id = instance_id
        self._on_cancel = on_cancel
        self._log = logger
        self._conn: AsyncConnection | None = None
        self._driver: Any = None

    async def ensure(self) -> None:
        """Listen, or listen again if the connection was lost; errors are logged, not raised."""
        if self._driver is not None and not self._driver.is_closed():
            return
        await self.stop()
        try:
            conn = await self._engine.connect()
            driver: Any = (await conn.get_raw_connection()).driver_connection
            await driver.add_listener(self._channel, self._notified)
        except DRIVER_ERRORS as exc:
            self._log.warning("jobsd: cannot listen for cancels: %s", exc, extra={"instance_id": self._id})
            return
        self._conn, self._driver = conn, driver

    async def stop(self) -> None:
        conn, driver, self._conn, self._driver = self._conn, self._driver, None, None
        if conn is None:
            return
        try:
            if not driver.is_closed():
                await driver.remove_listener(self._channel, self._notified)
            await conn.close()
        except DRIVER_ERRORS:
            await conn.invalidate()

    def _notified(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        owner, _, row_id = payload.partition(":")
        if owner == str(self._id) and row_id.isdigit():
            self._on_cancel(int(row_id))
