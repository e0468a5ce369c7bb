"""``jobsd runs list|show|cancel|retry``."""

from __future__ import annotations

import json
from datetime import datetime

import click

from .._runs import RunStatus
from .._store._browse import RunFilter
from ._common import (
    MOMENT,
    Failure,
    admin_from,
    cut,
    database_options,
    json_option,
    print_json,
    print_table,
    run,
    when,
)


@click.group()
def runs() -> None:
    """List, inspect, cancel and retry runs."""


@runs.command("list")
@database_options
@click.option(
    "--status",
    show_envvar=True,
    type=click.Choice([s.value for s in RunStatus]),
    help="Only runs in this status.",
)
@click.option("--job", show_envvar=True, help="Only runs of this job.")
@click.option("--name", show_envvar=True, help="Only the run with this (unique) name.")
@click.option("--queue", show_envvar=True, help="Only runs in this queue.")
@click.option(
    "--since",
    show_envvar=True,
    type=MOMENT,
    help="Created at or after: an ISO 8601 time, or a duration ago (2h, 7d).",
)
@click.option(
    "--until", show_envvar=True, type=MOMENT, help="Created before: an ISO 8601 time, or a duration ago."
)
@click.option("--limit", show_envvar=True, type=click.IntRange(1, 10_000), default=50, show_default=True)
@json_option
def list_runs(
    app: str | None,
    url: str | None,
    table_prefix: str,
    status: str | None,
    job: str | None,
    name: str | None,
    queue: str | None,
    since: datetime | None,
    until: datetime | None,
    limit: int,
    as_json: bool,
) -> None:
    """List runs, newest first, each in the state of its latest attempt.

    \b
    Example:
        jobsd runs list --url postgresql+asyncpg://app@db/app --status failed --since 1d
    """
    filters = RunFilter(
        status=RunStatus(status) if status else None,
        job=job,
        name=name,
        queue=queue,
        since=since,
        until=until,
    )

    async def go() -> None:
        async with admin_from(app, url, table_prefix) as admin:
            states = await admin.list_runs(filters, limit=limit)
        if as_json:
            print_json(states)
            return
        print_table(
            ["RUN", "JOB", "QUEUE", "PRIO", "STATUS", "ATTEMPTS", "CREATED", "FINISHED", "NAME", "ERROR"],
            [
                [
                    s.run_id,
                    s.job,
                    cut(s.queue, 20),
                    s.priority,
                    s.status.value,
                    s.run_total_count,
                    when(s.created_at),
                    when(s.run_completed_at),
                    cut(s.name, 32),
                    cut(s.run_completed_error, 40),
                ]
                for s in states
            ],
        )

    run(go())


@runs.command("show")
@database_options
@click.argument("run_id", type=int)
@json_option
def show_run(app: str | None, url: str | None, table_prefix: str, run_id: int, as_json: bool) -> None:
    """Show a run and every attempt of it.

    \b
    Example:
        jobsd runs show 42
    """

    async def go() -> None:
        async with admin_from(app, url, table_prefix) as admin:
            chain = await admin.chain(run_id)
        if as_json:
            print_json({"run": chain.state, "attempts": chain.rows})
            return
        s = chain.state
        fields = [
            ("run", s.run_id),
            ("job", s.job),
            ("status", s.status.value),
            ("name", s.name),
            ("queue", s.queue),
            ("priority", s.priority),
            ("schedule", s.schedule or ""),
            ("attempts", s.run_total_count),
            ("successes", s.run_success_count),
            ("progress", "" if s.progress is None else json.dumps(s.progress, ensure_ascii=False)),
            ("created", f"{when(s.created_at)} by instance {s.created_by}"),
            ("result", "" if s.result is None else repr(s.result)),
            ("error", s.run_completed_error or ""),
        ]
        for label, value in fields:
            click.echo(f"{label + ':':<11}{value}")
        if s.traceback:
            click.echo("\n" + s.traceback.rstrip())
        click.echo()
        print_table(
            ["ROW", "DUE", "STARTED", "BY", "FINISHED", "OUTCOME"],
            [
                [
                    r.id,
                    when(r.run_at),
                    when(r.run_started_at),
                    "" if r.run_started_by is None else r.run_started_by,
                    when(r.run_completed_at),
                    _outcome(r.run_started_at, r.run_completed_at, r.run_completed_error),
                ]
                for r in chain.rows
            ],
        )

    run(go())


def _outcome(started: datetime | None, completed: datetime | None, error: str | None) -> str:
    status = RunStatus.of_row(started, completed, error)
    return cut(error, 60) if status is RunStatus.FAILED else status.value


@runs.command("cancel")
@database_options
@click.argument("run_id", type=int)
def cancel_run(app: str | None, url: str | None, table_prefix: str, run_id: int) -> None:
    """Cancel a run: a pending attempt is closed, a running one is told to stop.

    Exits 0 when the run was cancelled or had already finished (it says which).
    """

    async def go() -> None:
        async with admin_from(app, url, table_prefix) as admin:
            cancelled = await admin.cancel(run_id)
        click.echo(f"run {run_id} {'cancelled' if cancelled else 'had already finished'}")

    run(go())


@runs.command("retry")
@database_options
@click.argument("run_id", type=int)
def retry_run(app: str | None, url: str | None, table_prefix: str, run_id: int) -> None:
    """Run again, as a new run, a run that ended failed, timed out or cancelled.

    The new run has the job, arguments and options of the old one; it prints its id.
    Retrying the same run twice while the new one is pending or running gives that one.
    """

    async def go() -> None:
        async with admin_from(app, url, table_prefix) as admin:
            try:
                new = await admin.retry(run_id)
            except ValueError as exc:
                raise Failure(str(exc)) from exc
        click.echo(f"run {run_id} retried as run {new}")

    run(go())
