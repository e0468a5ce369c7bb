"""The ``jobsd`` command line (also ``python -m jobsd_async``), built on Click.

Every option can also be given by its ``JOBSD_*`` environment variable: the common ones
have short names (``JOBSD_APP``, ``JOBSD_DATABASE_URL``, ``JOBSD_TABLE_PREFIX``...), the
others follow the command (``JOBSD_RUNS_LIST_STATUS``); ``--help`` shows each.  Exit status: 0
success; 1 an operational failure (database unreachable, run not found, schema not
current); 2 a usage error.  Errors are one line on stderr; ``--verbose`` adds tracebacks.
"""

from __future__ import annotations

import threading

import click

from .. import __version__
from ._cluster import healthcheck, instances, prune
from ._dashboard import dashboard
from ._queues import queues
from ._runs import runs
from ._schema import schema
from ._worker import worker

__all__ = ("main",)


def _quiet(args: threading.ExceptHookArgs) -> None:
    """Threads' uncaught exceptions, without a traceback (``--verbose`` shows them)."""


@click.group(
    context_settings={
        "help_option_names": ["-h", "--help"],
        "max_content_width": 100,
        "auto_envvar_prefix": "JOBSD",
    }
)
@click.option(
    "--verbose",
    "-v",
    is_flag=True,
    envvar="JOBSD_VERBOSE",
    show_envvar=True,
    help="Show tracebacks of errors.",
)
@click.version_option(__version__, prog_name="jobsd")
def main(verbose: bool) -> None:
    """Run and operate jobsd_async: workers, runs, instances and the schema.

    Commands that only need the database take --url (an SQLAlchemy async URL) and
    --table-prefix; they also accept --app MODULE:ATTR (your JobsD) instead.
    """
    if not verbose:
        # A driver's own thread that fails (aiosqlite cannot open a file) would print a
        # traceback of its own; the command reports the error in one line instead.
        threading.excepthook = _quiet


for command in (worker, runs, queues, instances, prune, healthcheck, schema, dashboard):
    main.add_command(command)
