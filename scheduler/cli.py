"""The ``vocfleet`` command line, assembled from one module per area (as Celery's ``celery/bin``).

- ``commands/training.py``: submit, run, status, detectors, compare, export
- ``commands/scoring.py``: score, resume-run, runs, results, predict, report
- ``commands/operations.py``: worker, scheduler, reap, cancel, retry, gc, db
- ``commands/data.py``: data download, data check
- ``commands/web.py``: serve
"""

from __future__ import annotations

import logging

import click

from vocfleet import __version__

from .commands import data, operations, scoring, training, web
from .commands.base import VocfleetGroup


@click.group(cls=VocfleetGroup, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(__version__, "-V", "--version", prog_name="vocfleet")
@click.option("-v", "--verbose", is_flag=True, help="Log debug details.")
def cli(verbose: bool) -> None:
    """Train one ResNet-50 detector per PASCAL VOC class and score image folders with all of them.

    State lives in VOCFLEET_DATA_DIR (default ~/.local/share/vocfleet); VOCFLEET_DATABASE_URL and
    VOCFLEET_BROKER_URL switch from the embedded default to a fleet.
    """
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


for _module in (training, scoring, operations, data, web):
    for _command in _module.COMMANDS:
        cli.add_command(_command)


def main() -> None:
    cli(prog_name="vocfleet")


if __name__ == "__main__":
    main()
