"""What every command shares: the database options, loading ``--app``, errors and output."""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import functools
import importlib
import inspect
import json
import os
import re
import sys
import traceback
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import click
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from .._admin import Admin
from .._config import DEFAULT_TABLE_PREFIX, MAX_DURATION
from .._jobs import Job
from .._jobsd import JobsD
from .._store._rows import RunRow

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")
APP = "--app"


class Failure(click.ClickException):
    """An operational failure: one line on stderr, exit status 1."""

    exit_code = 1

    def show(self, file: Any = None) -> None:
        click.echo(f"jobsd: {self.message}", err=True)


class Usage(click.UsageError):
    """A usage error the options could not catch: exit status 2."""


def one_line(error: BaseException) -> str:
    """An error as one line: its type unless it is self-explanatory, and its first line."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a command's coroutine; turn anything it raises into one line (traceback with --verbose)."""
    verbose = bool(click.get_current_context().find_root().params.get("verbose"))
    try:
        return asyncio.run(coro)
    except (click.ClickException, click.exceptions.Exit, click.Abort):
        raise
    except Exception as exc:
        if verbose:
            traceback.print_exc()
        raise Failure(one_line(exc)) from exc


# ------------------------------------------------------------------------------ options


def app_option(required: bool) -> Callable[[F], F]:
    return click.option(
        "--app",
        envvar="JOBSD_APP",
        show_envvar=True,
        required=required,
        metavar="MODULE:ATTR",
        help="The JobsD to use: MODULE:ATTR names a JobsD object, or a function (sync or async) "
        "returning one, e.g. myapp.tasks:jd.",
    )


def database_options(f: F) -> F:
    """``--app`` or ``--url`` and ``--table-prefix``: which tables a command works on."""
    f = click.option(
        "--table-prefix",
        envvar="JOBSD_TABLE_PREFIX",
        show_envvar=True,
        default=DEFAULT_TABLE_PREFIX,
        show_default=True,
        help="Prefix of jobsd's tables (ignored with --app).",
    )(f)
    f = click.option(
        "--url",
        envvar="JOBSD_DATABASE_URL",
        show_envvar=True,
        metavar="URL",
        help="SQLAlchemy async database URL, e.g. postgresql+asyncpg://user@host/db (not needed with --app).",
    )(f)
    return app_option(required=False)(f)


def json_option(f: F) -> F:
    return click.option(
        "--json",
        "as_json",
        is_flag=True,
        envvar="JOBSD_JSON",
        show_envvar=True,
        help="Print one JSON document.",
    )(f)


# ------------------------------------------------------------------------------ the app and the database


async def load_app(spec: str) -> JobsD:
    """The JobsD ``MODULE:ATTR`` names (calling, and awaiting, a factory)."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise click.BadParameter(f"expected MODULE:ATTR (e.g. myapp.tasks:jd), got {spec!r}", param_hint=APP)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise click.BadParameter(f"cannot import {module_name!r}: {one_line(exc)}", param_hint=APP) from exc
    try:
        target: Any = functools.reduce(getattr, attr.split("."), module)
    except AttributeError as exc:
        raise click.BadParameter(f"{module_name!r} has no {attr!r}", param_hint=APP) from exc
    if isinstance(target, Job):
        raise click.BadParameter(
            f"{spec} is a Job, not a JobsD (the JobsD it is registered on)", param_hint=APP
        )
    if not isinstance(target, JobsD) and callable(target):
        target = target()
        if inspect.isawaitable(target):
            target = await target
    if not isinstance(target, JobsD):
        raise click.BadParameter(
            f"{spec} is {type(target).__name__}, not a JobsD (or a function returning one)",
            param_hint=APP,
        )
    return target


def engine_for(url: str) -> AsyncEngine:
    try:
        return create_async_engine(url, poolclass=NullPool)
    except (ArgumentError, ValueError) as exc:
        raise click.BadParameter(one_line(exc), param_hint="--url") from exc


@asynccontextmanager
async def admin_from(app: str | None, url: str | None, table_prefix: str) -> AsyncIterator[Admin]:
    """An Admin on ``--app``'s database and prefix, or on ``--url`` and ``--table-prefix``."""
    if app is not None:
        jd = await load_app(app)
        engine, prefix = jd.engine, jd._config.table_prefix
    elif url is not None:
        engine, prefix = engine_for(url), table_prefix
    else:
        raise Usage("give the database with --url (or JOBSD_DATABASE_URL), or the app with --app")
    try:
        admin = Admin(engine, table_prefix=prefix)
    except (TypeError, ValueError) as exc:
        raise click.BadParameter(one_line(exc), param_hint="--table-prefix") from exc
    try:
        yield admin
    finally:
        await engine.dispose()


# ------------------------------------------------------------------------------ values


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}


class DurationType(click.ParamType[float]):
    """``90``, ``90s``, ``15m``, ``12h``, ``7d``, ``2w``: seconds."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, int | float):
            return float(value)
        match = _DURATION.match(str(value))
        if match is None:
            self.fail(f"{value!r} is not a duration like 90s, 15m, 12h or 7d", param, ctx)
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
        if seconds > MAX_DURATION:
            self.fail(f"{value!r} is more than 100 years", param, ctx)
        return seconds


class MomentType(click.ParamType[datetime]):
    """A moment: an ISO 8601 time (UTC unless it says otherwise), or a duration ago (``2h``)."""

    name = "time"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> datetime:
        if isinstance(value, datetime):
            return value
        try:
            moment = datetime.fromisoformat(str(value))
        except ValueError:
            seconds = DurationType().convert(value, param, ctx)
            return datetime.now(UTC) - timedelta(seconds=seconds)
        return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


DURATION = DurationType()
MOMENT = MomentType()


# ------------------------------------------------------------------------------ output


def jsonable(value: Any) -> Any:
    """``value`` as JSON data: dataclasses and stored rows as objects (private fields left
    out), times in ISO 8601."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: jsonable(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if not f.name.startswith("_")
        }
    if isinstance(value, RunRow):
        return jsonable(value._asdict())
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def print_json(value: Any) -> None:
    click.echo(json.dumps(jsonable(value), indent=2, ensure_ascii=False))


def when(value: datetime | None) -> str:
    return "" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def cut(text: str | None, width: int) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= width else text[: width - 1] + "…"


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Rows under headers, in aligned columns (numbers to the right)."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max([len(h), *(len(row[i]) for row in cells)]) for i, h in enumerate(headers)]
    numeric = [all(isinstance(row[i], int) for row in rows) and bool(rows) for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if n else v.ljust(w) for v, w, n in zip(values, widths, numeric, strict=True)]
        return "  ".join(parts).rstrip()

    click.echo(line(headers))
    for row in cells:
        click.echo(line(row))
