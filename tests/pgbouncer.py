"""A real PgBouncer in transaction pool mode, started in front of a PostgreSQL server for a test.

``running_pgbouncer(server_url)`` starts one on a free 127.0.0.1 port (skipping the test if the
``pgbouncer`` binary is missing, failing it under ``CI=true``) and stops it afterwards;
``PgBouncer.url()`` is the server URL routed through it and ``asyncpg_engine_kwargs()`` the
``create_async_engine`` options asyncpg needs behind a transaction-mode pooler (no prepared
statements that outlive a transaction).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from types import TracebackType
from typing import IO, Any
from uuid import uuid4

import pytest
from conftest import IN_CI
from sqlalchemy.engine import make_url

PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
# pgbouncer refuses to run as root; started by root it switches to this user.
RUN_AS = os.environ.get("JOBSD_TEST_PGBOUNCER_USER", "postgres")
_START_TIMEOUT = 10.0  # seconds for pgbouncer to accept connections
_STOP_TIMEOUT = 5.0  # seconds for pgbouncer to exit after SIGTERM before it is killed
_START_ATTEMPTS = 3  # a free port may be taken between our probe and pgbouncer's bind


def pgbouncer_binary() -> str | None:
    """The pgbouncer executable, or None if it is not installed."""
    return PGBOUNCER if os.path.isfile(PGBOUNCER) and os.access(PGBOUNCER, os.X_OK) else None


def require_pgbouncer() -> str:
    """The pgbouncer executable; skips the test without it (fails it under ``CI=true``)."""
    binary = pgbouncer_binary()
    if binary is None:
        problem = f"pgbouncer is not installed (looked on PATH and at {PGBOUNCER})"
        if IN_CI:
            pytest.fail(f"CI=true and {problem}")
        pytest.skip(problem)
    return binary


def asyncpg_engine_kwargs() -> dict[str, Any]:
    """``create_async_engine`` keyword arguments for asyncpg behind PgBouncer's transaction mode.

    No statement caches, and every prepared statement gets a name of its own, so that none is
    looked up on a server connection other than the one it was prepared on.
    """
    return {
        "connect_args": {
            "statement_cache_size": 0,
            "prepared_statement_cache_size": 0,
            "prepared_statement_name_func": lambda: f"__asyncpg_{uuid4()}__",
        }
    }


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _quoted(value: str) -> str:
    """A value for pgbouncer's auth_file: in double quotes, inner quotes doubled."""
    return '"' + value.replace('"', '""') + '"'


class PgBouncer:
    """One pgbouncer process in front of ``server_url``'s server; ``start()`` then ``stop()``."""

    def __init__(
        self,
        server_url: str,
        *,
        binary: str | None = None,
        pool_mode: str = "transaction",
        pool_size: int = 20,
    ) -> None:
        self._server = make_url(server_url)
        self._binary = binary or PGBOUNCER
        self._pool_mode = pool_mode
        self._pool_size = pool_size
        self._dir: Path | None = None
        self._log: IO[bytes] | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._owner: pwd.struct_passwd | None = None
        self.port = 0

    def url(self, url: str | None = None) -> str:
        """``url`` (default: the server's URL) with its host and port replaced by pgbouncer's."""
        if self.port == 0:
            raise RuntimeError("pgbouncer is not running; start() it first")
        target = self._server if url is None else make_url(url)
        return target.set(host="127.0.0.1", port=self.port).render_as_string(hide_password=False)

    @property
    def log(self) -> str:
        """What pgbouncer has logged so far (for failure messages)."""
        if self._dir is None:
            return ""
        try:
            return (self._dir / "pgbouncer.log").read_text(errors="replace")
        except OSError:
            return ""

    async def start(self) -> None:
        """Start pgbouncer and wait until its port accepts connections; on failure clean up."""
        if self._proc is not None:
            raise RuntimeError("pgbouncer is already started")
        try:
            self._dir = Path(tempfile.mkdtemp(prefix="jobsd-pgbouncer-"))
            as_root = os.geteuid() == 0
            if as_root:
                self._owner = pwd.getpwnam(RUN_AS)
                self._own(self._dir)
            auth = self._dir / "users.txt"
            user, password = self._server.username or "", self._server.password or ""
            auth.write_text(f"{_quoted(user)} {_quoted(password)}\n")
            auth.chmod(0o600)
            self._own(auth)
            self._log = (self._dir / "pgbouncer.log").open("wb")
            for attempt in range(_START_ATTEMPTS):
                port = _free_port()
                config = self._write_config(port, auth)
                command = [self._binary, *(["-u", RUN_AS] if as_root else []), str(config)]
                self._proc = await asyncio.create_subprocess_exec(
                    *command, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT
                )
                if await self._accepting(self._proc, port):
                    self.port = port
                    return
                await self._end_process()
                if attempt == _START_ATTEMPTS - 1:
                    raise RuntimeError(f"pgbouncer did not start ({' '.join(command)}):\n{self.log}")
        except BaseException:
            await self.stop()
            raise

    def _write_config(self, port: int, auth: Path) -> Path:
        assert self._dir is not None
        config = self._dir / "pgbouncer.ini"
        config.write_text(
            "\n".join(
                [
                    "[databases]",
                    f"* = host={self._server.host or '127.0.0.1'} port={self._server.port or 5432}",
                    "[pgbouncer]",
                    "listen_addr = 127.0.0.1",
                    f"listen_port = {port}",
                    "unix_socket_dir =",
                    "auth_type = trust",
                    f"auth_file = {auth}",
                    f"pool_mode = {self._pool_mode}",
                    "max_client_conn = 1000",
                    f"default_pool_size = {self._pool_size}",
                    "ignore_startup_parameters = extra_float_digits",
                    "",
                ]
            )
        )
        config.chmod(0o600)
        self._own(config)
        return config

    def _own(self, path: Path) -> None:
        """Give ``path`` to the user pgbouncer switches to (when started as root)."""
        if self._owner is not None:
            os.chown(path, self._owner.pw_uid, self._owner.pw_gid)

    async def _accepting(self, proc: asyncio.subprocess.Process, port: int) -> bool:
        """True once ``port`` accepts a connection while ``proc`` lives; False if it exits first."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _START_TIMEOUT
        while proc.returncode is None and loop.time() < deadline:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proc.wait(), 0.02)
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return proc.returncode is None
        return False

    async def _end_process(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)  # pgbouncer < 1.23: immediate shutdown
            try:
                await asyncio.wait_for(proc.wait(), _STOP_TIMEOUT)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()

    async def stop(self) -> None:
        """Stop pgbouncer (if running) and remove its temporary directory; idempotent."""
        try:
            await self._end_process()
        finally:
            self.port = 0
            if self._log is not None:
                self._log.close()
                self._log = None
            if self._dir is not None:
                shutil.rmtree(self._dir, ignore_errors=True)
                self._dir = None

    async def __aenter__(self) -> PgBouncer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


@contextlib.asynccontextmanager
async def running_pgbouncer(server_url: str, **options: Any) -> AsyncIterator[PgBouncer]:
    """A started PgBouncer in front of ``server_url``'s server, stopped on exit.

    Skips the test if pgbouncer is not installed (fails it under ``CI=true``).
    """
    async with PgBouncer(server_url, binary=require_pgbouncer(), **options) as bouncer:
        yield bouncer
