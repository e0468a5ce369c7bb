"""``jobsd schema current|upgrade|check|sql``."""

from __future__ import annotations

import click

from .. import schema as versions
from ._common import Usage, admin_from, database_options, run


@click.group()
def schema() -> None:
    """Schema versions of jobsd's tables: read, upgrade, check, export SQL."""


@schema.command()
@database_options
def current(app: str | None, url: str | None, table_prefix: str) -> None:
    """Print the schema version of the tables (0: there are none)."""

    async def go() -> None:
        async with admin_from(app, url, table_prefix) as admin:
            version = await admin.schema_version()
        release = versions.RELEASES.get(version)
        click.echo(f"{version}" + (f" (jobsd_async {release})" if release else ""))

    run(go())


@schema.command()
@database_options
def upgrade(app: str | None, url: str | None, table_prefix: str) -> None:
    """Bring the tables to the current version (creating them if missing), under the
    cluster-wide upgrade lock."""

    async def go() -> None:
        async with admin_from(app, url, table_prefix) as admin:
            applied = await versions.upgrade(admin.engine, table_prefix=admin.tables.prefix)
        if applied:
            click.echo(
                f"upgraded to version {versions.CURRENT_VERSION} (applied {', '.join(map(str, applied))})"
            )
        else:
            click.echo(f"already at version {versions.CURRENT_VERSION}")

    run(go())


@schema.command()
@database_options
def check(app: str | None, url: str | None, table_prefix: str) -> None:
    """Exit 0 if the tables are at the current version and as jobsd needs them, else 1."""

    async def go() -> None:
        async with admin_from(app, url, table_prefix) as admin:
            await versions.check(admin.engine, table_prefix=admin.tables.prefix)
        click.echo(f"current: version {versions.CURRENT_VERSION}")

    run(go())


@schema.command()
@database_options
@click.option(
    "--dialect",
    show_envvar=True,
    type=click.Choice(versions.DIALECTS),
    help="The SQL dialect (default: the --url's, telling MariaDB from MySQL).",
)
@click.option(
    "--from",
    "from_version",
    show_envvar=True,
    type=click.IntRange(0, versions.CURRENT_VERSION),
    help="The version the tables are at (0: none; default: ask the --url's database, or 0).",
)
def sql(
    app: str | None, url: str | None, table_prefix: str, dialect: str | None, from_version: int | None
) -> None:
    """Print the SQL that brings the tables to the current version, for teams that apply
    schema changes with their own tools (Flyway, Liquibase, a DBA).

    \b
    Examples:
        jobsd schema sql --dialect postgresql                 # create everything
        jobsd schema sql --dialect mariadb --from 1           # upgrade 0.1.0 tables
        jobsd schema sql --url mysql+aiomysql://root@db/app   # what this database needs
    """

    async def go() -> str:
        nonlocal dialect, from_version
        if app is None and url is None:
            if dialect is None:
                raise Usage("give --dialect (or --url to ask the database)")
            return versions.sql(dialect, table_prefix=table_prefix, from_version=from_version or None)
        async with admin_from(app, url, table_prefix) as admin:
            if from_version is None:
                from_version = await admin.schema_version()
            if dialect is None:
                dialect = (await admin.store()).dialect.flavor
            return versions.sql(dialect, table_prefix=admin.tables.prefix, from_version=from_version or None)

    text = run(go())
    if not text:
        text = f"-- the tables are at the current version ({versions.CURRENT_VERSION}): nothing to do\n"
    click.echo(text, nl=False)
