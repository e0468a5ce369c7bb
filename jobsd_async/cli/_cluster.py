"""``jobsd instances``, ``jobsd prune`` and ``jobsd healthcheck``."""

from __future__ import annotations

import socket
from typing import Any

import click

from .. import schema
from .._admin import Admin
from ._common import (
    DURATION,
    Failure,
    admin_from,
    cut,
    database_options,
    json_option,
    load_app,
    one_line,
    print_json,
    print_table,
    run,
    when,
)


@click.command()
@database_options
@click.option(
    "--all", "include_gone", show_envvar=True, is_flag=True, help="Also instances that are down or dead."
)
@json_option
def instances(app: str | None, url: str | None, table_prefix: str, include_gone: bool, as_json: bool) -> None:
    """List the instances of the cluster (live ones unless --all), newest first.

    An instance is live while it beats: seen within three of its heartbeat intervals and
    not shut down.
    """

    async def go() -> None:
        async with admin_from(app, url, table_prefix) as admin:
            records = await admin.instances(include_gone=include_gone)
        if as_json:
            print_json(records)
            return
        print_table(
            [
                "ID",
                "HOST",
                "PID",
                "ALIVE",
                "WORKERS",
                "RUNNING",
                "STARTED",
                "ERRORS",
                "LAST SEEN",
                "QUEUES",
                "JOBS",
            ],
            [
                [
                    r.id,
                    r.host or "",
                    r.pid if r.pid is not None else "",
                    "yes" if r.alive else "no",
                    r.workers,
                    r.running,
                    r.runs_started,
                    r.runs_errors,
                    when(r.last_seen_at),
                    "(all)" if r.queues is None else cut(", ".join(r.queues), 30),
                    cut(", ".join(r.supported_jobs), 40),
                ]
                for r in records
            ],
        )

    run(go())


@click.command()
@database_options
@click.option(
    "--older-than",
    type=DURATION,
    required=True,
    envvar="JOBSD_PRUNE_OLDER_THAN",
    show_envvar=True,
    help="Delete runs that finished longer ago than this (90s, 15m, 12h, 7d, 2w).",
)
def prune(app: str | None, url: str | None, table_prefix: str, older_than: float) -> None:
    """Delete finished runs (whole chains) and dead instances older than --older-than.

    A pending or running run, and any run of a chain still going, is never deleted.
    """

    async def go() -> None:
        async with admin_from(app, url, table_prefix) as admin:
            deleted = await admin.prune(older_than)
        click.echo(f"deleted {deleted} rows")

    run(go())


@click.command()
@database_options
@click.option("--instance-id", show_envvar=True, type=int, help="Also require this instance to be alive.")
@json_option
def healthcheck(
    app: str | None, url: str | None, table_prefix: str, instance_id: int | None, as_json: bool
) -> None:
    """Exit 0 if the database answers, the tables are at the current schema version and
    (with --app) an instance of the app runs alive on this host; else exit 1.

    For container health probes: run it in the worker's container with the worker's --app.

    \b
    Example (Kubernetes):
        livenessProbe: {exec: {command: [jobsd, healthcheck, --app, myapp.tasks:jd]}}
    """

    async def go() -> None:
        report: dict[str, Any] = {"healthy": False}
        async with admin_from(app, url, table_prefix) as admin:
            try:
                await _check(admin, app, instance_id, report)
                report["healthy"] = True
            finally:
                if as_json:
                    print_json(report)
        if not as_json:
            click.echo("healthy: " + ", ".join(f"{k} {v}" for k, v in report.items() if k != "healthy"))

    run(go())


async def _check(admin: Admin, app: str | None, instance_id: int | None, report: dict[str, Any]) -> None:
    try:
        await admin.ping()
    except Exception as exc:
        report["database"] = f"unreachable: {one_line(exc)}"
        raise Failure(f"database unreachable: {one_line(exc)}") from exc
    report["database"] = "reachable"
    version = await admin.schema_version()
    report["schema_version"] = version
    if version != schema.CURRENT_VERSION:
        raise Failure(f"the tables are at schema version {version}, not {schema.CURRENT_VERSION}")
    if app is None and instance_id is None:
        return
    records = await admin.instances()
    if instance_id is not None:
        if not any(r.id == instance_id for r in records):
            raise Failure(f"instance {instance_id} is not alive")
        report["instance"] = instance_id
        return
    assert app is not None
    jobs = set((await load_app(app))._jobs)
    host = socket.gethostname()
    mine = [r for r in records if r.host == host and jobs <= set(r.supported_jobs) and r.workers > 0]
    if not mine:
        raise Failure(f"no live instance of {app} with workers on {host}")
    report["instance"] = mine[0].id
    report["last_seen_at"] = when(mine[0].last_seen_at)
