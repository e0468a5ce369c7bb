"""``jobsd dashboard``: serve the web dashboard on its own (uvicorn)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import click

from .._config import DEFAULT_TABLE_PREFIX
from ._common import Usage, database_options, load_app, run


@click.command()
@database_options
@click.option(
    "--host", default="127.0.0.1", show_default=True, envvar="JOBSD_DASHBOARD_HOST", show_envvar=True
)
@click.option(
    "--port", type=click.IntRange(0, 65535), default=8765, show_default=True, envvar="JOBSD_DASHBOARD_PORT"
)
@click.option(
    "--read-only",
    is_flag=True,
    envvar="JOBSD_DASHBOARD_READ_ONLY",
    show_envvar=True,
    help="Pages only: no actions.",
)
@click.option(
    "--allowed-host",
    "allowed_hosts",
    multiple=True,
    metavar="NAME",
    envvar="JOBSD_DASHBOARD_ALLOWED_HOSTS",
    show_envvar=True,
    help="A host name the dashboard answers to (repeat it; default: localhost names and --host). "
    "Anything else gets 400, which also defeats DNS rebinding.",
)
@click.option(
    "--basic-auth",
    metavar="USER:PASSWORD",
    envvar="JOBSD_DASHBOARD_AUTH",
    show_envvar=True,
    help="Ask for this user and password (HTTP basic auth; serve it behind TLS).",
)
def dashboard(
    app: str | None,
    url: str | None,
    table_prefix: str,
    host: str,
    port: int,
    read_only: bool,
    allowed_hosts: tuple[str, ...],
    basic_auth: str | None,
) -> None:
    """Serve the web dashboard of the cluster on HOST:PORT until interrupted.

    With --app, the app's JobsD is started without workers, so the dashboard can also
    enqueue its jobs (their arguments checked as create_run checks them).

    \b
    Example:
        jobsd dashboard --url postgresql+asyncpg://app@db/app --basic-auth admin:s3cret
    """
    try:
        import uvicorn

        from ..dashboard import create_dashboard, parse_basic_auth
    except ImportError as exc:
        raise Usage(f"the dashboard needs its extra: pip install 'jobsd-async[dashboard]' ({exc})") from exc
    try:
        credentials = None if basic_auth is None else parse_basic_auth(basic_auth)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--basic-auth") from exc

    async def serve() -> None:
        from sqlalchemy.ext.asyncio import create_async_engine
        from starlette.applications import Starlette
        from starlette.middleware import Middleware
        from starlette.middleware.trustedhost import TrustedHostMiddleware
        from starlette.routing import Mount

        if app is not None:
            jd = await load_app(app)
            jd._reconfigure(workers=0)
            source: object = jd
            engine = jd.engine
        elif url is not None:
            jd = None
            engine = create_async_engine(url)
            source = engine
        else:
            raise Usage("give the database with --url (or JOBSD_DATABASE_URL), or the app with --app")
        inner = create_dashboard(
            source,  # type: ignore[arg-type]
            table_prefix=None if app is not None else (table_prefix or DEFAULT_TABLE_PREFIX),
            read_only=read_only,
            basic_auth=credentials,
        )

        @contextlib.asynccontextmanager
        async def lifespan(_: Starlette) -> AsyncIterator[None]:
            try:
                if jd is not None:
                    await jd.up()
                yield
            finally:
                if jd is not None:
                    await jd.down()
                await engine.dispose()

        hosts = list(allowed_hosts) or _default_hosts(host)
        outer = Starlette(
            routes=[Mount("/", inner)],
            middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=hosts)],
            lifespan=lifespan,
        )
        server = uvicorn.Server(
            uvicorn.Config(outer, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5)
        )
        click.echo(f"jobsd dashboard on http://{host}:{port}/ ({'read-only' if read_only else 'admin'})")
        if credentials is None and not read_only and host not in _LOOPBACK:
            click.echo(
                "  warning: anyone who reaches this address can act on your runs: "
                "add --basic-auth (behind TLS) or --read-only",
                err=True,
            )
        await server.serve()

    run(serve())


_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _default_hosts(host: str) -> list[str]:
    """The host names the dashboard answers to unless told: the loopback ones, and the
    address it listens on (any name, if it listens on every address)."""
    if host in ("0.0.0.0", "::", ""):
        return ["*"]
    return list(dict.fromkeys([*_LOOPBACK, "[::1]", host]))
