"""``python -m jobsd_async``: the ``jobsd`` command line."""

from .cli import main

main(prog_name="jobsd")
