"""The ``vocfleet`` CLI (``cli.py`` and ``commands/``), input validation, queueing and the fleet scheduler."""
