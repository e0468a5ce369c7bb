"""Which database errors mean "this data is refused" (a completion is then written in a
simpler form) and which mean "try the same write later"."""

from __future__ import annotations

from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import create_async_engine

from jobsd_async._store._dialect import Dialect


class _PgError(Exception):
    def __init__(self, sqlstate: str, message: str) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


def _error(sqlstate: str, message: str) -> DBAPIError:
    return DBAPIError("statement", {}, _PgError(sqlstate, message))


async def test_postgresql_refusals() -> None:
    engine = create_async_engine("postgresql+asyncpg://nobody@127.0.0.1:1/none")  # never connects
    try:
        dialect = Dialect(engine)
        assert dialect.refuses(_error("22021", 'invalid byte sequence for encoding "UTF8": 0x00'))
        assert dialect.refuses(_error("54000", "index row size 9000 exceeds maximum 2712"))
        # The completion statement announces its runs: a full notification queue must not
        # turn a success into a failure; the write waits for the queue to drain instead.
        assert not dialect.refuses(_error("54000", "too many notifications in the NOTIFY queue"))
        assert not dialect.refuses(_error("57P01", "terminating connection due to administrator command"))
    finally:
        await engine.dispose()
