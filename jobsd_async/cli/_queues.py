"""``jobsd queues``: list queues, and pause or resume one across the cluster."""

from __future__ import annotations

import click

from ._common import admin_from, database_options, json_option, print_json, print_table, run, when


@click.group()
def queues() -> None:
    """List queues; pause and resume them across the cluster."""


@queues.command("list")
@database_options
@json_option
def list_queues(app: str | None, url: str | None, table_prefix: str, as_json: bool) -> None:
    """List the queues that hold unfinished runs or have been paused."""

    async def go() -> None:
        async with admin_from(app, url, table_prefix) as admin:
            found = await admin.queues()
        if as_json:
            print_json(found)
            return
        print_table(
            ["QUEUE", "PAUSED", "PENDING", "RUNNING"],
            [[q.name, when(q.paused_at) if q.paused else "no", q.pending, q.running] for q in found],
        )

    run(go())


@queues.command("pause")
@database_options
@click.argument("queue")
def pause_queue(app: str | None, url: str | None, table_prefix: str, queue: str) -> None:
    """Pause QUEUE: no instance starts its runs until it is resumed (new runs still wait in it).

    \b
    Example:
        jobsd queues pause mail
    """

    async def go() -> None:
        async with admin_from(app, url, table_prefix) as admin:
            changed = await admin.pause_queue(queue)
        click.echo(f"queue {queue} {'paused' if changed else 'was already paused'}")

    run(go())


@queues.command("resume")
@database_options
@click.argument("queue")
def resume_queue(app: str | None, url: str | None, table_prefix: str, queue: str) -> None:
    """Resume QUEUE: its due runs start at once."""

    async def go() -> None:
        async with admin_from(app, url, table_prefix) as admin:
            changed = await admin.resume_queue(queue)
        click.echo(f"queue {queue} {'resumed' if changed else 'was not paused'}")

    run(go())
