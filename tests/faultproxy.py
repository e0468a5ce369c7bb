"""An asyncio TCP proxy that can cut the database off: drop every connection and refuse new
ones (an outage), keep them open and let nothing through (a black hole), or lose the
answer to one statement that the server carried out."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlsplit, urlunsplit


class FaultProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.StreamWriter] = set()
        self._down = False
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._losing: tuple[bytes, asyncio.Event, asyncio.Event | None] | None = None
        self._losing_request: tuple[bytes, asyncio.Event] | None = None
        self._after: bytes | None = None
        self._armed: set[asyncio.StreamWriter] = set()  # upstream ends that sent ``_after``
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        self._cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def proxied(self, url: str) -> str:
        """``url`` with its host and port replaced by the proxy's."""
        parts = urlsplit(url)
        credentials = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
        return urlunsplit(parts._replace(netloc=f"{credentials}127.0.0.1:{self.port}"))

    @contextlib.asynccontextmanager
    async def outage(self) -> AsyncIterator[None]:
        """While inside: every open connection is dropped and new ones are refused."""
        self._down = True
        self._cut()
        try:
            yield
        finally:
            self._down = False

    @contextlib.asynccontextmanager
    async def refusing(self) -> AsyncIterator[None]:
        """While inside: new connections are refused; open ones carry on."""
        self._down = True
        try:
            yield
        finally:
            self._down = False

    @contextlib.asynccontextmanager
    async def frozen(self) -> AsyncIterator[None]:
        """While inside: connections stay open but nothing gets through (a black hole)."""
        self._flowing.clear()
        try:
            yield
        finally:
            self._flowing.set()

    @contextlib.contextmanager
    def losing_answer(
        self, marker: bytes, *, hold: asyncio.Event | None = None, after: bytes | None = None
    ) -> Iterator[asyncio.Event]:
        """While inside: the first answer from the server that contains ``marker`` is thrown
        away and its connection dropped (the statement was carried out, the client never
        hears of it); the event is set once that answer arrived.  With ``hold``, the
        connection is dropped only once ``hold`` is set (the loss is noticed late).  With
        ``after``, only an answer on a connection that has sent a request containing
        ``after`` (the text of the statement to lose, sent when it is prepared) counts."""
        lost = asyncio.Event()
        self._losing = (marker, lost, hold)
        self._after = after
        self._armed.clear()
        try:
            yield lost
        finally:
            self._losing = None
            self._after = None

    @contextlib.contextmanager
    def losing_request(self, marker: bytes) -> Iterator[asyncio.Event]:
        """While inside: the first request to the server that contains ``marker`` never
        reaches it; its connection is dropped.  The event is set once that happened."""
        lost = asyncio.Event()
        self._losing_request = (marker, lost)
        try:
            yield lost
        finally:
            self._losing_request = None

    def cut(self) -> None:
        """Drop every open connection (new ones are let through)."""
        self._cut()

    def _cut(self) -> None:
        for writer in list(self._pipes):
            writer.transport.abort()
        self._pipes.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._down:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.transport.abort()
            return
        self._pipes.update((writer, up_writer))
        await asyncio.gather(
            self._pump(reader, up_writer, requests_from=writer),
            self._pump(up_reader, writer, answers_to=up_writer),
        )

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        answers_to: asyncio.StreamWriter | None = None,
        requests_from: asyncio.StreamWriter | None = None,
    ) -> None:
        try:
            while data := await reader.read(65536):
                await self._flowing.wait()
                request = self._losing_request
                if requests_from is not None and request is not None and request[0] in data:
                    self._losing_request = None
                    request[1].set()
                    requests_from.transport.abort()
                    break
                if requests_from is not None and self._after is not None and self._after in data:
                    self._armed.add(writer)
                if (
                    answers_to is not None
                    and self._losing is not None
                    and self._losing[0] in data
                    and (self._after is None or answers_to in self._armed)
                ):
                    _, lost, hold = self._losing
                    self._losing = None
                    lost.set()
                    if hold is not None:
                        await hold.wait()
                    answers_to.transport.abort()
                    break
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self._pipes.discard(writer)
            writer.transport.abort()
