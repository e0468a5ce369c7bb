"""Progress: what a running job reports about itself, stored in its row."""

from __future__ import annotations

from sqlalchemy import bindparam
from sqlalchemy.ext.asyncio import AsyncConnection

from ._rows import Store


async def set_progress(store: Store, conn: AsyncConnection, row_id: int, owner: int, progress: str) -> bool:
    """Store ``progress`` (JSON text) in row ``row_id`` while ``owner`` still runs it."""
    runs = store.runs

    def build() -> object:
        return (
            runs.update()
            .where(
                runs.c.id == bindparam("p_row"),
                runs.c.run_started_by == bindparam("p_owner"),
                runs.c.run_completed_at.is_(None),
            )
            .values(run_progress=bindparam("p_progress"))
        )

    statement = store.statement("set_progress", build)
    result = await conn.execute(statement, {"p_row": row_id, "p_owner": owner, "p_progress": progress})  # type: ignore[call-overload]
    return bool(result.rowcount == 1)
