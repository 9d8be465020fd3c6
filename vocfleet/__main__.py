"""``python -m vocfleet``: the same as the ``vocfleet`` command."""

from vocfleet.scheduler.cli import main

main()
